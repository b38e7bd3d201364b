#!/usr/bin/env python3
"""Render each dashboard's main panels to docs/img/dashboard-<uid>.png, from the test stack's real Prometheus.

    .venv/bin/python scripts/render_dashboards.py [--out docs/img] [--seconds 150]

Where the data comes from: the dashboard tests' live stack (lab/peers/live_stack.py), the same one
every dashboard query is tested against: the harness vLLM exporters (both metric generations), the DCGM
exporter and kube-state-metrics' HPA text, the in-process toposcale adapter, scheduler extender and node
agent, all scraped every second by the Debian `prometheus` on a loopback port. While it runs for `--seconds`,
this script moves the exporters' values along a load curve (queue, running requests, KV cache, GPU
utilisation, time to first token), lets kube-state-metrics' replica counts follow what an HPA with the
example targets (deploy/examples/qwen/hpa.yaml) would decide, and stops the vLLM pods answering for a short
window (the adapter then answers 503 and the HPA holds). Every series in the pictures is one a real exporter
or service exposed; only the values are steered. Each rendered panel runs its own PromQL from the committed
dashboards/*.json (variables on "All") through /api/v1/query_range; a panel that comes back empty fails the
script, so the pictures never show a panel that is blank in Grafana. Grafana is not needed (nor available
here); matplotlib draws an approximation of its look.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Per dashboard file: the stat tiles on top and the main panels below, by title (in dashboard order).
MAIN_PANELS = {
    "gpu-fleet": (
        ["GPUs reporting", "Mean GPU utilisation", "Framebuffer used", "Power draw",
         "Nodes with $replica_gpus free GPUs", "GPUs with an XID error"],
        ["Utilisation per GPU, grouped by node", "Free GPUs per node", "GPU utilisation",
         "SM activity (profiling counters)", "Power draw"],
    ),
    "llm-serving": (
        ["Serving pods", "Requests running", "Requests waiting", "KV cache used (mean)",
         "Requests finished /s", "Time to first token p90"],
        ["Requests waiting", "Requests running", "KV cache usage", "Time to first token",
         "End-to-end request latency", "Tokens /s"],
    ),
    "autoscaling-placement": (
        [],
        ["Replicas: current, desired, min, max", "vllm_requests_waiting vs the HPA's threshold",
         "vllm_kv_cache_usage vs the HPA's threshold", "Metric requests /s by code",
         "Topology tier of the GPU sets chosen", "Decision latency by verb"],
    ),
}
# Set per run by configure(): the query_range step, Grafana's $__rate_interval (a few 1 s scrapes wide) and
# $__range (the whole run).
STEP = 1
RATE_INTERVAL = "5s"
RANGE = "60s"
KV_TARGET = 0.75  # deploy/examples/qwen/hpa.yaml: vllm_kv_cache_usage Value 750m
WAITING_TARGET = 4  # and vllm_requests_waiting AverageValue 4

BG, PANEL_BG, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ca95e5",
           "#96d98d", "#ffb357", "#ff7383", "#c0d8ff"]


def configure(seconds: float) -> None:
    global STEP, RATE_INTERVAL, RANGE
    STEP = max(1, round(seconds / 150))
    RATE_INTERVAL = f"{max(5, 4 * STEP)}s" if seconds < 60 else f"{max(10, 4 * STEP)}s"
    RANGE = f"{int(seconds)}s"


class Prometheus:
    """The live stack's Prometheus, queried over its HTTP API."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def query(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return self.server.api(path, **{k: str(v) for k, v in params.items()})["result"]


