"""toposcale's desired-replicas algorithm (pure): demand in tokens, forecast, backlog, hysteresis, zero."""

from __future__ import annotations

import pytest

from toposcale.autoscale.desired import (
    SCALE_DOWN_HOLD_WINDOWS,
    SCALE_DOWN_MARGIN,
    STEADY_S,
    Capacity,
    DesiredConfig,
    DesiredError,
    DesiredState,
    Observation,
    decide,
)
from toposcale.serving.profile import load_profile

CAP = Capacity(prompt_tokens_s=10_000, generation_tokens_s=5_000)
CFG = DesiredConfig(prior=CAP, cold_start_s=90, scale_down_window_s=300, learn=False)


def obs(t: float, prompt: float, gen: float = 0.0, **kw: float) -> Observation:
    return Observation(
        t=t,
        ready_replicas=kw.pop("ready", 2),
        prompt_tokens_rate=prompt,
        generation_tokens_rate=gen,
        mean_prompt_tokens=kw.pop("mean_prompt", 1000),
        **kw,
    )


def test_demand_counts_tokens_of_both_phases() -> None:
    d = decide(CFG, DesiredState(), obs(0, prompt=16_000, gen=4_000))
    assert d.demand == pytest.approx(1.6 + 0.8)
    assert d.replicas == 3  # ceil(2.4 / 0.8)


def test_long_prompt_backlog_scales_where_a_request_count_would_not() -> None:
    """Four waiting 12k-token prompts are a backlog; four 100-token ones are not."""
    few_long = decide(CFG, DesiredState(), obs(0, prompt=7_000, waiting_requests=40, mean_prompt=12_000))
    few_short = decide(CFG, DesiredState(), obs(0, prompt=7_000, waiting_requests=40, mean_prompt=100))
    assert few_long.replicas > few_short.replicas
    assert few_long.backlog > 0.1 > few_short.backlog


def test_rising_demand_is_met_a_cold_start_ahead() -> None:
    st, last = DesiredState(), None
    for i in range(8):
        last = decide(CFG, st, obs(15 * i, prompt=8_000 + 1_000 * i))
    assert last is not None and last.forecast > last.demand
    assert last.replicas > decide(CFG, DesiredState(), obs(0, prompt=15_000)).replicas


def test_scale_down_waits_for_the_window() -> None:
    st = DesiredState()
    assert decide(CFG, st, obs(0, prompt=30_000)).replicas == 4
    for t in range(15, 300, 15):
        assert decide(CFG, st, obs(t, prompt=5_000)).replicas == 4  # still inside the window
    assert decide(CFG, st, obs(315, prompt=5_000)).replicas < 4


def _down_after_window(**latency: float) -> list[int]:
    """4 replicas Ready, demand for 1 after the first sync: the answers until 30 minutes in."""
    st = DesiredState()
    out = [decide(CFG, st, obs(0, prompt=30_000, ready=4)).replicas]
    for t in range(15, 1800, 15):
        out.append(decide(CFG, st, obs(t, prompt=5_000, ready=out[-1], **latency)).replicas)
    return out


def test_no_scale_down_while_a_p90_is_past_half_its_target() -> None:
    """The token rates say 1 replica; a TTFT (or TPOT) p90 past half its target says the replicas there are
    near the cliff: the count holds (after the window, for at most two more windows), then falls."""
    near_ttft = SCALE_DOWN_MARGIN * CFG.ttft_slo_s * 1.1
    for latency in ({"ttft_p90_s": near_ttft}, {"tpot_p90_s": SCALE_DOWN_MARGIN * CFG.tpot_slo_s * 1.1}):
        held = _down_after_window(**latency)
        window, hold = 300 // 15, SCALE_DOWN_HOLD_WINDOWS * 300 // 15
        assert held[: window + hold] == [4] * (window + hold)  # the window, then the hold
        assert held[-1] < 4  # the hold expired: a p90 high at any count does not pin it
    calm = _down_after_window(ttft_p90_s=SCALE_DOWN_MARGIN * CFG.ttft_slo_s * 0.9, tpot_p90_s=0.01)
    assert calm[window + 1] < 4  # within the margin: down right after the window, as before


def test_zero_replicas_needs_a_front_door_series() -> None:
    with pytest.raises(DesiredError, match="front-door"):
        decide(CFG, DesiredState(), Observation(t=0, ready_replicas=0))
    assert decide(CFG, DesiredState(), Observation(t=0, ready_replicas=0, front_door_pending=0)).replicas == 0
    assert decide(CFG, DesiredState(), Observation(t=0, ready_replicas=0, front_door_pending=3)).replicas >= 1


def test_bad_inputs_are_errors_not_zero() -> None:
    with pytest.raises(DesiredError):
        decide(CFG, DesiredState(), obs(0, prompt=float("nan")))
    with pytest.raises(DesiredError, match="mean prompt"):
        decide(CFG, DesiredState(), Observation(t=0, ready_replicas=1, waiting_requests=3))


