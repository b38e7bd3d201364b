"""Hostile clients against the extender's listener (issue 28, items 2 and 3), on loopback: idle and
keep-alive connections beyond --max-connections, request bodies trickled a byte at a time, and a full Node
whose topology is far larger than any GPU node. Throughout each, /healthz (the kubelet's probe, and a stand-in
for the scheduler's next call) is answered within 1 s.

Before: at the cap every new connection was closed at once (41 of 43 probes failed with 1,000 idle
connections), and one 1,024-GPU topology held the event loop ~15 s."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from toposcale.extender.server import ServerConfig
from toposcale.extender.topology.annotations import TOPOLOGY_ANNOTATION, AnnotationError, topology_from_doc
from toposcale.extender.topology.scoring import NEUTRAL_SCORE

from lab.objects import gpu_node, make_pod
from lab.peers.hostile import closed_by_server, held_connections, probe_during
from tests.extender.test_server_bounds import full_args, head, listening

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _healthz(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:  # a new connection each time
        await r.read()
        return r.status


async def test_idle_connections_do_not_lock_the_scheduler_out() -> None:
    config = ServerConfig(max_connections=50, header_timeout_s=1.0, keepalive_timeout_s=1.0)
    async with listening(config) as (ext, url):
        port = _port(url)

        async def attack() -> None:
            async with (
                held_connections("127.0.0.1", port, 200) as idle,
                held_connections("127.0.0.1", port, 50, send=GET) as kept,
            ):
                await asyncio.sleep(1.5)  # held past the timeouts while the probes run
                assert all(await asyncio.gather(*(closed_by_server(r, 10) for r, _ in idle + kept)))

        probes = await probe_during(attack(), lambda: _healthz(url))
        text = (await ext.metrics(None)).body.decode()
    assert probes.sent >= 3 and probes.failed == 0, probes
    assert 'toposcale_extender_connections_cut_total{reason="evicted"}' in text


async def test_trickled_bodies_do_not_lock_the_scheduler_out() -> None:
    # 100 uploads announcing 1,000 bytes, fed a byte every 200 ms, against a cap of 50
    config = ServerConfig(max_connections=50, body_timeout_s=1.0)
    async with listening(config) as (_ext, url):
        port = _port(url)

        async def attack() -> None:
            async with held_connections("127.0.0.1", port, 100, send=head("/filter", 1000)) as conns:
                for _ in range(8):
                    await asyncio.sleep(0.2)
                    for _, writer in conns:
                        if not writer.is_closing():
                            writer.write(b" ")

        probes = await probe_during(attack(), lambda: _healthz(url))
    assert probes.sent >= 3 and probes.failed == 0, probes


def _huge_topology(gpus: int, salt: str = "") -> str:
    doc = orjson.loads(
        gpu_node("x", "hgx-h100-nvswitch-8gpu")["metadata"]["annotations"][TOPOLOGY_ANNOTATION]
    )
    base = doc["gpus"][0]
    doc["gpus"] = [
        {**base, "id": f"GPU-{salt}{i:05d}", "index": i, "uuid": f"GPU-{salt}{i:05d}"} for i in range(gpus)
    ]
    doc["links"] = [["X" if i == j else "NV18" for j in range(gpus)] for i in range(gpus)]
    return orjson.dumps(doc).decode()


def test_an_oversized_topology_is_refused_by_its_size_then_its_shape() -> None:
    text = _huge_topology(1024)  # 9.5 MB: no apiserver stores an annotation that long (256 KiB in all)
    with pytest.raises(AnnotationError, match=r"more than Kubernetes allows for all of an object's"):
        topology_from_doc(text)
    try:
        topology_from_doc(orjson.loads(text))  # decoded already (toposcale simulate reads files)
    except AnnotationError as exc:
        assert "at gpus: 1024 GPUs, at most 64" in str(exc)
    else:
        raise AssertionError("a 1,024-GPU topology was accepted")
    doc = orjson.loads(_huge_topology(8))
    doc["links"] = [row * 128 for row in doc["links"]] * 128  # 8 GPUs, a 1,024 x 1,024 matrix
    try:
        topology_from_doc(doc)
    except AnnotationError as exc:
        assert "at links: larger than 8 x 8" in str(exc)
    else:
        raise AssertionError("an oversized links matrix was accepted")


async def test_an_oversized_topology_does_not_block_the_extender() -> None:
    bodies = []
    for i in range(2):  # a new text each time: no cache helps (built before: the attacker's CPU is not ours)
        node = gpu_node(f"huge-{i}", None)
        node["metadata"]["annotations"][TOPOLOGY_ANNOTATION] = _huge_topology(1024 - i)
        bodies.append(orjson.dumps(full_args(make_pod("tp4", 4), [node])))
    async with listening(ServerConfig()) as (_ext, url):

        async def attack() -> Any:
            for body in bodies:
                async with aiohttp.ClientSession() as s, s.post(url + "/prioritize", data=body) as r:
                    assert r.status == 200  # answered: the node is neutral, with its reason logged
                    assert (await r.json(content_type=None))[0]["Score"] == NEUTRAL_SCORE

        probes = await probe_during(attack(), lambda: _healthz(url))
    assert probes.sent >= 1 and probes.failed == 0, probes


def _explain_row(ext: Any, node: dict[str, Any]) -> dict[str, Any]:
    from toposcale.extender import wire

    args = wire.parse_args(orjson.dumps(full_args(make_pod("tp4", 4), [node])))
    (row,) = ext.answers.explain(args)["nodes"]
    return row


def test_an_allocation_naming_gpus_the_topology_lacks_is_unknown() -> None:
    # Before (issue 28): the unknown ids held nothing the extender knew of: all 8 GPUs free, score 10.
    from toposcale.extender.server import Extender
    from toposcale.extender.topology.annotations import ALLOCATION_ANNOTATION

    node = gpu_node("hgx", "hgx-h100-nvswitch-8gpu")
    doc = orjson.loads(node["metadata"]["annotations"][ALLOCATION_ANNOTATION])
    doc["allocated"] = [f"GPU-elsewhere-{i}" for i in range(8)]
    node["metadata"]["annotations"][ALLOCATION_ANNOTATION] = orjson.dumps(doc).decode()
    row = _explain_row(Extender(ServerConfig()), node)
    assert row["score"] == NEUTRAL_SCORE and row["outcome"] != "fits", row
    assert "names GPUs the topology lacks" in row["reason"], row


def test_an_allocation_observed_in_the_future_is_unknown() -> None:
    # Before (issue 28): `observed: 9999-12-31T...` never turned stale, defeating --allocation-max-age.
    from toposcale.extender.server import Extender

    ext = Extender(ServerConfig())
    row = _explain_row(ext, gpu_node("hgx", "hgx-h100-nvswitch-8gpu", observed="9999-12-31T23:59:59Z"))
    assert row["score"] == NEUTRAL_SCORE and "in the future" in row["reason"], row
    fresh = _explain_row(ext, gpu_node("hgx", "hgx-h100-nvswitch-8gpu"))
    assert fresh["outcome"] == "fits", fresh


NODES = 400  # enough that reading them on the event loop held it over 1 s (1.7 s measured)


async def test_many_large_valid_topologies_are_read_off_the_event_loop() -> None:
    # Full Node objects with distinct, valid 64-GPU topologies (each within the 256 KiB annotation limit):
    # reading and validating them costs seconds, which a --standalone extender spends in a worker thread.
    bodies = []
    for round_ in range(2):  # new texts each time: no cache helps
        nodes = []
        for i in range(NODES):
            node = gpu_node(f"n{i}", None)
            node["metadata"]["annotations"][TOPOLOGY_ANNOTATION] = _huge_topology(64, salt=f"{round_}-{i}-")
            nodes.append(node)
        bodies.append(orjson.dumps(full_args(make_pod("tp4", 4), nodes)))
    first = orjson.loads(bodies[0])["Nodes"]["items"][0]["metadata"]["annotations"][TOPOLOGY_ANNOTATION]
    assert len(topology_from_doc(first)) == 64  # valid: the whole validation runs for each node
    async with listening(ServerConfig()) as (_ext, url):

        async def attack() -> None:
            for body in bodies:
                async with aiohttp.ClientSession() as s, s.post(url + "/filter", data=body) as r:
                    assert r.status == 200

        probes = await probe_during(attack(), lambda: _healthz(url))
    assert probes.sent >= 2 and probes.failed == 0, probes
