"""Property-based fuzzing of the extender's routes (hypothesis; issue 19, item 7).

Random ExtenderArgs-shaped bodies (pods asking any GPU count a JSON number or string can spell, scopes,
corrupted pod specs; full Node objects with real annotated topologies, mangled annotations and odd names; or
names only, against a watch cache fed by hand) go to the real aiohttp app on a loopback port, served from a
background thread so each example is one plain HTTP call. Properties: never a 5xx; an error is a
metav1.Status; a well-formed body is a 200 where filter puts every input node in exactly one of Nodes/
NodeNames, FailedNodes and FailedAndUnresolvableNodes (and no other), prioritize scores every input node once,
in order, 0..10, and explain has one row per node with scores 0..10. Bounded: a few hundred examples per
property, no example database (nothing is written into the tree); TOPOSCALE_FUZZ_EXAMPLES=N runs N per
property instead (a deeper local run).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toposcale.extender.server import Extender, ServerConfig
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.annotations import ALLOCATION_ANNOTATION, TOPOLOGY_ANNOTATION

from lab.objects import gpu_node
from lab.procs import free_port

EXAMPLES = int(os.environ.get("TOPOSCALE_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RESOURCE = "nvidia.com/gpu"
FIXTURES = ["hgx-h100-nvswitch-8gpu", "l40s-4gpu-two-per-socket", "h100-vm-1gpu",
            "a100-4gpu-bridged-pairs-two-sockets", "pcie-8gpu-two-switch-trees"]
# Real annotated nodes, built once (parsing topology text is the slow part); examples copy and mangle them.
BASE_NODES = [gpu_node(f"n-{f}-{len(used)}", f, used) for f in FIXTURES for used in ([], [0], [0, 1, 2])
              if f != "h100-vm-1gpu" or len(used) < 2]
BASE_NODES.append(gpu_node("bare", None))
CACHED = [n["metadata"]["name"] for n in BASE_NODES]


class Background:
    """An asyncio loop in a thread serving the extender twice: standalone (full Node objects) and with a
    watch cache fed by hand (names only)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        self.standalone = self.run(self._serve(None))
        state = ClusterState(RESOURCE)
        state.nodes_relisted([json.loads(json.dumps(n)) for n in BASE_NODES], "1")
        state.pods_relisted([], "1")
        self.cached = self.run(self._serve(state))
        self.session: aiohttp.ClientSession = self.run(self._session())

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _serve(self, state: ClusterState | None) -> str:
        cfg = ServerConfig()
        cfg.host, cfg.port = "127.0.0.1", free_port()
        ext = Extender(cfg, state)
        runner = web.AppRunner(ext.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{cfg.port}{ext.prefix}"

    def post(self, url: str, body: bytes) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            async with self.session.post(url, data=body,
                                         headers={"Content-Type": "application/json"}) as r:
                raw = await r.read()
                return r.status, _decode(raw)
        return self.run(go())  # type: ignore[no-any-return]

    def get(self, url: str) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            async with self.session.get(url) as r:
                return r.status, _decode(await r.read())
        return self.run(go())  # type: ignore[no-any-return]

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            for r in self.runners:
                await r.cleanup()
        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@pytest.fixture(scope="module")
def bg() -> Iterator[Background]:
    b = Background()
    yield b
    b.close()


# --- strategies ------------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False),
                        TEXT)
JSON = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
QUANTITY = st.one_of(
    st.sampled_from(["0", "1", "2", "3", "4", "8", "9", "16", "1e30", "18446744073709551616", "1e3", "4k",
                     "1Ki", "-1", "1.5", "0.5", "abc", "", " 4", "4\n", "0x4", "1e-3", "+2", "٣", "NaN",
                     "Infinity", "9" * 40]),
    st.integers(-5, 20), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.none(), JSON,
)
SCOPE = st.one_of(st.sampled_from(["nvlink", "NVLink", "pcie", "pci-switch", "numa", "socket", "any", "node",
                                   "", "none", "nvswitch"]), TEXT)


