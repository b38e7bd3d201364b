"""The event loop: one policy, one fleet, one list of pods, from the first arrival to the last.

Nodes are kept in buckets keyed by (wiring, free-GPU mask): identical boxes in the same state score the
same, so a decision scores each bucket once (memoized) rather than each node, and picks uniformly among the
nodes of the best buckets. On each placement the node's device plugin picks the GPUs: one of the sets the
extender's prediction of go-gpuallocator's best-effort policy says it may hand out, at random (the plugin's
own tie-break is Go map order). A pod that fits nowhere waits, FIFO per size, and is retried on the node that
a departure frees (the only node whose free GPUs grew since it last failed). The run stops at the last
arrival; pods still waiting then are "pending". Pure computation, deterministic for a seed.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Callable

from toposcale.extender.topology.model import Topology

from .extender_api import set_tier
from .fleet import Fleet
from .metrics import STRANDED_UNIT, PolicyResult, Sample
from .policies import Policy
from .tiers import best_tier, cross_socket
from .workload import PodSpec

# (topology, free mask, k) -> every GPU set (mask) the device plugin may hand out; it picks one of them
# depending on Go map order, so the replay picks one uniformly with its seeded generator.
AllocateFn = Callable[[Topology, int, int], tuple[int, ...]]
ProgressFn = Callable[[int, int], None]  # (pods done, pods total)
SAMPLES = 240  # points of the over-time series


class _Bucket:
    """Nodes of one (type, free mask): O(1) add, remove and pick-by-position."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.pos: dict[int, int] = {}

    def add(self, node: int) -> None:
        self.pos[node] = len(self.items)
        self.items.append(node)

    def remove(self, node: int) -> None:
        i = self.pos.pop(node)
        last = self.items.pop()
        if last != node:
            self.items[i] = last
            self.pos[last] = i


