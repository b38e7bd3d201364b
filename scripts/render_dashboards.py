#!/usr/bin/env python3
"""Render each dashboard's main panels to docs/img/dashboard-<uid>.png, from a real Prometheus.

    .venv/bin/python scripts/render_dashboards.py [--out docs/img] [--keep DIR]

How: dashboards/preview_data.py writes three hours of the series the test exporters and services expose
(vLLM, DCGM exporter, kube-state-metrics, toposcale) as OpenMetrics; `promtool tsdb create-blocks-from
openmetrics` backfills them; the Debian `prometheus` serves that TSDB on a loopback port; every rendered panel
runs its own PromQL from the committed dashboards/*.json (variables set to "All") through /api/v1/query_range.
A panel that comes back empty fails the script: the pictures never show a panel that is blank in Grafana.
Grafana is not needed (nor available here); matplotlib draws an approximation of its look.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboards.preview_data import Scenario  # noqa: E402

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
RATE_INTERVAL = "1m"  # four samples of the 15 s preview data, as Grafana's $__rate_interval would pick
STEP = 60

BG, PANEL_BG, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ca95e5",
           "#96d98d", "#ffb357", "#ff7383", "#c0d8ff"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backfill(data_dir: Path, end: float) -> None:
    om = data_dir.parent / "preview.om"
    om.write_text(Scenario(end=end).render())
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data_dir)],
                   check=True, capture_output=True, timeout=300)


class Prometheus:
    """The real Prometheus over the backfilled TSDB; no scrape jobs, loopback only."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        config = data_dir.parent / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\n")
        self.log = (data_dir.parent / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("prometheus did not become ready")

    def query(self, path: str, **params: Any) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
        if body["status"] != "success":
            raise RuntimeError(f"{params.get('query')}: {body}")
        return body["data"]["result"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


CUSTOM: dict[str, str] = {}  # fixed-list variables (e.g. replica_gpus) -> their default, set per dashboard


def substitute(expr: str) -> str:
    """Grafana's interval macros, a custom variable's default, every other variable on "All"."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", "3h")
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
    fig.suptitle(f"{dash['title']}    ·    last 3 h    ·    all {variables}{fixed}",
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
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
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
        ax.set_xlabel("over the last 3 h", color=TEXT, fontsize=8)
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
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.grid(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--keep", type=Path, help="keep the backfilled TSDB and Prometheus log here")
    args = parser.parse_args(argv)
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print(f"{tool} not found: install the Debian prometheus package (scripts/test.sh does)",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="toposcale-render-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    end = float(int(time.time()) // 60 * 60 - 120)
    start = end - 3 * 3600
    backfill(data, end)
    prom = Prometheus(data)
    try:
        for name in MAIN_PANELS:
            dash = json.loads((ROOT / "dashboards" / f"{name}.json").read_text())
            print(f"wrote {render(name, dash, prom, start + 120, end, args.out)}")
    finally:
        prom.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
