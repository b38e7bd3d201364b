"""Benchmark: what the adapter's security layer costs per request.

    .venv/bin/python benchmarks/bench_security.py [--duration 3] [--clients 1,16]

One server process pinned to one core (taskset when available) runs the adapter's security stack
(`build_security` + the bounded listener) in front of a trivial handler, so only the security layer is
measured;
the load generator runs in this process on the other cores, over keep-alive connections. Kubernetes is the
in-process API stand-in lab/kube/standin.py (TokenReview / SubjectAccessReview answers are cached after the
first request, as in production with steady callers). Rows, measured in the same run:

- `http anonymous`: `--insecure-allow-anonymous`, plain HTTP (no TLS, no checks): the floor.
- `https anonymous`: TLS, no checks.
- `https client-cert`: x509 client certificate verified per request, SAR answer from cache.
- `https front-proxy`: the aggregator's path: front-proxy cert + X-Remote-* headers, SAR from cache.
- `https token`: bearer token (TokenReview cached) + SAR from cache.

The table prints requests/s, p50 and p99, and p50 as a ratio of `https anonymous` (the cost of authn + authz
on top of TLS).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python benchmarks/bench_x.py`: the same as `python -m`
    import _script

    _script.as_module(__file__)

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toposcale.core.ports import free_port

ROOT = Path(__file__).resolve().parent.parent

PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/vllm_queue_depth"
MODES = ["http anonymous", "https anonymous", "https client-cert", "https front-proxy", "https token"]


def make_pki(directory: Path) -> dict[str, Any]:
    from lab.pki import TestPKI

    pki = TestPKI(directory)
    ca, fp_ca = pki.ca("kubernetes-ca"), pki.ca("front-proxy-ca")
    return {"ca": ca, "fp_ca": fp_ca, "serving": pki.server(ca, "adapter", hosts=["127.0.0.1"]),
            "alice": pki.client(ca, "alice", groups=["dev"]), "fp": pki.client(fp_ca, "front-proxy-client")}


def server_main(mode: str, port: int, pki_dir: str, ready: Any) -> None:
    asyncio.run(_server(mode, port, Path(pki_dir), ready))


async def _server(mode: str, port: int, pki_dir: Path, ready: Any) -> None:
    import argparse as ap
    import json

    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from toposcale.adapter.security import options

    from lab.kube.standin import KubeStandIn
    from toposcale.core import listener, logs

    logs.setup("error")
    parser = ap.ArgumentParser(allow_abbrev=False)
    options.add_arguments(parser)
    argv = ["--insecure-allow-anonymous"] if mode == "http anonymous" else []
    kube = None
    if mode == "https anonymous":
        argv = ["--insecure-allow-anonymous", "--tls-cert-file", str(pki_dir / "server-adapter.crt"),
                "--tls-private-key-file", str(pki_dir / "server-adapter.key")]
    elif mode.startswith("https"):
        kube = KubeStandIn()
        await kube.start()
        kube.tokens["tok"] = {"username": "hpa", "groups": ["system:serviceaccounts"]}
        kube.sar_decider = lambda spec: True
        kube.add({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
                  "data": {"client-ca-file": (pki_dir / "kubernetes-ca.crt").read_text(),
                           "requestheader-client-ca-file": (pki_dir / "front-proxy-ca.crt").read_text(),
                           "requestheader-allowed-names": json.dumps(["front-proxy-client"]),
                           "requestheader-username-headers": json.dumps(["X-Remote-User"]),
                           "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
                           "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"])}})
        kc = kube.write_kubeconfig(pki_dir / f"kubeconfig-{os.getpid()}")
        argv = ["--tls-cert-file", str(pki_dir / "server-adapter.crt"),
                "--tls-private-key-file", str(pki_dir / "server-adapter.key"),
                "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc]
    sec = await options.build_security(parser.parse_args(argv), CollectorRegistry())

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[sec.middleware])
    app.router.add_get(PATH, handler)
    await listener.serve(app, "127.0.0.1", port, sec.ssl_context, sec.limits, sec.on_cut)
    ready.set()
    await asyncio.Event().wait()


async def load(mode: str, port: int, pki: dict[str, Any], clients: int, duration: float) -> list[float]:
    import aiohttp

    ctx: ssl.SSLContext | None = None
    headers: dict[str, str] = {}
    if mode.startswith("https"):
        ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
        if mode == "https client-cert":
            ctx.load_cert_chain(pki["alice"].cert_path, pki["alice"].key_path)
        elif mode == "https front-proxy":
            ctx.load_cert_chain(pki["fp"].cert_path, pki["fp"].key_path)
            headers = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                       "X-Remote-Group": "system:serviceaccounts"}
        elif mode == "https token":
            headers = {"Authorization": "Bearer tok"}
    url = f"{'https' if ctx else 'http'}://127.0.0.1:{port}{PATH}"
    latencies: list[float] = []
    conn = aiohttp.TCPConnector(limit=clients, ssl=ctx if ctx else False)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> None:
            async with s.get(url, headers=headers) as r:
                assert r.status == 200, (mode, r.status, await r.text())
                await r.read()

        await asyncio.gather(*(one() for _ in range(clients * 4)))  # warm connections and caches
        end = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--clients", default="1,16")
    args = ap.parse_args()
    clients_list = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-security-"))
    pki = make_pki(tmp)
    rows: list[tuple[str, int, float, float, float]] = []
    ctx = mp.get_context("spawn")
    try:
        for mode in MODES:
            port = free_port()
            ready = ctx.Event()
            proc = ctx.Process(target=server_main, args=(mode, port, str(tmp), ready), daemon=True)
            proc.start()
            if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
                subprocess.run(["taskset", "-pc", "0", str(proc.pid)], capture_output=True, check=False)
                os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
            if not ready.wait(60):
                raise SystemExit(f"{mode}: server did not start")
            for clients in clients_list:
                lat = asyncio.run(load(mode, port, pki, clients, args.duration))
                q = statistics.quantiles(lat, n=100)
                rows.append((mode, clients, len(lat) / args.duration, q[49] * 1e3, q[98] * 1e3))
            proc.terminate()
            proc.join(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = {c: p50 for m, c, _, p50, _ in rows if m == "https anonymous"}
    print(f"{'mode':<20} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p50 / https anon':>17}")
    for mode, clients, rps, p50, p99 in rows:
        print(f"{mode:<20} {clients:>7} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {p50 / base[clients]:>16.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
