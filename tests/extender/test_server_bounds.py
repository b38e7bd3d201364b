"""What the scheduler relies on when the extender is loaded or spoken to wrongly: bodies are read before a
decision slot is taken (a stalled upload starves no one), a full house answers 429 TooManyRequests with a
metav1.Status and Retry-After, every non-2xx answer is a metav1.Status JSON, and /readyz tells the Service
when the watch cache can answer. All over real HTTP on loopback, raw sockets where a client misbehaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from toposcale.extender.server import ServerConfig
from toposcale.extender.state import ClusterState

from lab.objects import gpu_node, make_pod
from tests.extender.test_watch import until


def full_args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


NODES = [gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0]), gpu_node("bare", None)]


def assert_status(doc: Any, code: int, reason: str) -> None:
    assert doc["kind"] == "Status" and doc["apiVersion"] == "v1" and doc["status"] == "Failure"
    assert doc["code"] == code and doc["reason"] == reason and doc["message"]


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: extender\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_stalled_uploads_do_not_hold_decision_slots(serve) -> None:
    body = orjson.dumps(full_args(make_pod("tp4", 4), NODES))
    async with serve(ServerConfig(max_inflight=4)) as s, contextlib.AsyncExitStack() as stack:
        for _ in range(6):  # more stalled uploads than decision slots
            _, w = await stack.enter_async_context(raw(s.url))
            w.write(head("/filter", len(body)) + body[: len(body) // 2])
            await w.drain()
        await until(lambda: s.extender.admission.pending == 6, "six uploads being received")
        code, res = await s.post("/filter", full_args(make_pod("tp4", 4), NODES))
        assert code == 200, res  # answered, not 429 after waiting for a slot the uploads hold
        assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["hgx", "bare"]


async def test_a_body_not_received_in_time_is_a_408_status(serve) -> None:
    async with serve(ServerConfig(body_timeout_s=0.2)) as s, raw(s.url) as (r, w):
        w.write(head("/filter", 1000) + b'{"Pod": ')
        await w.drain()
        status_line = await r.readline()
        assert status_line.startswith(b"HTTP/1.1 408")
        headers = (await r.readuntil(b"\r\n\r\n")).lower().split(b"\r\n")
        length = int(next(h for h in headers if h.startswith(b"content-length")).split(b":")[1])
        assert_status(orjson.loads(await r.readexactly(length)), 408, "Timeout")


async def test_full_house_answers_429_too_many_requests(serve) -> None:
    # One slot; a client that sends a request and never reads its (large, full-Node echo) answer holds it.
    big = gpu_node("big", "hgx-h100-nvswitch-8gpu")
    big["metadata"]["annotations"]["example.com/padding"] = "x" * (48 * 1024 * 1024)
    body = orjson.dumps(full_args(make_pod("cpu-only", 0), [big]))
    async with serve(ServerConfig(max_inflight=1, queue_timeout_s=0.1)) as s:
        async with raw(s.url) as (_, w):
            w.write(head("/filter", len(body)) + body)
            await w.drain()
            slots = s.extender.admission.slots
            await until(slots.locked, "the answer stuck in the socket, slot held")
            other = orjson.dumps(full_args(make_pod("a", 4), NODES))
            async with s.session.post(s.url + "/filter", data=other) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "1"
                assert r.content_type == "application/json"
                assert_status(await r.json(), 429, "TooManyRequests")
        await until(lambda: not s.extender.admission.slots.locked(), "slot freed when the client went away")
        code, _ = await s.post("/filter", full_args(make_pod("a", 4), NODES))
        assert code == 200
        _, text = await s.get("/metrics")
        assert 'toposcale_extender_requests_total{code="429",verb="filter"} 1.0' in text


async def test_too_many_pending_uploads_answer_429_at_once(serve) -> None:
    async with serve(ServerConfig(max_inflight=1)) as s, contextlib.AsyncExitStack() as stack:
        limit = s.extender.admission.max_pending
        for _ in range(limit):
            _, w = await stack.enter_async_context(raw(s.url))
            w.write(head("/prioritize", 100) + b"{")
            await w.drain()
        await until(lambda: s.extender.admission.pending == limit, "uploads being received")
        code, doc = await s.post("/prioritize", full_args(make_pod("a", 4), NODES))
        assert code == 429
        assert_status(doc, 429, "TooManyRequests")


async def test_every_error_answer_is_a_status(serve) -> None:
    async with serve(ServerConfig(url_prefix="/toposcale", max_body_bytes=4096)) as s:
        async with s.session.get(s.url + "/nope") as r:
            assert r.status == 404 and r.content_type == "application/json"
            assert_status(await r.json(), 404, "NotFound")
        async with s.session.get(s.url.replace("/toposcale", "") + "/filter") as r:  # prefix missing
            assert_status(await r.json(), 404, "NotFound")
        async with s.session.get(s.url + "/filter") as r:
            assert r.status == 405 and "POST" in r.headers["Allow"]
            assert_status(await r.json(), 405, "MethodNotAllowed")
        async with s.session.put(s.url + "/readyz") as r:
            assert_status(await r.json(), 405, "MethodNotAllowed")
        code, doc = await s.post("/filter", b"{" + b" " * 8192 + b"}")
        assert code == 413
        assert_status(doc, 413, "RequestEntityTooLarge")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(8):
                yield b" " * 1024

        async with s.session.post(s.url + "/filter", data=chunks()) as r:
            assert r.status == 413
            assert_status(await r.json(), 413, "RequestEntityTooLarge")
        code, doc = await s.post("/filter", b"{not json")
        assert code == 400
        assert_status(doc, 400, "BadRequest")


async def test_readyz_waits_for_the_watch_cache(serve) -> None:
    st = ClusterState("nvidia.com/gpu")  # fed by hand here; test_watch.py runs the real reflectors
    async with serve(state=st) as s:
        async with s.session.get(s.url + "/readyz") as r:
            assert r.status == 503
            doc = await r.json()
            assert_status(doc, 503, "ServiceUnavailable")
            assert "nodes and pods" in doc["message"]
        code, _ = await s.get("/healthz")
        assert code == 200  # alive all along: liveness must not restart a pod that is still listing
        st.nodes_relisted([NODES[0]], "1")
        async with s.session.get(s.url + "/readyz") as r:
            assert r.status == 503 and "pods not listed" in (await r.json())["message"]
        st.pods_relisted([], "1")
        code, text = await s.get("/readyz")
        assert code == 200 and orjson.loads(text)["mode"] == "watch"
    async with serve() as s:
        code, text = await s.get("/readyz")
        assert code == 200 and orjson.loads(text)["mode"] == "standalone"


async def test_a_handler_bug_is_a_500_status_and_the_service_keeps_serving(serve) -> None:
    class Broken(ClusterState):
        @property
        def synced(self) -> bool:
            raise RuntimeError("cache in a state nobody planned for")

    async with serve(state=Broken("nvidia.com/gpu")) as s:
        async with s.session.get(s.url + "/healthz") as r:
            assert r.status == 500
            doc = await r.json()
            assert_status(doc, 500, "InternalError")
            assert "cache in a state nobody planned for" in doc["message"]
        code, _ = await s.get("/metrics")
        assert code == 200


@contextlib.asynccontextmanager
async def listening(config: ServerConfig) -> AsyncIterator[Any]:
    """The extender on its own bounded listener (Extender.listen, what `toposcale extender` serves on)."""
    from toposcale.extender.server import Extender

    from lab.procs import free_port

    config.host, config.port = "127.0.0.1", free_port()
    ext = Extender(config)
    runner, _site = await ext.listen()
    try:
        yield ext, f"http://127.0.0.1:{config.port}"
    finally:
        await runner.cleanup()


async def _closed(reader: asyncio.StreamReader, within_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within_s)  # everything until the server closes


async def test_a_request_whose_headers_stall_is_cut_after_the_header_timeout() -> None:
    # Half a header, then nothing: before, the connection was held forever (20,000 of them made the
    # extender unreachable).
    async with listening(ServerConfig(header_timeout_s=0.3)) as (ext, url), raw(url) as (reader, writer):
        writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Ty")
        await writer.drain()
        answer = await _closed(reader, 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        text = (await ext.metrics(None)).body.decode()
    assert 'toposcale_extender_connections_cut_total{reason="header-timeout"} 1.0' in text


async def test_at_the_cap_the_oldest_idle_connection_makes_room() -> None:
    # Before (issue 28): a new connection beyond the cap was closed at once, so 1,000 idle keep-alive
    # connections locked the scheduler out.
    async with listening(ServerConfig(max_connections=2)) as (ext, url), raw(url) as (r1, _w1), \
            raw(url) as (_r2, _w2):  # accepted in order: r1 is the oldest
        async with raw(url) as (r3, w3):
            w3.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await _closed(r3, 5)).startswith(b"HTTP/1.1 200 ")
        assert await _closed(r1, 5) == b""  # the oldest idle one, closed without a byte
        text = (await ext.metrics(None)).body.decode()
    assert 'toposcale_extender_connections_cut_total{reason="evicted"} 1.0' in text


async def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with listening(ServerConfig(keepalive_timeout_s=0.3)) as (_ext, url), raw(url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await _closed(reader, 5)  # answered, kept alive, then closed when idle
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1


def test_the_bounds_are_flags_with_defaults() -> None:
    import argparse

    from toposcale.extender.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.request_header_timeout, args.max_connections, args.keepalive_timeout) == (10.0, 1000, 10.0)
    args = parser.parse_args(["--request-header-timeout", "2", "--max-connections", "50",
                              "--keepalive-timeout", "30"])
    assert (args.request_header_timeout, args.max_connections, args.keepalive_timeout) == (2.0, 50, 30.0)
    for bad in (["--max-connections", "0"], ["--request-header-timeout", "0"],
                ["--keepalive-timeout", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
