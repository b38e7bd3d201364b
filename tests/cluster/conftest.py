"""Fixtures and helpers for tests against the real control plane: `kube_cluster` and `deployed` are session
fixtures in tests/conftest.py (deploy/ applied once per session, lab/peers/deployed.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lab.kube.cluster import free_port
from lab.peers.deployed import (  # noqa: F401 -- re-exported for the tests in this folder
    CRD_KINDS,
    KUBECTL,
    ROOT,
    TOPOSCALE,
    Deployed,
    apply_objects,
    forbidden,
    kubectl,
    render,
    sa_token,
)


@contextlib.asynccontextmanager
async def process(argv: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A toposcale command as a child process, output to `log`; terminated (then killed) on exit."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class AdapterProc:
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def run_adapter(d: Deployed, args: list[str], log: Path) -> AsyncIterator[AdapterProc]:
    """`toposcale adapter` with the deploy's serving certificate and its ServiceAccount's credentials, and the
    APIService pointed at it (port and caBundle)."""
    port = free_port()
    kc = str(d.kubeconfigs["toposcale-adapter"])
    argv = [
        str(TOPOSCALE),
        "adapter",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--tls-cert-file",
        str(d.serving_cert),
        "--tls-private-key-file",
        str(d.serving_key),
        "--authentication-kubeconfig",
        kc,
        "--authorization-kubeconfig",
        kc,
        "--rules",
        str(d.deploy_dir / "adapter" / "base" / "generated" / "rules.yaml"),
        *args,
    ]
    async with process(argv, log) as proc:
        ap = AdapterProc(port, proc, log)
        ctx = ssl.create_default_context(cafile=str(d.serving_ca))
        ctx.check_hostname = False
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                if proc.returncode is not None:
                    raise AssertionError(f"adapter exited {proc.returncode}:\n{ap.tail()}")
                try:
                    async with s.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"adapter never became healthy:\n{ap.tail()}")
        ca = base64.b64encode(d.serving_ca.read_bytes()).decode()
        for apiservice in ("v1beta1.external.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"):
            await asyncio.to_thread(
                kubectl,
                d.cluster,
                "patch",
                "apiservice",
                apiservice,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"service": {"port": port}, "caBundle": ca}}),
            )
        yield ap


async def wait_for(predicate: Any, limit: float, what: str, interval: float = 0.5) -> Any:
    """Polls `predicate` (sync or async, returning a truthy value when done) until `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what} (last: {last!r})")