class Scenario:
    """Steers the live stack's exporters along a load curve; pure arithmetic per tick, no I/O of its own.

    The story over the run (f = elapsed / seconds): quiet, a peak of requests around f = 0.4 that queues up
    and fills the KV cache, replicas added by the HPA rule and taking a while to start, the vLLM pods
    unreachable for f in [0.78, 0.86) (the adapter answers 503, the HPA holds), quiet again.
    """

    OUTAGE = (0.78, 0.86)
    REQUESTS_PER_S = 3.0  # finished requests/s of one pod at full load
    _SAMPLE = re.compile(r"^(?P<name>[^\s{]+)(?P<labels>\{.*\})? (?P<value>\S+)$")
    _DCGM_STEERED = ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_PROF_SM_ACTIVE",
                     "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")

    def __init__(self, stack: Any, seconds: float) -> None:
        self.stack = stack
        self.seconds = seconds
        # vLLM counters and histograms grow with the load (the fixture's values, captured from a serving pod,
        # scaled so a pod at full load finishes REQUESTS_PER_S requests/s), not once per scrape
        self.served: dict[int, float] = {}
        from lab.peers.exporters import VllmExporter

        for v in (*stack.vllm, stack.vllm_legacy):
            # carry on from what the live stack's exporters already served (fixture x scrapes): no reset
            self.served[id(v)] = self._successes(VllmExporter.render(v)) * max(1, v.scrapes)
            v.render = (lambda v=v: self.render_vllm(v))
        stack.dcgm.render = self.render_dcgm
        self.current = 1
        self.desired = 1
        self.active = True
        self.proposals: list[tuple[float, int]] = []  # (f, raw proposal) for scale-down stabilisation
        self.starting: list[float] = []  # f at which each replica being started becomes current
        ksm = stack.ksm
        self._ksm_text = type(ksm).render(ksm)
        ksm.render = self.render_ksm  # the same families and labels, with the replicas this run decides

    @staticmethod
    def load(f: float) -> float:
        x = min(1.0, max(0.0, (f - 0.12) / 0.55))
        return 0.12 + 0.88 * math.sin(math.pi * x) ** 2

    def tick(self, f: float, dt: float) -> None:
        """Set every steered value for the point `f` (0..1) of the run, `dt` seconds after the last tick."""
        load = self.load(f)
        outage = self.OUTAGE[0] <= f < self.OUTAGE[1]
        share = 2 / max(2, self.current)  # more replicas, shorter queues on the two pods the adapter reads
        waiting = max(0.0, 22 * load - 6) * share
        running = 3 + 40 * load * share
        kv = min(0.97, 0.22 + 0.62 * load * share + 0.015 * waiting)
        qwen0, qwen1 = self.stack.vllm
        qwen0.waiting = [round(waiting * 0.6), round(waiting * 0.4)]
        qwen0.running = [round(running * 0.5), round(running * 0.5)]
        qwen0.kv_cache = [round(kv - 0.03, 3), round(kv + 0.03, 3)]
        qwen1.waiting, qwen1.running, qwen1.kv_cache = round(waiting), round(running), round(kv, 3)
        legacy = self.stack.vllm_legacy
        legacy.waiting, legacy.running = round(waiting / 3), round(running / 2)
        legacy.kv_cache = round(kv / 2, 3)
        for v in (*self.stack.vllm, legacy):
            v.mode = "error" if outage else "ok"
            v.observe_ttft(0.06 + 0.5 * load + 0.12 * waiting, n=2)
            if not outage:
                self.served[id(v)] += load * dt * self.REQUESTS_PER_S
        for g in self.stack.dcgm.gpus:
            serving = g.index < 4 or self.current >= 2
            holder = ("llm", f"qwen-{g.index // 4}", "vllm") if serving else ("", "", "")
            g.namespace, g.pod, g.container = holder
            g.util = round(min(100.0, 25 + 70 * load + 3 * math.sin(7 * f + g.index))) if serving else 0
            g.fb_used, g.fb_free = (73000.0, 8000.0) if serving else (1.0, 81000.0)
        self._hpa(f, qwen0, qwen1, outage)

    def _hpa(self, f: float, qwen0: Any, qwen1: Any, outage: bool) -> None:
        """The HPA controller's rule on the adapter's two metrics, as deploy/examples/qwen/hpa.yaml sets them:
        the larger proposal wins, scale-up at once, scale-down after a stabilisation window; a failed metric
        read (the outage) holds the replicas with ScalingActive false."""
        self.current += sum(1 for t in self.starting if t <= f)  # started: weights loaded, /health green
        self.starting = [t for t in self.starting if t > f]
        self.active = not outage
        if not outage:
            total = sum(qwen0.waiting) + qwen1.waiting
            kv = (sum(qwen0.kv_cache) / 2 + qwen1.kv_cache) / 2
            by_queue = math.ceil(total / WAITING_TARGET)
            ratio = kv / KV_TARGET
            by_kv = self.current if abs(ratio - 1) <= 0.1 else math.ceil(self.current * ratio)
            raw = max(1, min(4, max(by_queue, by_kv)))
            self.proposals = [(t, d) for t, d in self.proposals if f - t <= 0.12] + [(f, raw)]
            self.desired = raw if raw >= self.current else max(d for _, d in self.proposals)
        if self.desired < self.current:
            self.current = self.desired
        self.starting = self.starting[: max(0, self.desired - self.current)]
        while self.current + len(self.starting) < self.desired:
            self.starting.append(f + 0.06)  # a new replica needs a while to start

    def render_vllm(self, v: Any) -> str:
        from lab.peers.exporters import VllmExporter

        text = VllmExporter.render(v)  # the fixture's families; TTFT from the observations made so far
        scale = self.served[id(v)] / self._successes(text)
        out = []
        for line in text.splitlines():
            m = self._SAMPLE.match(line)
            if m and m["name"].endswith(("_total", "_bucket", "_count", "_sum")) \
                    and not m["name"].startswith("vllm:time_to_first_token_seconds"):
                line = f"{m['name']}{m['labels'] or ''} {float(m['value']) * scale!r}"
            out.append(line)
        return "\n".join(out) + "\n"

    @classmethod
    def _successes(cls, text: str) -> float:
        return sum(float(m["value"]) for m in map(cls._SAMPLE.match, text.splitlines())
                   if m and m["name"] == "vllm:request_success_total") or 1.0

    def render_dcgm(self) -> str:
        """Power, temperature and the profiling ratios follow each GPU's utilisation."""
        dcgm = self.stack.dcgm
        util = {str(g.index): g.util / 100 for g in dcgm.gpus}
        out = []
        for line in type(dcgm).render(dcgm).splitlines():
            m = self._SAMPLE.match(line)
            gpu = re.search(r'gpu="(\d+)"', line)
            if m and gpu and m["name"] in self._DCGM_STEERED:
                u = util[gpu.group(1)]
                value = {"DCGM_FI_DEV_POWER_USAGE": 72 + 560 * u, "DCGM_FI_DEV_GPU_TEMP": round(33 + 42 * u),
                         "DCGM_FI_PROF_SM_ACTIVE": 0.85 * u, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.41 * u}
                line = f"{m['name']}{m['labels']} {round(value[m['name']], 4)!r}"
            out.append(line)
        return "\n".join(out) + "\n"

    def render_ksm(self) -> str:
        text = self._ksm_text
        values = {"status_current_replicas": self.current, "status_desired_replicas": self.desired}
        for family, value in values.items():
            text = re.sub(rf"^(kube_horizontalpodautoscaler_{family}\{{.*\}}) \S+$", rf"\g<1> {value}", text,
                          flags=re.M)
        conditions = {"ScalingActive": self.active, "ScalingLimited": self.desired >= 4}
        for cond, ok in conditions.items():
            for status in ("true", "false"):
                on = 1 if (status == "true") == ok else 0
                text = re.sub(rf'^(kube_horizontalpodautoscaler_status_condition\{{.*condition="{cond}",'
                              rf'status="{status}"\}}) \S+$', rf"\g<1> {on}", text, flags=re.M)
        return text


