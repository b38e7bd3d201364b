"""Publishing the annotations on the Node through kubernetes-asyncio, against the real kube-apiserver of the
session's control plane, with the agent's own ServiceAccount token (deploy/agent's RBAC decides)."""

from __future__ import annotations

import json
import logging

import pytest
from toposcale.extender.agent.discovery import discover
from toposcale.extender.agent.observe import Observation, documents, observe_allocation
from toposcale.extender.agent.podresources.client import Snapshot
from toposcale.extender.agent.publish import Publisher, PublishError
from toposcale.extender.agent.replay import ReplayBackend
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    allocation_from_doc,
    topology_from_doc,
)

from lab.kube.client import RealKube

from .conftest import X4_UUIDS, load_x4, node


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _docs(allocated: list[str] | None) -> dict:
    found = discover(ReplayBackend(load_x4()))
    obs = Observation(found.topology, found.unhealthy, "capture")
    snap = Snapshot(error="no kubelet") if allocated is None else Snapshot(allocated=frozenset(allocated))
    return documents(obs, observe_allocation(obs, snap))


def _patches(kube: RealKube, name: str) -> list:
    """The agent's PATCHes of Node `name` since the test began, from the real API server's audit log."""
    return [
        e for e in kube.cluster.audit_events()[kube.audit_start:]  # type: ignore[attr-defined]
        if e["verb"] == "patch" and (e.get("objectRef") or {}).get("resource") == "nodes"
        and e["objectRef"].get("name") == name and e["user"]["username"].endswith(":toposcale-agent")
    ]


async def test_first_publish_writes_both_annotations_the_extender_can_read(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    pub = Publisher(api, "gpu-1")
    result = await pub.publish(_docs([X4_UUIDS[0]]))
    assert result.patched and result.reason == "changed"
    ann = kube.get("Node", "gpu-1")["metadata"]["annotations"]
    topo = topology_from_doc(ann[TOPOLOGY_ANNOTATION])
    assert [g.id for g in topo.gpus] == X4_UUIDS and topo.links[0][3] == "NV18"
    assert allocation_from_doc(ann[ALLOCATION_ANNOTATION]).allocated == {X4_UUIDS[0]}
    (patch,) = _patches(kube, "gpu-1")
    assert patch["responseStatus"]["code"] == 200


async def test_unchanged_content_is_not_patched_again(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    clock = Clock()
    pub = Publisher(api, "gpu-1", min_interval=10, refresh_interval=300, clock=clock)
    await pub.publish(_docs([X4_UUIDS[0]]))
    clock.t += 60
    result = await pub.publish(_docs([X4_UUIDS[0]]))  # only `observed` differs
    assert not result.patched and result.reason == "unchanged"
    assert len(_patches(kube, "gpu-1")) == 1


async def test_changes_wait_for_the_minimum_interval(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    clock = Clock()
    pub = Publisher(api, "gpu-1", min_interval=10, clock=clock)
    await pub.publish(_docs([]))
    clock.t += 2
    deferred = await pub.publish(_docs([X4_UUIDS[1]]))
    assert not deferred.patched and deferred.reason == "deferred"
    clock.t += 10
    sent = await pub.publish(_docs([X4_UUIDS[1]]))
    assert sent.patched and sent.reason == "changed"
    alloc = allocation_from_doc(kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION])
    assert alloc.allocated == {X4_UUIDS[1]}


async def test_unchanged_content_is_refreshed_so_observed_stays_recent(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    clock = Clock()
    pub = Publisher(api, "gpu-1", min_interval=10, refresh_interval=300, clock=clock)
    await pub.publish(_docs([]))
    clock.t += 301
    result = await pub.publish(_docs([]))
    assert result.patched and result.reason == "refresh"


@pytest.mark.parametrize(
    "corrupt",
    [
        "{not json",
        json.dumps(
            {
                "version": 1,
                "resource": "nvidia.com/gpu",
                "gpus": [{"id": "GPU0", "index": 0}],
                "links": [["NV99x"]],
            }
        ),
        json.dumps({"version": 2}),
    ],
)
async def test_corrupt_annotation_is_overwritten_with_the_truth_and_logged(
    kube: RealKube, api, caplog, corrupt: str
) -> None:
    kube.add(node("gpu-1", {TOPOLOGY_ANNOTATION: corrupt, "other.io/keep": "yes"}))
    pub = Publisher(api, "gpu-1")
    with caplog.at_level(logging.WARNING):
        result = await pub.publish(_docs([]))
    assert result.patched and result.overwritten == (TOPOLOGY_ANNOTATION,)
    ann = kube.get("Node", "gpu-1")["metadata"]["annotations"]
    assert [g.uuid for g in topology_from_doc(ann[TOPOLOGY_ANNOTATION]).gpus] == X4_UUIDS
    assert ann["other.io/keep"] == "yes"  # a merge patch leaves other annotations alone
    assert any(
        "overwriting" in r.getMessage() and r.annotation == TOPOLOGY_ANNOTATION for r in caplog.records
    )


async def test_hand_edited_but_valid_annotation_is_put_back(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    clock = Clock()
    pub = Publisher(api, "gpu-1", min_interval=10, clock=clock)
    docs = _docs([])
    await pub.publish(docs)
    # someone "helpfully" marks every GPU allocated by hand
    edited = dict(docs[ALLOCATION_ANNOTATION], allocated=X4_UUIDS)
    obj = kube.get("Node", "gpu-1")
    obj["metadata"]["annotations"][ALLOCATION_ANNOTATION] = json.dumps(edited)
    kube.add(obj)
    clock.t += 30
    result = await pub.publish(_docs([]))
    assert result.patched and result.reason == "changed"
    alloc = allocation_from_doc(kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION])
    assert alloc.allocated == frozenset()


async def test_unknown_allocation_is_published_as_null(kube: RealKube, api) -> None:
    kube.add(node("gpu-1"))
    await Publisher(api, "gpu-1").publish(_docs(None))
    raw = kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION]
    assert json.loads(raw)["allocated"] is None


async def test_missing_node_is_a_publish_error(kube: RealKube, api) -> None:
    with pytest.raises(PublishError, match="404"):
        await Publisher(api, "no-such-node").publish(_docs([]))
