"""Acceptance: `toposcale extender --standalone --port N` as a real process, no Kubernetes connection."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.extender.conftest import free_port, node_obj, pod_obj

TOPOSCALE = Path(sys.executable).parent / "toposcale"


async def test_standalone_process_serves_every_route() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    proc = await asyncio.create_subprocess_exec(
        str(TOPOSCALE), "extender", "--standalone", "--port", str(port),
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
            async with s.get(url + "/metrics") as r:
                assert "toposcale_extender_decision_seconds" in await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert b'"msg": "extender serving"' in err
