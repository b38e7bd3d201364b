"""vllm_desired_replicas capped at what the cluster can place (issue 29, section 2): adapter/placement.py with
the extender's /placeable answer stubbed (the endpoint itself: tests/extender/test_placeable.py, against
the real kube-scheduler: tests/scheduler/test_placeable.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from toposcale.adapter.placement import Placement, cap, summary
from toposcale.adapter.selectors import parse_selector

ANSWER = {
    "gpus": 4,
    "requiredScope": "numa",
    "placeable": {"best": 1, "numa": 1, "any": 1},
    "heldBack": {"best": "required-scope", "numa": "required-scope", "any": "required-scope"},
    "nodes": [{"node": "gpu-hgx-7", "any": 1, "numa": 1, "best": 1, "tiers": ["nvlink"]}],
    "pending": {"pods": 0, "placed": 0},
}


def pod(node: str | None = "gpu-1") -> Any:
    return SimpleNamespace(
        spec=SimpleNamespace(node_name=node), metadata=SimpleNamespace(deletion_timestamp=None)
    )


def test_cap_is_ready_plus_starting_plus_placeable_plus_allowance() -> None:
    assert cap(6, 3, 1, 1, 1) == (6, 0)
    assert cap(8, 3, 1, 1, 1) == (6, 2)
    assert cap(8, 3, 1, 1, 0) == (5, 3)
    assert cap(2, 3, 1, 0, 0) == (2, 0)  # never raises an answer, never cuts below what is there
    assert cap(9, 3, 1, 0, 0) == (4, 5)
    # a starting pod still Pending without a slot is no room: at most `allowance` wait, sync after sync
    assert cap(9, 3, 2, 0, 1, unplaced=1) == (5, 4)


def test_the_record_names_the_cap_and_its_reason() -> None:
    text = summary(7, 3, 1, ANSWER, 1, 1)
    assert text == (
        "wanted 7; 3 ready, 1 starting; 1 placeable (node gpu-hgx-7, tier nvlink); allowance 1; 1 held back: "
        "no 4-GPU set meeting required-scope numa free"
    )


class Core:
    def __init__(self, pods: list[Any]) -> None:
        self.pods = pods

    async def list_namespaced_pod(self, namespace: str, **kw: Any) -> Any:
        return SimpleNamespace(items=self.pods)


class Extender:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[Any] = []

    async def post(self, path: str, body: Any) -> Any:
        self.asked.append((path, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def placement(pods: list[Any], answer: Any) -> tuple[Placement, Extender, CollectorRegistry]:
    api = SimpleNamespace(sanitize_for_serialization=lambda p: {"kind": "Pod", "spec": {}})
    reg = CollectorRegistry()
    ext = Extender(answer)
    p = Placement(api, ext, reg)
    p.core = Core(pods)  # type: ignore[assignment]
    return p, ext, reg


async def test_a_cut_is_served_as_unplaceable_replicas_by_reason() -> None:
    p, ext, reg = placement([pod()], ANSWER)
    explain: dict[str, Any] = {"desiredReplicas": 7}
    sel = parse_selector("app=vllm")
    got = await p.cap("vllm_desired_replicas", "llm", sel, 7, 3, 1, 1, explain)
    assert got == 6 and explain["desiredReplicas"] == 6
    assert ext.asked == [("/placeable", {"kind": "Pod", "spec": {}})]
    rec = explain["placement"]
    assert rec["capped"] and rec["heldBack"] == 1 and rec["reason"] == "required-scope"
    text = generate_latest(reg).decode()
    labels = 'metric="vllm_desired_replicas",namespace="llm",reason="required-scope"'
    line = f"toposcale_unplaceable_replicas{{{labels}}}"
    assert f"{line} 1.0" in text
    # demand drops back within what is there: nothing asked, the series back to 0
    assert await p.cap("vllm_desired_replicas", "llm", sel, 4, 3, 1, 1, {}) == 4 and len(ext.asked) == 1
    assert f"{line} 0.0" in generate_latest(reg).decode()
    # the extender failing: no cap, and no series (never a stale or made-up count)
    ext.answer = RuntimeError("extender /placeable: HTTP 503")
    assert await p.cap("vllm_desired_replicas", "llm", sel, 7, 3, 1, 1, {}) == 7
    assert "toposcale_unplaceable_replicas{" not in generate_latest(reg).decode()


async def test_pending_pods_without_a_slot_do_not_cascade() -> None:
    """3 ready, 2 starting of which 1 Pending that the extender could not place: room 3 + 1 + 0 + 1."""
    answer = {**ANSWER, "placeable": {"best": 0, "numa": 0, "any": 0}, "pending": {"pods": 1, "placed": 0}}
    p, _, _ = placement([pod(), pod(None)], answer)
    explain: dict[str, Any] = {}
    assert await p.cap("m", "llm", parse_selector("app=vllm"), 9, 3, 2, 1, explain) == 5
    assert explain["placement"]["unplacedPending"] == 1 and explain["placement"]["heldBack"] == 4


async def test_no_template_or_a_failing_extender_caps_nothing() -> None:
    sel = parse_selector("app=vllm")
    p, _, _ = placement([], ANSWER)
    explain: dict[str, Any] = {}
    assert await p.cap("m", "llm", sel, 3, 0, 0, 1, explain) == 3
    assert explain["placement"]["capped"] is False and "scale from zero" in explain["placement"]["error"]
    p, _, _ = placement([pod()], RuntimeError("extender /placeable: HTTP 503: not synced"))
    explain = {}
    assert await p.cap("m", "llm", sel, 9, 2, 0, 1, explain) == 9
    assert "HTTP 503" in explain["placement"]["error"]
