"""Acceptance: `toposcale extender` as a real process: `--standalone --port N` with no Kubernetes connection,
and in watch mode against the session's real kube-apiserver."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson

from tests.extender.conftest import Lab, free_port, node_obj, pod_obj

TOPOSCALE = Path(sys.executable).parent / "toposcale"


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_standalone_process_serves_every_route() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    proc = await asyncio.create_subprocess_exec(
        str(TOPOSCALE), "extender", "--standalone", "--port", str(port), "--allocation-max-age", "600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    full = {"Pod": pod_obj("vllm", 4), "Nodes": {"items": [node_obj("hgx", "hgx-h100-nvswitch-8gpu")]},
            "NodeNames": None}
    names = {"Pod": pod_obj("vllm", 4), "Nodes": None, "NodeNames": ["hgx"]}
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with s.get(url + "/healthz") as r:
                assert r.status == 200 and (await r.json())["mode"] == "standalone"
            async with s.post(url + "/filter", data=orjson.dumps(full)) as r:
                res = await r.json()
                assert r.status == 200 and res["Nodes"]["items"][0]["metadata"]["name"] == "hgx"
            async with s.post(url + "/prioritize", data=orjson.dumps(full)) as r:
                assert (await r.json())[0]["Host"] == "hgx"
            async with s.post(url + "/explain", data=orjson.dumps(full)) as r:
                assert (await r.json())["nodes"][0]["tier"] == "nvlink"
            async with s.post(url + "/filter", data=orjson.dumps(names)) as r:
                res = await r.json()
                assert r.status == 200 and "standalone" in res["FailedAndUnresolvableNodes"]["hgx"]
            async with s.get(url + "/readyz") as r:
                assert r.status == 200 and (await r.json())["mode"] == "standalone"
            old = dict(full, Nodes={"items": [node_obj("hgx", "hgx-h100-nvswitch-8gpu", observed=ago(700))]})
            async with s.post(url + "/prioritize", data=orjson.dumps(old)) as r:
                assert (await r.json())[0]["Score"] == 5  # --allocation-max-age 600: stale, neutral
            async with s.get(url + "/nope") as r:
                assert r.status == 404 and (await r.json())["kind"] == "Status"
            async with s.get(url + "/metrics") as r:
                assert "toposcale_extender_decision_seconds" in await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert b'"msg": "extender serving"' in err


async def test_watch_mode_process_answers_names_from_its_cache(lab: Lab) -> None:
    # The extender process reads the session's real kube-apiserver through its kubernetes-asyncio client.
    hgx, l40s = lab.name("hgx"), lab.name("l40s")
    lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu"))
    lab.kube.add(node_obj(l40s, "l40s-4gpu-two-per-socket"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    proc = await asyncio.create_subprocess_exec(
        str(TOPOSCALE), "extender", "--kubeconfig", lab.kubeconfig, "--port", str(port), "--url-prefix", "/x",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}/x"
    body = {"Pod": pod_obj("vllm", 4, scope="nvlink"), "Nodes": None, "NodeNames": [l40s, hgx]}
    try:
        async with aiohttp.ClientSession() as s:
            synced = False
            for _ in range(200):
                try:
                    async with s.get(url + "/readyz") as r:  # 503 Status until both caches listed
                        synced = r.status == 200
                except aiohttp.ClientConnectionError:
                    pass
                if synced:
                    break
                await asyncio.sleep(0.05)
            assert synced
            async with s.post(url + "/filter", data=orjson.dumps(body)) as r:
                res = await r.json()
            assert res["NodeNames"] == [hgx], res
            assert "no two connected by NVLink" in res["FailedAndUnresolvableNodes"][l40s]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