@st.composite
def pods(draw: st.DrawFn) -> Any:
    res: dict[str, Any] = {}
    for part in draw(st.sets(st.sampled_from(["requests", "limits"]))):
        res[part] = {draw(st.sampled_from([RESOURCE, RESOURCE, "cpu", "NVIDIA.com/gpu"])): draw(QUANTITY)}
    container: dict[str, Any] = {"name": draw(TEXT), "resources": res}
    containers = [container, *draw(st.lists(st.just({"name": "side", "resources": {}}), max_size=1))]
    spec: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()):
        spec["initContainers"] = [{"name": "init", "resources": {"limits": {RESOURCE: draw(QUANTITY)}}}]
    if draw(st.integers(0, 9)) == 0:
        spec["nodeName"] = draw(st.sampled_from(CACHED))
    meta: dict[str, Any] = {"name": draw(TEXT), "namespace": draw(TEXT)}
    if draw(st.booleans()):
        meta["annotations"] = {"toposcale.io/required-scope": draw(SCOPE)}
    pod: dict[str, Any] = {"metadata": meta, "spec": spec, "status": {"phase": "Pending"}}
    # corrupt one level now and then: the shape a broken client might send
    corrupt = draw(st.integers(0, 11))
    if corrupt == 0:
        pod["spec"] = draw(JSON)
    elif corrupt == 1:
        pod["metadata"] = draw(JSON)
    elif corrupt == 2:
        container["resources"] = draw(JSON)
    elif corrupt == 3:
        spec["containers"] = draw(JSON)
    return pod


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    node = json.loads(json.dumps(draw(st.sampled_from(BASE_NODES))))
    ann = node["metadata"]["annotations"]
    how = draw(st.integers(0, 9))
    key = draw(st.sampled_from([TOPOLOGY_ANNOTATION, ALLOCATION_ANNOTATION]))
    if how == 0:
        ann[key] = draw(TEXT)
    elif how == 1:
        ann[key] = json.dumps(draw(JSON))
    elif how == 2 and key in ann:
        ann[key] = ann[key][: draw(st.integers(0, len(ann[key])))]
    elif how == 3:
        ann.pop(key, None)
    elif how == 4:
        node["status"]["allocatable"][RESOURCE] = draw(QUANTITY)
    if draw(st.integers(0, 3)) == 0:
        node["metadata"]["name"] = draw(st.one_of(TEXT, st.sampled_from(CACHED)))
    return node


