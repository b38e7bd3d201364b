"""Scale-down victim ranking (issue 29, section 3): pure logic of adapter/victims.py. The real ReplicaSet
controller deleting the pod the annotations name is tests/cluster/test_victims.py."""

from __future__ import annotations

import pytest
from toposcale.adapter.victims import (
    COST_STEP,
    RateLimit,
    Replica,
    costs,
    load_bucket,
    patches,
    ranking,
)
from toposcale.adapter.victims_keeper import Target


def test_fewest_requests_in_flight_go_first_in_buckets() -> None:
    assert [load_bucket(x) for x in (0, 0.5, 1, 2, 3, 4, 7, 8)] == [0, 0, 1, 2, 2, 3, 3, 4]
    rs = [Replica("busy", 12), Replica("idle", 0), Replica("few", 2)]
    assert ranking(rs) == ["idle", "few", "busy"]
    # 2 and 3 requests are the same bucket: jitter does not reshuffle (each reshuffle is API writes)
    assert ranking([Replica("a", 3), Replica("b", 2)]) == ["a", "b"]


def test_unknown_load_is_never_chosen_for_looking_idle() -> None:
    assert ranking([Replica("unread", None), Replica("busy", 500)]) == ["busy", "unread"]


def test_the_defragmentation_term_decides_between_equally_loaded_pods() -> None:
    rs = [Replica("strands", 0, 0.0), Replica("completes-nvswitch", 0, 1.9), Replica("pairs", 0, 1.275)]
    assert ranking(rs) == ["completes-nvswitch", "pairs", "strands"]
    # load first: a busy pod on the best node is not the victim
    rs.append(Replica("busy-best", 40, 3.0))
    assert ranking(rs)[-1] == "busy-best"
    # unknown gain counts as nothing given back; gains within a step are equal (name decides)
    assert ranking([Replica("b", 0, None), Replica("a", 0, 0.01)]) == ["a", "b"]
    assert ranking([Replica("b", 0, 1.0), Replica("a", 0, 1.01)]) == ["a", "b"]


def test_costs_follow_the_ranking_and_only_changed_pods_are_patched() -> None:
    rs = [Replica("x", 5), Replica("y", 0), Replica("z", 1)]
    wanted = costs(rs)
    assert wanted == {"y": COST_STEP, "z": 2 * COST_STEP, "x": 3 * COST_STEP}
    assert patches(wanted, {"x": None, "y": None, "z": None}) == [("y", 100), ("z", 200), ("x", 300)]
    assert patches(wanted, {"x": "300", "y": "100", "z": "200"}) == []  # ranking unchanged: no write
    assert patches(wanted, {"x": "100", "y": "300", "z": "200"}) == [("y", 100), ("x", 300)]


def test_rate_limit_is_a_token_bucket() -> None:
    lim = RateLimit(per_minute=6, burst=2, now=0.0)
    assert [lim.take(0.0) for _ in range(3)] == [True, True, False]
    assert lim.take(5.0) is False and lim.take(10.0) is True  # one token per 10 s
    with pytest.raises(ValueError):
        RateLimit(0, 1, 0.0)


def test_target_flag_is_namespace_slash_selector() -> None:
    t = Target.parse("llm/app=vllm-qwen")
    assert t.namespace == "llm" and str(t.selector) == "app=vllm-qwen"
    for bad in ("app=vllm", "/app=vllm", "llm/", "llm/ "):
        with pytest.raises(ValueError, match=r"NAMESPACE/SELECTOR|empty selector"):
            Target.parse(bad)
