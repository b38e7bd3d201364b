"""Scale-down victim choice: the `controller.kubernetes.io/pod-deletion-cost` toposcale keeps on serving pods.
Pure, no I/O (adapter/victims_keeper.py reads the inputs and patches the pods).

When a Deployment scales down, the ReplicaSet controller deletes the pods it ranks first
(pkg/controller/controller_utils.go, ActivePodsWithRanks): unscheduled before scheduled, Pending before
Running, not Ready before Ready, then **the lower pod-deletion-cost first** (beta since 1.22, on by default),
then pods doubled up on a node, newer before older. It knows nothing of a replica's requests in flight or of
the GPUs it holds. So among Ready serving pods toposcale ranks, best victim first:

1. fewest requests in flight (vLLM's `num_requests_running` + `num_requests_waiting`), in buckets 0, 1, 2-3,
   4-7, ... so that ordinary jitter does not reshuffle the ranking (each reshuffle is API writes); a pod
   whose load could not be read ranks after every pod whose load is known (never chosen for looking idle);
2. then the most given back by freeing its GPUs (the extender's `/freeing`: what later pods gain on that
   node, e.g. the last busy half of an NVSwitch box frees a whole 8-GPU set; GPUs left stranded give
   nothing), in steps of `GAIN_STEP`; unknown counts as nothing given back;
3. then the name (a stable order).

The cost written is `COST_STEP * (position + 1)`: the first victim the lowest. Pods are patched only where
the value differs from what they carry (so only when the ranking changes), at most `RateLimit` allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
GAIN_STEP = 0.05  # gains closer than this are equal: the extender's value has no finer meaning
COST_STEP = 100  # room between two ranks for an operator's own values
UNKNOWN_LOAD = 1 << 20  # the bucket of a pod whose load could not be read: after every known one


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    in_flight: float | None  # requests running + waiting; None: could not be read
    gain: float | None = None  # the extender's /freeing gain; None: unknown


def load_bucket(in_flight: float | None) -> int:
    """0 for an idle pod, then 1 + floor(log2(requests)): 1, 2-3, 4-7, ... share a bucket."""
    if in_flight is None or not math.isfinite(in_flight):
        return UNKNOWN_LOAD
    if in_flight < 1:
        return 0
    return 1 + int(math.log2(in_flight))


def sort_key(r: Replica) -> tuple[int, int, str]:
    gain = round(r.gain / GAIN_STEP) if r.gain is not None and math.isfinite(r.gain) else 0
    return load_bucket(r.in_flight), -gain, r.name


def ranking(replicas: Sequence[Replica]) -> list[str]:
    """Pod names, the best scale-down victim first."""
    return [r.name for r in sorted(replicas, key=sort_key)]


def costs(replicas: Sequence[Replica]) -> dict[str, int]:
    """The pod-deletion-cost of each pod (lower: deleted first)."""
    return {name: COST_STEP * (i + 1) for i, name in enumerate(ranking(replicas))}


def patches(wanted: Mapping[str, int], current: Mapping[str, str | None]) -> list[tuple[str, int]]:
    """The (pod, cost) writes that bring `current` (the annotation each pod carries, None when absent) to
    `wanted`, most urgent first: the pods about to be chosen (lowest cost) first, so that a rate limit
    delays the least important writes."""
    out = [(name, cost) for name, cost in wanted.items() if current.get(name) != str(cost)]
    out.sort(key=lambda x: (x[1], x[0]))
    return out


class RateLimit:
    """A token bucket: `per_minute` writes on average, at most `burst` at once (the clock is the caller's)."""

    def __init__(self, per_minute: float, burst: int, now: float) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