@st.composite
def full_args(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """ExtenderArgs with full Node objects, and the input nodes (distinct names, as the scheduler means)."""
    items = draw(st.lists(nodes(), max_size=6))
    names = list(dict.fromkeys(n["metadata"]["name"] for n in items if n["metadata"]["name"]))
    keys = draw(st.sampled_from([("Pod", "Nodes"), ("pod", "nodes"), ("POD", "NODES")]))
    return {keys[0]: draw(pods()), keys[1]: {"items": items}, "NodeNames": None}, names


@st.composite
def names_args(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    names = draw(st.lists(st.one_of(st.sampled_from(CACHED), TEXT.filter(bool)), max_size=8, unique=True))
    return {"Pod": draw(pods()), "Nodes": None, "NodeNames": names}, names


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # stdlib json: integers beyond 64 bits as the scheduler could send


def is_status(code: int, body: Any) -> bool:
    return (isinstance(body, dict) and body.get("kind") == "Status" and body.get("apiVersion") == "v1"
            and body.get("status") == "Failure" and body.get("code") == code
            and isinstance(body.get("reason"), str) and isinstance(body.get("message"), str))


def check_filter(code: int, body: Any, names: list[str], full: bool) -> None:
    assert code == 200, (code, body)
    assert body["Error"] == ""
    if full:
        assert body["NodeNames"] is None
        passing = [n["metadata"]["name"] for n in body["Nodes"]["items"]]
    else:
        assert body["Nodes"] is None
        passing = body["NodeNames"]
    failed, unresolvable = body["FailedNodes"], body["FailedAndUnresolvableNodes"]
    assert all(isinstance(v, str) and v for v in [*failed.values(), *unresolvable.values()]), body
    assert len(passing) == len(set(passing))
    for name in names:
        places = [name in passing, name in failed, name in unresolvable]
        assert places.count(True) == 1, (name, body)
    assert set(passing) | set(failed) | set(unresolvable) == set(names), body


def check_prioritize(code: int, body: Any, names: list[str]) -> None:
    assert code == 200, (code, body)
    assert [h["Host"] for h in body] == names
    assert all(type(h["Score"]) is int and 0 <= h["Score"] <= 10 for h in body), body


def check_explain(code: int, body: Any, names: list[str]) -> None:
    assert code == 200, (code, body)
    assert isinstance(body["pod"], str) and isinstance(body["nodes"], list)
    if "error" in body:
        assert body["nodes"] == []
        return
    assert sorted(r["node"] for r in body["nodes"]) == sorted(names)
    for row in body["nodes"]:
        assert type(row["score"]) is int and 0 <= row["score"] <= 10, row
        assert isinstance(row["outcome"], str) and isinstance(row["reason"], str), row


# --- properties ------------------------------------------------------------------------------------------


@FUZZ
@given(case=st.one_of(full_args(), names_args()))
def test_filter(bg: Background, case: tuple[dict[str, Any], list[str]]) -> None:
    doc, names = case
    full = doc.get("NodeNames") is None
    base = bg.standalone if full else bg.cached
    code, body = bg.post(base + "/filter", body_of(doc))
    if code != 200:  # only a pod that is not a JSON object may be refused
        assert 400 <= code < 500 and is_status(code, body), (code, body)
        assert not isinstance(next(iter(doc.values())), dict), (code, body)
        return
    check_filter(code, body, names, full)


@FUZZ
@given(case=st.one_of(full_args(), names_args()))
def test_prioritize(bg: Background, case: tuple[dict[str, Any], list[str]]) -> None:
    doc, names = case
    base = bg.standalone if doc.get("NodeNames") is None else bg.cached
    code, body = bg.post(base + "/prioritize", body_of(doc))
    if code != 200:
        assert 400 <= code < 500 and is_status(code, body), (code, body)
        assert not isinstance(next(iter(doc.values())), dict), (code, body)
        return
    check_prioritize(code, body, names)


@FUZZ
@given(case=st.one_of(full_args(), names_args()))
def test_explain(bg: Background, case: tuple[dict[str, Any], list[str]]) -> None:
    doc, names = case
    base = bg.standalone if doc.get("NodeNames") is None else bg.cached
    code, body = bg.post(base + "/explain", body_of(doc))
    if code != 200:
        assert 400 <= code < 500 and is_status(code, body), (code, body)
        assert not isinstance(next(iter(doc.values())), dict), (code, body)
        return
    check_explain(code, body, names)


@FUZZ
@given(verb=st.sampled_from(["/filter", "/prioritize", "/explain"]),
       body=st.one_of(st.binary(max_size=64), JSON.map(body_of),
                      st.builds(lambda pod, n: body_of({"Pod": pod, "Nodes": n, "NodeNames": n}), JSON, JSON),
                      st.builds(lambda p, n: body_of({"Pod": p, "NodeNames": n}), pods(), JSON)),
       cached=st.booleans())
def test_any_body_is_never_a_5xx(bg: Background, verb: str, body: bytes, cached: bool) -> None:
    code, answer = bg.post((bg.cached if cached else bg.standalone) + verb, body)
    if code == 200:
        return
    assert 400 <= code < 500 and is_status(code, answer), (code, answer)


@settings(max_examples=EXAMPLES // 2, deadline=None, database=None)
@given(ref=st.one_of(TEXT, st.builds(lambda a, b: f"{a}/{b}", TEXT, TEXT)))
def test_explain_get(bg: Background, ref: str) -> None:
    for base in (bg.standalone, bg.cached):
        code, body = bg.get(f"{base}/explain?pod={quote(ref, safe='')}")
        assert 400 <= code < 500 and is_status(code, body), (code, body)
