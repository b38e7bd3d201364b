"""The watch cache survives malformed objects the apiserver stream may carry (skipped, logged once each) and,
when asked to (the service does), freezes what it cached after a (re)list so full collections skip it."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
from toposcale.extender.state import ClusterState

from lab.objects import gpu_node, make_pod

LOG_LINE = "watched pod skipped"


def bound(name: str, k: int, node: str, **fields: Any) -> dict[str, Any]:
    pod = make_pod(name, k, node=node)
    pod["metadata"]["uid"] = f"uid-{name}"
    pod.update(fields)
    return pod


@pytest.mark.parametrize(
    "fields",
    [
        {"spec": "not-an-object"},
        {"spec": ["a", "list"]},
        {"status": 7},
        {"metadata": "x"},
        {"spec": {"nodeName": ["hgx"], "containers": []}},
        {"spec": {"nodeName": "hgx", "containers": "nope"}},
        {"spec": {"nodeName": "hgx", "containers": [{"resources": {"requests": {"nvidia.com/gpu": "x"}}}]}},
    ],
)
def test_malformed_pods_are_skipped_and_logged_once(
    fields: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "toposcale.extender")
    st = ClusterState("nvidia.com/gpu", allocation_max_age_s=0)
    st.nodes_relisted([gpu_node("hgx", "hgx-h100-nvswitch-8gpu")], "1")
    good = bound("good", 4, "hgx")
    bad = bound("bad", 4, "hgx", **fields)
    st.pods_relisted([good, bad], "1")
    for etype in ("ADDED", "MODIFIED", "MODIFIED", "DELETED"):
        st.pod_event(etype, bad)
    st.pod_event("MODIFIED", "not even an object")  # type: ignore[arg-type]
    assert list(st.pods) == ["uid-good"]  # the good pod is still assumed, the bad one ignored
    assert st.view("hgx").free_mask.bit_count() == 4
    # Once per pod; pods without usable metadata (and the string) share one "?" key: still bounded.
    expected = 1 if "metadata" in fields else 2
    assert sum(r.getMessage() == LOG_LINE for r in caplog.records) == expected


def test_relists_freeze_the_cache_for_the_collector() -> None:
    st = ClusterState("nvidia.com/gpu", freeze_gc=True)
    try:
        st.nodes_relisted([gpu_node("hgx", "hgx-h100-nvswitch-8gpu")], "1")
        assert gc.get_freeze_count() == 0  # not before both caches are listed
        st.pods_relisted([], "1")
        assert gc.get_freeze_count() > 0
        view = st.base["hgx"]
        assert gc.is_tracked(view) and not any(o is view for o in gc.get_objects())  # permanent generation
    finally:
        gc.unfreeze()
