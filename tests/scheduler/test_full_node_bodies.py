"""What benchmarks/bench_scheduler.py showed first: with `nodeCacheCapable: false` kube-scheduler's calls to
the extender were cut at 1,000 nodes (every one: "failed filter with extender ..., code 431", the extender
skipped as ignorable), and at about 20 nodes already.

The extender's listener (toposcale/core/listener.py, BoundedProtocol) bounds the headers of each request
(64 KiB, 10 s). It took the second chunk of a request body for the start of the next request's headers: a
full-Node body (about 3 KB a node) past 64 KiB was answered 431 and the connection closed, and a shorter
body's tail started a header deadline that ran out on an idle keep-alive connection (408). Now the body
announced by Content-Length is passed through uncounted, and the next request's headers are bounded again.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import generate_latest
from toposcale.extender.server import Extender, ServerConfig

from lab.objects import gpu_node, make_pod
from lab.procs import free_port

NODES = 200  # about 0.5 MB of full Node objects, as the scheduler sends at nodeCacheCapable: false


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, json.loads(await reader.readexactly(length))


async def test_full_node_bodies_over_one_keepalive_connection_are_answered() -> None:
    cfg = ServerConfig(host="127.0.0.1", port=free_port(), header_timeout_s=0.5)
    ext = Extender(cfg)
    runner, _site = await ext.listen()
    try:
        nodes = [gpu_node(f"gpu-{i}", "a6000-8gpu-nvlink-bridge-pairs", used=[0]) for i in range(NODES)]
        body = json.dumps(
            {"Pod": make_pod("vllm", 4), "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}
        ).encode()
        assert len(body) > 4 * 64 * 1024
        reader, writer = await asyncio.open_connection("127.0.0.1", cfg.port)
        try:
            for verb in ("filter", "prioritize", "filter"):
                writer.write(
                    f"POST /{verb} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                for i in range(0, len(body), 16384):  # as a socket delivers it: in pieces
                    writer.write(body[i : i + 16384])
                    await writer.drain()
                status, doc = await _answer(reader)
                assert status == 200, (verb, status, doc)
                if verb == "filter":
                    assert len(doc["Nodes"]["items"]) == NODES
                else:
                    assert len(doc) == NODES
                # idle between the scheduler's calls, longer than the header deadline
                await asyncio.sleep(0.8)
        finally:
            writer.close()
    finally:
        await runner.cleanup()
    text = generate_latest(ext.registry).decode()
    assert "toposcale_extender_connections_cut_total{" not in text, text  # nothing was cut