CUSTOM: dict[str, str] = {}  # fixed-list variables (e.g. replica_gpus) -> their default, set per dashboard


def substitute(expr: str) -> str:
    """Grafana's interval macros, a custom variable's default, every other variable on "All"."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: CUSTOM.get(m.group(1), ".*"), expr)


def panel_title(panel: dict[str, Any]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: CUSTOM.get(m.group(1), m.group(0)), panel["title"])


def legend(fmt: str, metric: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def fmt_value(v: float, unit: str) -> str:
    if math.isnan(v):
        return "NaN"
    if unit == "percent":
        return f"{v:.0f}%"
    if unit == "percentunit":
        return f"{100 * v:.1f}%"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "watt":
        return f"{v / 1000:.2f} kW" if v >= 1000 else f"{v:.0f} W"
    if unit == "celsius":
        return f"{v:.0f} °C"
    if unit == "reqps":
        return f"{v:.2f} req/s"
    if unit == "decmbytes":
        return f"{v / 1000:.1f} GB"
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.2f}"


def axis_formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fmt_value(v, unit))


def render(name: str, dash: dict[str, Any], prom: Prometheus, start: float, end: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    CUSTOM.clear()
    CUSTOM.update({v["name"]: v["current"]["value"] for v in dash["templating"]["list"]
                   if v["type"] == "custom"})
    by_title: dict[str, dict[str, Any]] = {}
    for p in dash["panels"]:
        by_title.setdefault(p["title"], p)  # the first panel of a title (stats come before timeseries)
    stat_titles, main_titles = MAIN_PANELS[name]
    stats = [p for p in dash["panels"] if p["type"] == "stat" and p["title"] in stat_titles]
    mains: list[dict[str, Any]] = []
    for title in main_titles:
        mains.append(next(p for p in dash["panels"] if p["title"] == title and p["type"] != "stat"))

    fig = plt.figure(figsize=(16, 11.5), facecolor=BG)
    grid = fig.add_gridspec(4, 6, height_ratios=[0.55 if stats else 0.01, 2, 2, 2], hspace=0.55, wspace=0.9,
                            left=0.08, right=0.985, top=0.93, bottom=0.05)
    variables = ", ".join(v["name"] for v in dash["templating"]["list"][1:] if v["type"] == "query")
    fixed = "".join(f"    ·    {k} = {v}" for k, v in CUSTOM.items())
    fig.suptitle(f"{dash['title']}    ·    live test stack, last {RANGE}    ·    all {variables}{fixed}",
                 color=TEXT, fontsize=14, x=0.08, ha="left")
    for i, panel in enumerate(stats[:6]):
        ax = fig.add_subplot(grid[0, i])
        ax.set_facecolor(PANEL_BG)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color(GRID)
        result = prom.query("query", query=substitute(panel["targets"][0]["expr"]), time=end)
        if not result:
            raise RuntimeError(f"{name}: stat {panel['title']!r} returned no series")
        value = float(result[0]["value"][1])
        ax.text(0.5, 0.38, fmt_value(value, panel["fieldConfig"]["defaults"]["unit"]), color="#73bf69",
                fontsize=20, ha="center", va="center", transform=ax.transAxes, weight="bold")
        ax.set_title(panel_title(panel), color=TEXT, fontsize=9.5)
    cells = []  # (row, col0, col1): a full-width dashboard panel takes the whole row of the picture
    row, col = 1, 0
    for panel in mains:
        if panel["gridPos"]["w"] == 24:
            if col:
                row, col = row + 1, 0
            cells.append((row, 0, 6))
            row += 1
        else:
            cells.append((row, col * 3, col * 3 + 3))
            row, col = (row, 1) if col == 0 else (row + 1, 0)
    for panel, (r, c0, c1) in zip(mains, cells, strict=True):
        ax = fig.add_subplot(grid[r, c0:c1])
        ax.set_facecolor(PANEL_BG)
        ax.set_title(panel_title(panel), color=TEXT, fontsize=11, loc="left")
        ax.tick_params(colors=TEXT, labelsize=8)
        for s in ax.spines.values():
            s.set_color(GRID)
        ax.grid(color=GRID, linewidth=0.6)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        if panel["type"] == "bargauge":
            _bargauge(ax, prom, panel, end, name)
            continue
        series: list[tuple[str, list[datetime], list[float]]] = []
        for target in panel["targets"]:
            result = prom.query("query_range", query=substitute(target["expr"]),
                                start=start, end=end, step=STEP)
            for r_ in result:
                xs, ys = _with_gaps(r_["values"])
                series.append((legend(target.get("legendFormat", ""), r_["metric"]), xs, ys))
        if not series:
            raise RuntimeError(f"{name}: panel {panel['title']!r} returned no series")
        series.sort(key=lambda s: s[0])
        if panel["type"] == "status-history":
            _status_history(ax, series, panel, start, end)
            continue
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        stacked = custom.get("stacking", {}).get("mode") == "normal"
        if stacked:
            _stack(ax, series)
        else:
            for j, (label, xs, ys) in enumerate(series):
                ax.plot(xs, ys, color=PALETTE[j % len(PALETTE)], linewidth=1.3, label=label,
                        linestyle="--" if label.startswith(("min ", "max ")) else "-")
        ax.yaxis.set_major_formatter(axis_formatter(unit))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
        defaults = panel["fieldConfig"]["defaults"]
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"] * 1.02)
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) > 12:  # Grafana would scroll the legend; the picture lists the first ones
            handles, labels = handles[:11], [*labels[:11], f"... {len(labels) - 11} more"]
            handles.append(handles[-1])
        ax.legend(handles, labels, loc="upper left", fontsize=7, facecolor=PANEL_BG, edgecolor=GRID,
                  labelcolor=TEXT, ncol=2 if len(series) > 4 else 1, framealpha=0.8)
    path = out / f"dashboard-{dash['uid']}.png"
    fig.savefig(path, dpi=80, facecolor=BG)
    plt.close(fig)
    return path


def _with_gaps(values: list[list[Any]]) -> tuple[list[Any], list[float]]:
    """Timestamps and values with a NaN wherever a step is missing, so a line is broken, not bridged."""
    from datetime import UTC, datetime

    xs: list[Any] = []
    ys: list[float] = []
    prev = None
    for t, v in values:
        t = float(t)
        if prev is not None and t - prev > STEP * 1.5:
            xs.append(datetime.fromtimestamp(prev + STEP, UTC))
            ys.append(math.nan)
        xs.append(datetime.fromtimestamp(t, UTC))
        ys.append(float(v))
        prev = t
    return xs, ys


def _bargauge(ax: Any, prom: Prometheus, panel: dict[str, Any], end: float, name: str) -> None:
    target = panel["targets"][0]
    result = prom.query("query", query=substitute(target["expr"]), time=end)
    if not result:
        raise RuntimeError(f"{name}: panel {panel['title']!r} returned no series")
    rows = sorted(((legend(target.get("legendFormat", ""), r["metric"]), float(r["value"][1]))
                   for r in result), key=lambda r: -r[1])
    labels = [r[0] for r in rows]
    values = [r[1] for r in rows]
    ax.barh(labels, values, color=[PALETTE[i % len(PALETTE)] for i in range(len(rows))])
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.0f}", va="center", color=TEXT, fontsize=9)
    if "increase(" in target["expr"]:
        ax.set_xlabel(f"over the last {RANGE}", color=TEXT, fontsize=8)
    ax.grid(axis="y", visible=False)


def _stack(ax: Any, series: list[tuple[str, list[Any], list[float]]]) -> None:
    # align on the union of timestamps: pods come and go during the scale-out
    times = sorted({x for _, xs, _ in series for x in xs})
    rows = []
    for _, xs, ys in series:
        lookup = dict(zip(xs, ys, strict=True))
        rows.append([0.0 if math.isnan(lookup.get(t, 0.0)) else lookup.get(t, 0.0) for t in times])
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    ax.stackplot(times, rows, labels=[s[0] for s in series], colors=colors, alpha=0.75)


def _status_history(ax: Any, series: list[tuple[str, list[Any], list[float]]], panel: dict[str, Any],
                    start: float, end: float) -> None:
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import numpy as np
    from matplotlib.colors import BoundaryNorm, ListedColormap

    steps = int((end - start) // STEP) + 1
    times = [datetime.fromtimestamp(start + i * STEP, UTC) for i in range(steps)]
    index = {t: i for i, t in enumerate(times)}
    grid = np.full((len(series), steps), np.nan)
    for row, (_, xs, ys) in enumerate(series):
        for x, y in zip(xs, ys, strict=True):
            if x in index and not math.isnan(y):
                grid[row, index[x]] = y
    thresholds = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    bounds = [0.0] + [s["value"] for s in thresholds[1:]] + [panel["fieldConfig"]["defaults"].get("max", 100)]
    cmap = ListedColormap([s["color"] for s in thresholds])
    t0, t1 = mdates.date2num(times[0]), mdates.date2num(times[-1])
    ax.imshow(grid, aspect="auto", cmap=cmap, norm=BoundaryNorm(bounds, cmap.N), interpolation="nearest",
              extent=(t0, t1, len(series) - 0.5, -0.5))
    ax.set_yticks(range(len(series)))
    ax.set_yticklabels([s[0] for s in series], fontsize=6.5)
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img",
                        help="folder for the PNG files (default docs/img)")
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="how long the live stack runs (and the pictures' time range); at least 12")
    args = parser.parse_args(argv)
    if args.seconds < 12:
        parser.error("--seconds: at least 12 (rates need a few scrapes of history)")
    if not shutil.which("prometheus") and not Path("/usr/bin/prometheus").exists():
        print("prometheus not found: install the Debian prometheus package (scripts/test.sh does)",
              file=sys.stderr)
        return 2
    from lab.peers.live_stack import LiveStack

    configure(args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="toposcale-render-"))
    logging.disable(logging.WARNING)  # the adapter logs every failed scrape of the dead pod and the outage
    stack = LiveStack(work, ask_unknown_metric=False).start()
    try:
        scenario = Scenario(stack, args.seconds)
        # a warm-up before the pictures' range: the first rate() windows would still hold the live stack's
        # own (per-scrape) counter growth
        warmup = int(RATE_INTERVAL.rstrip("s")) + 3
        begin = last = time.time()
        while (now := time.time()) - begin < warmup + args.seconds:
            scenario.tick(max(0.0, now - begin - warmup) / args.seconds, now - last)
            last = now
            time.sleep(0.25)
        scenario.tick(1.0, time.time() - last)
        time.sleep(2.0)  # the last values scraped
        start = float(int(begin + warmup))
        end = float(int(time.time()) - 1)
        prom = Prometheus(stack.prometheus)
        for name in MAIN_PANELS:
            dash = json.loads((ROOT / "dashboards" / f"{name}.json").read_text())
            print(f"wrote {render(name, dash, prom, start, end, args.out)}")
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
