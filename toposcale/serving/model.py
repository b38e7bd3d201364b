"""The serving model of one vLLM replica, stepped in small time slices (pure).

As vLLM V1 schedules: requests wait FIFO and are admitted while the batch has room (`max_num_seqs`) and the KV
cache can hold their prompt; every engine step decodes one token for each running sequence and prefills up
to `max_num_batched_tokens - batch` prompt tokens (chunked prefill, oldest first); a step costs the profile's
decode time plus its chunk time minus one shared weights pass (`Profile.step_time`). When generation outgrows
the KV cache the newest sequence is preempted (vLLM's recompute: it goes back to the head of the queue and
later re-prefills its prompt and what it had generated).

Within one `step(now, dt)` the step time is held fixed (the batch of the slice's start); the prefill queue is
walked with a time cursor, so a first token lands at its exact time inside the slice, not at its end. Decode
progress is one shared counter (tokens per running sequence since the replica started); each sequence keeps
the counter value it joined at, and a heap orders the finishing points, so a slice costs O(prefilling +
finishing) requests, not O(batch). That is what lets the autoscaling benchmark replay hours of traffic over
many replicas in seconds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from .profile import Profile


@dataclass(slots=True, eq=False)
class Request:
    arrival: float
    prompt: int
    output: int
    rid: int = 0
    admitted: float | None = None
    prefill_left: float = 0.0  # prompt tokens (plus recomputed generated ones) still to prefill
    first_token: float | None = None
    generated: float = 0.0  # tokens generated before the current decode stint (kept across preemption)
    d0: float = 0.0  # the replica's decode counter when the current stint began
    live: bool = False  # in the decode heap now (preemption leaves a stale heap entry)
    join_t: float = -1.0  # when the current decode stint began
    preempted: int = 0

    @property
    def kv_tokens_at_admission(self) -> int:
        return self.prompt + int(self.generated)


@dataclass(frozen=True, slots=True)
class Finished:
    arrival: float
    ttft_s: float
    e2e_s: float
    queue_s: float
    tpot_s: float  # mean time per output token after the first (0 for one-token outputs)
    prompt: int
    output: int
    rid: int = 0


_ids = itertools.count()


@dataclass(slots=True)
class ReplicaModel:
    profile: Profile
    waiting: deque[Request] = field(default_factory=deque)
    prefilling: deque[Request] = field(default_factory=deque)  # admitted, prompt not done (oldest first)
    decoding: dict[int, Request] = field(
        default_factory=dict
    )  # by rid, in join order: the newest is preempted
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    success_total: int = 0
    preemptions_total: int = 0
    busy_s: float = 0.0  # seconds with work on the GPU: DCGM's GPU_UTIL is this share of a sample period
    finished: list[Finished] = field(default_factory=list)  # drained by the exporter or the simulator
    waiting_prompt_tokens: float = 0.0
    _heap: list[tuple[float, int, Request]] = field(default_factory=list)
    _d: float = 0.0  # decode counter: tokens per running sequence since start
    _n_dec: int = 0
    _sum_d0: float = 0.0  # sum over decoding of (d0 - generated): kv of decoders is computed from it
    _prompt_dec: float = 0.0  # sum of prompts of the decoding sequences
    _kv_prefill: float = 0.0  # KV reserved by admitted, still-prefilling requests

    # ---- what vLLM reports --------------------------------------------------------------------------------
    @property
    def running(self) -> list[Request]:
        """Requests in the batch (prefilling or decoding): `vllm:num_requests_running`."""
        return [*self.prefilling, *self.decoding.values()]

    @property
    def num_running(self) -> int:
        return len(self.prefilling) + self._n_dec

    @property
    def kv_used_tokens(self) -> float:
        # a decoding sequence holds prompt + generated tokens; generated = (d - d0) + generated_before
        dec = self._prompt_dec + self._n_dec * self._d - self._sum_d0
        return self._kv_prefill + dec

    @property
    def kv_usage(self) -> float:
        """0..1, what `vllm:kv_cache_usage_perc` reports."""
        return min(1.0, self.kv_used_tokens / self.profile.kv_capacity_tokens)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.prefilling and not self._n_dec

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.prefilling) + self._n_dec

    # ---- traffic in and out -------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        if not req.rid:
            req.rid = next(_ids) + 1
        self.waiting.append(req)
        self.waiting_prompt_tokens += req.prompt

    def take_waiting(self) -> list[Request]:
        """Requests not yet admitted, handed back when the replica goes (the client retries elsewhere)."""
        out = list(self.waiting)
        self.waiting.clear()
        self.waiting_prompt_tokens = 0.0
        return out

    def drain_finished(self) -> list[Finished]:
        out, self.finished = self.finished, []
        return out

    def abort_all(self) -> list[Request]:
        """Everything still here, as the pod is killed at the end of its grace period."""
        out = [*self.waiting, *self.prefilling, *self.decoding.values()]
        self.waiting.clear()
        self.prefilling.clear()
        self.decoding.clear()
        self._heap.clear()
        self._n_dec, self._sum_d0, self._prompt_dec, self._kv_prefill = 0, 0.0, 0.0, 0.0
        self.waiting_prompt_tokens = 0.0
        return out

    # ---- the engine ---------------------------------------------------------------------------------------
    def _admit(self, until: float, at: float) -> None:
        """Admit requests that arrived by `until`; one that waited is admitted at `at` (a slice boundary)."""
        p = self.profile
        cap = p.kv_capacity_tokens
        used = self.kv_used_tokens
        while self.waiting and self.num_running < p.max_num_seqs:
            r = self.waiting[0]
            if r.arrival > until:
                break
            need = r.kv_tokens_at_admission
            if used + need > cap and self.num_running > 0:
                break
            self.waiting.popleft()
            self.waiting_prompt_tokens -= r.prompt
            r.admitted = max(r.arrival, at) if r.admitted is None else r.admitted
            r.prefill_left = float(need)
            self._kv_prefill += need
            used += need
            self.prefilling.append(r)

    def _join_decode(self, r: Request, at_d: float) -> None:
        """`r` produced its first token (or re-prefilled) and decodes from counter value `at_d` on."""
        r.d0 = at_d
        r.live = True
        self._n_dec += 1
        self._sum_d0 += r.d0 - r.generated
        self._prompt_dec += r.prompt
        self.decoding[r.rid] = r
        # finishes when generated + (d - d0) >= output
        heapq.heappush(self._heap, (r.d0 + r.output - r.generated, r.rid, r))

    def _leave_decode(self, r: Request) -> None:
        r.live = False
        self._n_dec -= 1
        self._sum_d0 -= r.d0 - r.generated
        self._prompt_dec -= r.prompt

    def step(self, now: float, dt: float) -> None:
        """Advance the replica by `dt` simulated seconds ending at `now`."""
        if dt <= 0:
            return
        p = self.profile
        start = now - dt
        self._admit(now, start)
        if self.idle:
            return
        b = self._n_dec
        ctx = (self.kv_used_tokens - self._kv_prefill) / b if b else 0.0
        s_dec = p.decode_time(b, ctx) if b else 0.0
        d_start = self._d
        # Prefill: FIFO with a time cursor, at the chunk rate of a mixed step.
        prefill_busy = 0.0
        first_begin: float | None = None
        joined: list[tuple[Request, float]] = []
        if self.prefilling:
            pending = sum(r.prefill_left for r in self.prefilling)
            chunk = max(1.0, min(p.max_num_batched_tokens - b, pending))
            head = self.prefilling[0]
            prior = max(0.0, head.kv_tokens_at_admission - head.prefill_left)
            s_mix = p.step_time(b, ctx, chunk, prior)
            rate = chunk / s_mix
            cursor = start
            while self.prefilling:
                r = self.prefilling[0]
                begin = max(cursor, r.admitted if r.admitted is not None else start)
                if begin >= now:
                    break
                if first_begin is None:
                    first_begin = begin
                need = r.prefill_left / rate
                if begin + need <= now:
                    self.prompt_tokens_total += r.prefill_left if r.first_token is None else 0.0
                    self.prefilling.popleft()
                    self._kv_prefill -= r.kv_tokens_at_admission
                    r.prefill_left = 0.0
                    done = begin + need
                    prefill_busy += need
                    cursor = done
                    if r.first_token is None:
                        r.first_token = done
                        r.generated = 1.0  # the prefill step samples the first token
                    joined.append((r, done))
                else:
                    used = (now - begin) * rate
                    if r.first_token is None:
                        self.prompt_tokens_total += used
                    r.prefill_left -= used
                    prefill_busy += now - begin
                    cursor = now
                    break
            # decode progress of those already decoding: slower while prefill chunks ride along
            tokens = prefill_busy / s_mix + (dt - prefill_busy) / s_dec if b else 0.0
        else:
            tokens = dt / s_dec if b else 0.0
        self._d = d_start + tokens
        began = start if b else first_begin
        self.generation_tokens_total += b * tokens
        # Sequences that finished their prompt in this slice decode for the rest of it at the plain speed.
        step_after = s_dec if s_dec else p.decode_time(1, 1)
        for r, done in joined:
            made = (now - done) / step_after
            r.join_t = done
            self._join_decode(r, self._d - made)
            self.generation_tokens_total += 1 + made
        last = self._finish(now, start, d_start, step_after)
        self._preempt_if_full()
        # DCGM's GPU_UTIL: the GPU is busy from the slice's first work until its last (all of it if work is
        # left; a prefilled sequence decodes right after its prefill)
        if began is not None:
            self.busy_s += (now if not self.idle or last is None else max(last, began)) - began
        self._admit(now, now)

    def _finish(self, now: float, start: float, d_start: float, step_after: float) -> float | None:
        """Sequences done by now leave; returns the last finish time in the slice (None if none)."""
        last: float | None = None
        heap = self._heap
        d_end = self._d
        span = d_end - d_start
        while heap and heap[0][0] <= d_end + 1e-9:
            key, _, r = heapq.heappop(heap)
            if not r.live or key != r.d0 + r.output - r.generated:
                continue  # stale entry of a preempted stint
            self._leave_decode(r)
            del self.decoding[r.rid]
            overshoot = d_end - key
            self.generation_tokens_total -= max(0.0, overshoot)
            if r.join_t > start:  # joined in this slice: decoding at `step_after` since its join
                t = r.join_t + (key - r.d0) * step_after
            elif span > 0 and key >= d_start:
                t = start + (now - start) * (key - d_start) / span
            else:
                t = now
            assert r.first_token is not None and r.admitted is not None
            t = max(t, r.first_token)
            out = max(r.output, 1)
            self.finished.append(
                Finished(
                    arrival=r.arrival,
                    ttft_s=r.first_token - r.arrival,
                    e2e_s=t - r.arrival,
                    queue_s=r.admitted - r.arrival,
                    tpot_s=(t - r.first_token) / (out - 1) if out > 1 else 0.0,
                    prompt=r.prompt,
                    output=r.output,
                    rid=r.rid,
                )
            )
            self.success_total += 1
            last = t if last is None else max(last, t)
        return last

    def _preempt_if_full(self) -> None:
        cap = self.profile.kv_capacity_tokens
        while self._n_dec > 1 and self.kv_used_tokens > cap:
            victim = self.decoding.pop(next(reversed(self.decoding)))
            self._leave_decode(victim)
            victim.generated += self._d - victim.d0
            victim.preempted += 1
            self.preemptions_total += 1
            self.waiting.appendleft(victim)
            self.waiting_prompt_tokens += victim.prompt
