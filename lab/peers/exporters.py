"""In-test HTTP exporters serving real vLLM and NVIDIA DCGM exporter text with settable values.

The text comes from tests/fixtures/metrics/ (vllm_v1.txt: vLLM >= 0.10 V1 engine, vllm_v0.txt: vLLM 0.6 V0,
dcgm.txt: dcgm-exporter with pod mapping), each headed by its source; values the tests control are
substituted, everything else is served as captured (HELP/TYPE lines, `_created` companions, `engine` labels,
info metrics).

Stable API (the dashboards and demo reuse it):

    async with VllmExporter(generation="v1", engines=1, model_name="qwen2.5-7b") as vllm:
        vllm.waiting = 3            # vllm:num_requests_waiting, per engine (a list sets engines one by one)
        vllm.running = 4            # vllm:num_requests_running
        vllm.kv_cache = 0.5         # vllm:kv_cache_usage_perc and the deprecated vllm:gpu_cache_usage_perc
        vllm.observe_ttft(0.3, n=10)  # adds observations to vllm:time_to_first_token_seconds
        vllm.prompt_tokens = 1200.0 # vllm:prompt_tokens_total (None: the fixture's); generation_tokens and
                                    # request_success likewise
        vllm.url                    # "http://127.0.0.1:<port>/metrics"

    gpus = [Gpu(0, namespace="ml", pod="vllm-0", util=80, fb_used=60000, fb_free=21000)]
    async with DcgmExporter(gpus) as d:
        d.gpus[0].util = 95         # DCGM_FI_DEV_GPU_UTIL; fb_used/fb_free -> DCGM_FI_DEV_FB_USED/FREE (MiB)

    exporter.mode = "ok" | "hang" | "garbage" | "error" | "huge"   # failure modes for bad-input tests
    exporter.scrapes                                                # how many times /metrics was served

Both are also usable without `async with`: `await e.start()`, `await e.stop()`. `render()` returns the text.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lab import FIXTURES as LAB_FIXTURES

FIXTURES = LAB_FIXTURES / "metrics"
_LINE = re.compile(r"^(?P<name>[^{\s]+)(\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def _fmt(value: float) -> str:
    return repr(float(value))


def _labels_text(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


def load_fixture(name: str) -> list[tuple[str, str, dict[str, str], str]]:
    """Fixture lines as (kind, name, labels, value); kind is "comment" (HELP/TYPE, kept) or "sample"."""
    out: list[tuple[str, str, dict[str, str], str]] = []
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith(("# HELP", "# TYPE")):
                out.append(("comment", line, {}, ""))
            continue  # the "# source:" header is ours, not the exporter's
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{name}: cannot read fixture line {line!r}")
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        out.append(("sample", m.group("name"), labels, m.group("value")))
    return out


class Exporter:
    """An aiohttp server on 127.0.0.1 (free port) serving `render()` at /metrics."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.mode = "ok"
        self.scrapes = 0
        self.served = 0  # scrapes answered with metrics (mode "ok")
        self._runner: web.AppRunner | None = None
        self._hang = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def render(self) -> str:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.scrapes += 1
        if self.mode == "hang":
            await self._hang.wait()
        if self.mode == "error":
            return web.Response(status=500, text="internal error\n")
        if self.mode == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>\n{{{ not metrics\n")
        if self.mode == "huge":
            return web.Response(text="# padding\n" * 2_000_000, content_type="text/plain")
        self.served += 1
        return web.Response(text=self.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def start(self) -> Exporter:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class VllmExporter(Exporter):
    def __init__(
        self,
        *,
        generation: str = "v1",
        engines: int = 1,
        model_name: str = "qwen2.5-7b",
        waiting: float | list[float] = 0.0,
        running: float | list[float] = 0.0,
        kv_cache: float | list[float] = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        if generation not in ("v1", "v0"):
            raise ValueError("generation is 'v1' (vLLM >= 0.10) or 'v0' (vLLM 0.6)")
        self.generation = generation
        self.engines = engines if generation == "v1" else 1
        self.model_name = model_name
        self.waiting = waiting
        self.running = running
        self.kv_cache = kv_cache
        self.ttft: list[float] = []
        # counters the tests drive (vllm_desired_replicas reads their rates); None: the fixture's value
        self.prompt_tokens: float | None = None  # vllm:prompt_tokens_total, per engine
        self.generation_tokens: float | None = None  # vllm:generation_tokens_total
        self.request_success: float | None = None  # vllm:request_success_total (its finished_reason="stop")
        self._lines = load_fixture(f"vllm_{generation}.txt")

    def observe_ttft(self, seconds: float, n: int = 1) -> None:
        self.ttft.extend([seconds] * n)

    def _per_engine(self, value: float | list[float], engine: int) -> float:
        if isinstance(value, list):
            return float(value[engine])
        return float(value)

    def render(self) -> str:
        settable = {
            "vllm:num_requests_waiting": self.waiting,
            "vllm:num_requests_running": self.running,
            "vllm:kv_cache_usage_perc": self.kv_cache,
            "vllm:gpu_cache_usage_perc": self.kv_cache,
        }
        counters = {
            "vllm:prompt_tokens_total": self.prompt_tokens,
            "vllm:generation_tokens_total": self.generation_tokens,
        }
        settable.update({k: v for k, v in counters.items() if v is not None})
        out: list[str] = []
        for kind, name, labels, value in self._lines:
            if kind == "comment":
                out.append(name)
                continue
            engines = range(self.engines) if "engine" in labels else [0]
            for e in engines:
                lab = dict(labels)
                if "engine" in lab:
                    lab["engine"] = str(e)
                if "model_name" in lab:
                    lab["model_name"] = self.model_name
                v = value
                if name in settable:
                    v = _fmt(self._per_engine(settable[name], e))
                elif name == "vllm:request_success_total" and self.request_success is not None:
                    v = _fmt(self.request_success if lab.get("finished_reason") == "stop" else 0.0)
                elif name.startswith("vllm:time_to_first_token_seconds_"):
                    obs = self.ttft if e == 0 else []
                    if name.endswith("_bucket"):
                        le = float(lab["le"])
                        v = _fmt(sum(1 for o in obs if o <= le))
                    elif name.endswith("_count"):
                        v = _fmt(len(obs))
                    elif name.endswith("_sum"):
                        v = _fmt(sum(obs))
                out.append(f"{name}{_labels_text(lab)} {v}")
        return "\n".join(out) + "\n"


@dataclass
class Gpu:
    index: int
    namespace: str = ""
    pod: str = ""
    container: str = ""
    util: float = 0.0
    fb_used: float = 1.0
    fb_free: float = 81008.0
    uuid: str = ""

    def __post_init__(self) -> None:
        if not self.uuid:
            self.uuid = f"GPU-74f7fe3b-48f2-6d8b-3cb4-e70426fb66{self.index:02d}"


class DcgmExporter(Exporter):
    def __init__(self, gpus: list[Gpu], *, hostname: str = "dcgm-exporter-cmhft", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.gpus = gpus
        self.hostname = hostname
        self._lines = load_fixture("dcgm.txt")

    def render(self) -> str:
        out: list[str] = []
        for kind, name, labels, value in self._lines:
            if kind == "comment":
                out.append(name)
                continue
            for g in self.gpus:
                lab = dict(labels)
                lab.update(gpu=str(g.index), UUID=g.uuid, device=f"nvidia{g.index}", Hostname=self.hostname,
                           container=g.container, namespace=g.namespace, pod=g.pod)
                v = {"DCGM_FI_DEV_GPU_UTIL": g.util, "DCGM_FI_DEV_FB_USED": g.fb_used,
                     "DCGM_FI_DEV_FB_FREE": g.fb_free}.get(name)
                out.append(f"{name}{_labels_text(lab)} {value if v is None else _fmt(v)}")
        return "\n".join(out) + "\n"
