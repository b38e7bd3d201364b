"""The serving model of one vLLM replica reproduces its profile's own points and vLLM's scheduling rules."""

from __future__ import annotations

import pytest

from toposcale.serving.model import ReplicaModel, Request
from toposcale.serving.profile import load_profile

P = load_profile("h100-tp1")


def run(m: ReplicaModel, until: float, dt: float = 0.5) -> list:
    out, t = [], 0.0
    while t < until:
        t += dt
        m.step(t, dt)
        out += m.drain_finished()
    return out


def test_one_request_takes_the_profiles_prefill_and_decode_times() -> None:
    m = ReplicaModel(P)
    m.submit(Request(arrival=0.2, prompt=1024, output=101))
    [f] = run(m, 5.0)
    assert f.ttft_s == pytest.approx(P.prefill_time(1024), rel=1e-6)
    # one sequence decodes at the batch-1 step time of its context
    assert f.tpot_s == pytest.approx(P.decode_time(1, 1024 + 50), rel=0.05)
    assert m.prompt_tokens_total == pytest.approx(1024)
    assert m.generation_tokens_total == pytest.approx(101, abs=1e-6)


def test_a_full_batch_decodes_at_the_profiles_batch_step() -> None:
    m = ReplicaModel(P)
    for _ in range(64):
        m.submit(Request(arrival=0.0, prompt=128, output=400))
    fins = run(m, 30.0)
    assert len(fins) == 64
    tpot = sorted(f.tpot_s for f in fins)[32]
    assert tpot == pytest.approx(P.decode_time(64, 128 + 200), rel=0.1)


def test_long_prompts_are_chunked_and_block_the_queue_behind_them() -> None:
    m = ReplicaModel(P)
    m.submit(Request(arrival=0.0, prompt=40_000, output=2))
    m.submit(Request(arrival=0.0, prompt=100, output=2))
    a, b = sorted(run(m, 10.0), key=lambda f: f.prompt, reverse=True)
    assert a.ttft_s > 5 * P.chunk_time(8192, 0)  # five chunks and more
    assert b.ttft_s >= a.ttft_s  # FCFS: behind the long one


def test_admission_respects_max_num_seqs_and_the_kv_cache() -> None:
    m = ReplicaModel(P)
    for _ in range(P.max_num_seqs + 10):
        m.submit(Request(arrival=0.0, prompt=10, output=10_000))
    m.step(0.5, 0.5)
    assert m.num_running == P.max_num_seqs and len(m.waiting) == 10
    big = ReplicaModel(P)
    half = P.kv_capacity_tokens // 2 + 1
    big.submit(Request(arrival=0.0, prompt=half, output=1))
    big.submit(Request(arrival=0.0, prompt=half, output=1))
    big.step(0.5, 0.5)
    assert big.num_running == 1 and len(big.waiting) == 1  # the second prompt does not fit beside the first


def test_generation_outgrowing_the_cache_preempts_the_newest() -> None:
    m = ReplicaModel(P)
    n = 8
    each = P.kv_capacity_tokens // n - 50
    for _ in range(n):
        m.submit(Request(arrival=0.0, prompt=each, output=2000))
    run(m, 120.0, dt=1.0)
    assert m.preemptions_total > 0
    assert m.kv_used_tokens <= P.kv_capacity_tokens + n  # never past the cache by more than a token each


def test_busy_share_is_what_dcgm_would_show() -> None:
    m = ReplicaModel(P)
    m.submit(Request(arrival=0.0, prompt=100, output=50))
    run(m, 10.0)
    busy = P.prefill_time(100) + 49 * P.decode_time(1, 125)
    assert m.busy_s == pytest.approx(busy, rel=0.1)
