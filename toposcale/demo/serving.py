"""A simple serving model of one vLLM replica (continuous batching, a KV cache that fills with concurrency).

Pure logic, stepped by the demo's clock: requests wait in a FIFO queue, are admitted while the batch has room
(`max_num_seqs`) and the KV cache can hold their prompt, decode at a per-sequence speed that falls as the
batch grows, and are preempted (recomputed later, as vLLM V1 does) when generation outgrows the cache. The
exporter (`vllm_sim`) turns the counters and observations here into vLLM's `/metrics`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ServingParams:
    """Rough figures for Qwen2.5-7B with tensor parallel 4: the demo needs the shape, not exact numbers."""

    max_num_seqs: int = 128  # the batch limit; under load the KV cache fills before it
    kv_capacity_tokens: int = 60_000
    decode_tok_s: float = 50.0  # per sequence at batch size 1
    batch_half_speed: float = 64.0  # batch size at which per-sequence decode speed halves
    prefill_tok_s: float = 8_000.0
    prompt_tokens: tuple[int, int] = (200, 1_200)
    output_tokens: tuple[int, int] = (100, 400)


@dataclass(slots=True)
class Request:
    arrival: float
    prompt: int
    output: int
    admitted: float | None = None
    prefill_left: float = 0.0  # seconds of prefill still to run
    generated: float = 0.0
    first_token: float | None = None

    @property
    def kv_tokens(self) -> float:
        return self.prompt + self.generated


@dataclass(frozen=True, slots=True)
class Finished:
    ttft_s: float
    e2e_s: float
    queue_s: float
    prompt: int
    output: int


@dataclass(slots=True)
class ReplicaModel:
    params: ServingParams = field(default_factory=ServingParams)
    waiting: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    success_total: int = 0
    preemptions_total: int = 0
    busy_s: float = 0.0  # seconds with a non-empty batch, for GPU utilisation
    finished: list[Finished] = field(default_factory=list)  # drained by the exporter

    def new_request(self, rng: random.Random, now: float) -> Request:
        p = self.params
        return Request(
            arrival=now, prompt=rng.randint(*p.prompt_tokens), output=rng.randint(*p.output_tokens)
        )

    def submit(self, req: Request) -> None:
        self.waiting.append(req)

    @property
    def kv_used_tokens(self) -> float:
        return sum(r.kv_tokens for r in self.running)

    @property
    def kv_usage(self) -> float:
        """0..1, what `vllm:kv_cache_usage_perc` reports."""
        return min(1.0, self.kv_used_tokens / self.params.kv_capacity_tokens)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def step(self, now: float, dt: float) -> None:
        """Advance the replica by `dt` simulated seconds ending at `now`."""
        p = self.params
        start = now - dt
        self._admit(start)
        if self.running:
            self.busy_s += dt
        per_seq = p.decode_tok_s / (1.0 + len(self.running) / p.batch_half_speed)
        still: list[Request] = []
        for r in self.running:
            assert r.admitted is not None
            budget = now - max(start, r.admitted)
            if r.prefill_left > 0:
                used = min(budget, r.prefill_left)
                r.prefill_left -= used
                budget -= used
                if r.prefill_left <= 0 and r.first_token is None:
                    r.first_token = now - budget
            step_tokens = min(per_seq * budget, r.output - r.generated)
            r.generated += step_tokens
            self.generation_tokens_total += step_tokens
            if r.generated >= r.output - 1e-9:
                first = r.first_token if r.first_token is not None else now
                self.finished.append(
                    Finished(
                        ttft_s=first - r.arrival,
                        e2e_s=now - r.arrival,
                        queue_s=r.admitted - r.arrival,
                        prompt=r.prompt,
                        output=r.output,
                    )
                )
                self.success_total += 1
            else:
                still.append(r)
        self.running = still
        # Generation grew the cache: preempt the newest sequences until it fits (vLLM's recompute policy).
        while self.running and self.kv_used_tokens > p.kv_capacity_tokens:
            victim = self.running.pop()
            self.preemptions_total += 1
            victim.generated = 0.0
            victim.admitted = None
            self.waiting.appendleft(victim)
        self._admit(now)

    def _admit(self, now: float) -> None:
        p = self.params
        used = self.kv_used_tokens
        while self.waiting and len(self.running) < p.max_num_seqs:
            r = self.waiting[0]
            if used + r.prompt > p.kv_capacity_tokens:
                break
            self.waiting.popleft()
            r.admitted = max(now, r.arrival)
            r.prefill_left = r.prompt / p.prefill_tok_s
            self.prompt_tokens_total += r.prompt
            used += r.prompt
            self.running.append(r)

    def drain_finished(self) -> list[Finished]:
        out, self.finished = self.finished, []
        return out

    def take_waiting(self) -> list[Request]:
        """Requests not yet admitted, handed back when the replica goes (the client retries elsewhere)."""
        out = list(self.waiting)
        self.waiting.clear()
        return out