def replay(
    fleet: Fleet,
    pods: list[PodSpec],
    policy: Policy,
    *,
    seed: int,
    allocate: AllocateFn,
    progress: ProgressFn | None = None,
) -> PolicyResult:
    types = fleet.types
    # Fleet entries with the same wiring (same fingerprint: links, NUMA, CPU affinity) share one bucket set.
    topos: list[Topology] = []
    wiring_of: dict[str, int] = {}
    for t in types:
        wiring_of.setdefault(t.topology.fingerprint, len(topos))
        if len(topos) < len(wiring_of):
            topos.append(t.topology)
    best = [{k: best_tier(t, k) for k in {p.gpus for p in pods}} for t in topos]
    rng = random.Random(f"toposcale-simulate-policy:{seed}:{policy.name}")
    res = PolicyResult(policy=policy.name, pods=len(pods), fleet_gpus=fleet.gpus)

    node_type: list[int] = []  # per node: its wiring (index into topos)
    free: list[int] = []
    buckets: dict[tuple[int, int], _Bucket] = {}
    nfree_of: dict[tuple[int, int], int] = {}
    for t in types:
        ti = wiring_of[t.topology.fingerprint]
        full = (1 << t.gpus) - 1
        b = buckets.setdefault((ti, full), _Bucket())
        nfree_of[(ti, full)] = t.gpus
        for _ in range(t.count):
            b.add(len(node_type))
            node_type.append(ti)
            free.append(full)

    score_memo: dict[tuple[int, int, int], int] = {}
    alloc_memo: dict[tuple[int, int, int], tuple[int, ...]] = {}
    tier_memo: dict[tuple[int, int], tuple[int, bool]] = {}
    score = policy.score

    def move(node: int, old: int, new: int) -> None:
        ti = node_type[node]
        key = (ti, old)
        b = buckets[key]
        b.remove(node)
        if not b.items:
            del buckets[key]
        key = (ti, new)
        nb = buckets.get(key)
        if nb is None:
            nb = buckets[key] = _Bucket()
            nfree_of.setdefault(key, new.bit_count())
        nb.add(node)
        free[node] = new

    def choose(k: int) -> int | None:
        top = -1
        cands: list[_Bucket] = []
        total = 0
        for key, b in buckets.items():
            nfree = nfree_of[key]
            if nfree < k:
                continue
            mkey = (key[0], key[1], k)
            s = score_memo.get(mkey)
            if s is None:
                s = score_memo[mkey] = score(topos[key[0]], key[1], nfree, k)
            if s < 0:
                continue  # the policy's filter rejects this node
            if s > top:
                top, cands, total = s, [b], len(b.items)
            elif s == top:
                cands.append(b)
                total += len(b.items)
        if not cands:
            return None
        r = rng.randrange(total) if total > 1 else 0
        for b in cands:
            if r < len(b.items):
                return b.items[r]
            r -= len(b.items)
        raise AssertionError("unreachable: r < total")

    used = 0
    stranded = sum(t.count * (t.gpus % STRANDED_UNIT) for t in types)
    departures: list[tuple[float, int, int, int]] = []  # (time, seq, node, gpu mask)
    waiting: dict[int, deque[tuple[int, PodSpec]]] = {}
    seq = 0
    t_start = pods[0].arrival if pods else 0.0
    t_end = pods[-1].arrival if pods else 0.0
    last_t = t_start
    stranded_area = 0.0
    used_area = 0.0
    step = (t_end - t_start) / SAMPLES if t_end > t_start else 0.0
    next_sample = t_start

    def account(now: float) -> None:
        nonlocal last_t, stranded_area, used_area
        if now > last_t:
            stranded_area += stranded * (now - last_t)
            used_area += used * (now - last_t)
            last_t = now

    def place(node: int, pod: PodSpec, now: float) -> None:
        nonlocal used, stranded, seq
        ti = node_type[node]
        old = free[node]
        k = pod.gpus
        akey = (ti, old, k)
        options = alloc_memo.get(akey)
        if options is None:
            options = alloc_memo[akey] = allocate(topos[ti], old, k)
            if not options or any(m & ~old or m.bit_count() != k for m in options):
                raise RuntimeError(f"device-plugin prediction {options} is not a {k}-GPU subset of {old:b}")
        chosen = options[rng.randrange(len(options))] if len(options) > 1 else options[0]
        new = old & ~chosen
        account(now)
        used += k
        stranded += new.bit_count() % STRANDED_UNIT - old.bit_count() % STRANDED_UNIT
        move(node, old, new)
        seq += 1
        heapq.heappush(departures, (now + pod.duration, seq, node, chosen))
        res.placed += 1
        if k >= 2:
            tkey = (ti, chosen)
            got = tier_memo.get(tkey)
            if got is None:
                got = tier_memo[tkey] = (set_tier(topos[ti], chosen), cross_socket(topos[ti], chosen))
            res.multi += 1
            res.tiers[got[0]] += 1
            res.cross_socket += got[1]
            res.single_numa += not got[1]
            res.best_tier += got[0] == best[ti][k]

    def retry(node: int, now: float) -> None:
        while waiting:
            nfree = free[node].bit_count()
            head: tuple[int, PodSpec] | None = None
            for k, q in waiting.items():
                if k <= nfree and (head is None or q[0][0] < head[0]):
                    head = q[0]
            if head is None:
                return
            q = waiting[head[1].gpus]
            q.popleft()
            if not q:
                del waiting[head[1].gpus]
            place(node, head[1], now)

    def depart_until(now: float) -> None:
        nonlocal used, stranded
        while departures and departures[0][0] <= now:
            when, _, node, mask = heapq.heappop(departures)
            old = free[node]
            new = old | mask
            account(when)
            used -= mask.bit_count()
            stranded += new.bit_count() % STRANDED_UNIT - old.bit_count() % STRANDED_UNIT
            move(node, old, new)
            retry(node, when)

    every = max(1, len(pods) // 200)
    perf = time.perf_counter
    for i, pod in enumerate(pods):
        now = pod.arrival
        depart_until(now)
        account(now)
        while step and next_sample <= now:
            res.series.append(Sample(next_sample - t_start, stranded, used, res.multi, res.best_tier))
            next_sample += step
        t0 = perf()
        node = choose(pod.gpus)
        if node is not None:
            place(node, pod, now)
        res.decision_seconds += perf() - t0
        res.decisions += 1
        if node is None:
            if pod.gpus == 4 and res.first_4gpu_miss_load is None:
                res.first_4gpu_miss_load = used / fleet.gpus
            waiting.setdefault(pod.gpus, deque()).append((i, pod))
        if progress is not None and (i + 1) % every == 0:
            progress(i + 1, len(pods))
    if res.series and res.series[-1][0] >= t_end - t_start:
        res.series.pop()  # the end point is the state after the last arrival
    res.series.append(Sample(t_end - t_start, stranded, used, res.multi, res.best_tier))
    span = t_end - t_start
    res.stranded_mean = stranded_area / span if span > 0 else float(stranded)
    res.utilization_mean = (used_area / span if span > 0 else float(used)) / fleet.gpus
    res.pending = sum(len(q) for q in waiting.values())
    if progress is not None and len(pods) % every:
        progress(len(pods), len(pods))
    return res
