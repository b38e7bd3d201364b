"""The agent overwrites hostile annotation text (deep nesting that once crashed the publish loop, NV0 links,
a naive `observed`) with the truth, against the real kube-apiserver of the session's control plane (the
agent's ServiceAccount token)."""

from __future__ import annotations

import json

import pytest
from toposcale.extender.agent.publish import Publisher
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    allocation_from_doc,
    topology_from_doc,
)

from lab.kube.client import RealKube

from .conftest import X4_UUIDS, node
from .test_publish import _docs

DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("key", [TOPOLOGY_ANNOTATION, ALLOCATION_ANNOTATION])
@pytest.mark.parametrize(
    "corrupt",
    [DEEP, '{"version":1,"allocated":' + DEEP + "}", "[]", "null"],
    ids=["deep", "deep-inside", "list", "null"],
)
async def test_hostile_annotation_text_is_overwritten_with_the_truth(
    kube: RealKube, api, key: str, corrupt: str
) -> None:
    kube.add(node("gpu-1", {key: corrupt}))
    result = await Publisher(api, "gpu-1").publish(_docs([X4_UUIDS[2]]))
    assert result.patched and result.overwritten == (key,)
    ann = kube.get("Node", "gpu-1")["metadata"]["annotations"]
    assert [g.uuid for g in topology_from_doc(ann[TOPOLOGY_ANNOTATION]).gpus] == X4_UUIDS
    assert allocation_from_doc(ann[ALLOCATION_ANNOTATION]).allocated == {X4_UUIDS[2]}


async def test_allocation_with_a_naive_observed_time_is_overwritten(kube: RealKube, api) -> None:
    docs = _docs([])
    naive = dict(docs[ALLOCATION_ANNOTATION], observed="2026-11-26T10:00:00")  # no offset: no instant
    kube.add(node("gpu-1", {ALLOCATION_ANNOTATION: json.dumps(naive)}))
    result = await Publisher(api, "gpu-1").publish(docs)
    assert result.overwritten == (ALLOCATION_ANNOTATION,)
    raw = kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION]
    assert json.loads(raw)["observed"].endswith("Z")