def test_missed_targets_at_low_load_lower_the_learned_capacity() -> None:
    cfg = DesiredConfig(prior=CAP, learn=True)
    st = DesiredState()
    for t in range(0, 300, 15):
        decide(cfg, st, obs(t, prompt=8_000, waiting_requests=5, ttft_p90_s=5.0, tpot_p90_s=0.05))
    assert st.kappa < 0.9


def test_placeable_caps_the_answer() -> None:
    d = decide(CFG, DesiredState(), obs(0, prompt=60_000, placeable_replicas=1))
    assert d.replicas == 3 and any("placed" in r for r in d.reasons)


def test_prior_from_profiles() -> None:
    for name in ("h100-tp1", "rtx4090d-tp4"):
        c = Capacity.from_profile(load_profile(name), tpot_slo_s=0.1)
        assert c.prompt_tokens_s > 1_000 and c.generation_tokens_s > 1_000


def test_idle_replicas_go_to_zero_after_the_window_and_busy_ones_never() -> None:
    # The HPA scales to zero (minReplicas 0) only on a 0: ready replicas with no work for a whole window
    # must give it; any request running or waiting keeps one.
    st = DesiredState()
    assert decide(CFG, st, obs(0, prompt=5_000)).replicas == 1
    for t in range(15, 300, 15):
        assert decide(CFG, st, obs(t, prompt=0)).replicas == 1  # inside the window
    assert decide(CFG, st, obs(315, prompt=0)).replicas == 0
    assert decide(CFG, DesiredState(), obs(0, prompt=0, running_requests=1)).replicas == 1
    assert decide(CFG, DesiredState(), obs(0, prompt=0, waiting_requests=1)).replicas == 1


def steady_state(cfg: DesiredConfig) -> DesiredState:
    """A state whose replicas have served, none starting, for STEADY_S (capacity is judged from then on)."""
    st = DesiredState()
    decide(cfg, st, obs(-STEADY_S, prompt=5_000))
    return st


def test_a_miss_cuts_capacity_by_its_size_and_met_targets_bring_it_back() -> None:
    cfg = DesiredConfig(prior=CAP, learn=True)
    st = steady_state(cfg)
    decide(cfg, st, obs(0, prompt=5_000, ttft_p90_s=3.0, tpot_p90_s=0.05))  # 1.5x the TTFT target
    assert st.kappa == pytest.approx(1 / 1.5)
    decide(cfg, st, obs(15, prompt=5_000, ttft_p90_s=20.0, tpot_p90_s=0.05))  # 10x: at most halved
    assert st.kappa == pytest.approx(1 / 1.5 / 2)
    low = st.kappa
    for t in range(30, 30 + 15 * 200, 15):
        decide(cfg, st, obs(t, prompt=2_000, ttft_p90_s=0.5, tpot_p90_s=0.05))
    assert low < st.kappa <= 1.0  # back toward the prior, never above it on met targets alone


def test_a_miss_while_replicas_start_is_not_taken_for_lack_of_capacity() -> None:
    """A burst served by too few replicas while more start misses its targets: that is the cold start's
    doing. Capacity is judged again only once no replica has started or joined for STEADY_S."""
    cfg = DesiredConfig(prior=CAP, learn=True)
    st = steady_state(cfg)
    missed = {"ttft_p90_s": 6.0, "tpot_p90_s": 0.05}
    decide(cfg, st, obs(0, prompt=5_000, starting_replicas=2, **missed))
    assert st.kappa == 1.0
    decide(
        cfg, st, obs(15, prompt=5_000, ready=4, **missed)
    )  # they joined: the histograms still hold the burst
    decide(cfg, st, obs(15 + STEADY_S - 15, prompt=5_000, ready=4, **missed))
    assert st.kappa == 1.0
    decide(
        cfg, st, obs(15 + STEADY_S, prompt=5_000, ready=4, **missed)
    )  # steady, still missing: a real limit
    assert st.kappa == pytest.approx(0.5)


def test_a_fresh_state_judges_capacity_without_waiting_for_a_change() -> None:
    """An adapter that just started (or a selector first asked) has seen no replica come or go: a miss with
    none starting is a capacity limit at once, as it would be an hour in; with one starting it waits."""
    cfg = DesiredConfig(prior=CAP, learn=True)
    missed = {"ttft_p90_s": 6.0, "tpot_p90_s": 0.05}
    st = DesiredState()
    decide(cfg, st, obs(0, prompt=5_000, ready=2, **missed))
    assert st.kappa == pytest.approx(0.5)
    st = DesiredState()
    decide(cfg, st, obs(0, prompt=5_000, ready=2, starting_replicas=1, **missed))
    decide(cfg, st, obs(15, prompt=5_000, ready=3, **missed))
    assert st.kappa == 1.0  # the cold start's miss, not the replicas'


def test_a_p99_when_given_is_what_counts() -> None:
    cfg = DesiredConfig(prior=CAP, learn=True)
    st = steady_state(cfg)
    decide(cfg, st, obs(0, prompt=5_000, ttft_p90_s=1.0, ttft_p99_s=4.0, tpot_p90_s=0.05))
    assert st.kappa == pytest.approx(0.5)
