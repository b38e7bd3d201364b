"""What one policy's run produced, and the shares the report prints.

Shares over zero pods are None (undefined), never 0: a policy that placed no multi-GPU pod did not place them
badly either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from toposcale.extender.topology.model import Tier

STRANDED_UNIT = 4  # stranded GPUs: free, but not usable by a 4-GPU (TP 4) pod on that node


class Sample(NamedTuple):
    t: float  # seconds since the first arrival
    stranded: int  # GPUs free but unusable by a 4-GPU pod
    used: int  # GPUs allocated
    multi: int  # multi-GPU pods placed so far
    best: int  # of those, pods whose set was the best tier their node offers


@dataclass(slots=True)
class PolicyResult:
    policy: str
    pods: int = 0
    placed: int = 0
    pending: int = 0
    multi: int = 0  # placed pods of 2+ GPUs: the denominator of every share
    tiers: list[int] = field(default_factory=lambda: [0] * len(Tier))
    single_numa: int = 0
    cross_socket: int = 0  # never counted with single_numa (tiers.py: one rule for both)
    best_tier: int = 0
    first_4gpu_miss_load: float | None = None  # allocated/fleet GPUs when a 4-GPU pod first found no node
    stranded_mean: float = 0.0  # time-weighted over the run (first to last arrival)
    utilization_mean: float = 0.0
    series: list[Sample] = field(default_factory=list)  # state over time, evenly spaced
    decisions: int = 0
    decision_seconds: float = 0.0
    fleet_gpus: int = 0

    def share(self, count: int) -> float | None:
        return count / self.multi if self.multi else None

    def tier_share(self, tier: Tier) -> float | None:
        return self.share(self.tiers[tier])

    @property
    def single_numa_share(self) -> float | None:
        return self.share(self.single_numa)

    @property
    def best_tier_share(self) -> float | None:
        return self.share(self.best_tier)

    @property
    def cross_socket_share(self) -> float | None:
        return self.share(self.cross_socket)

    @property
    def decisions_per_s(self) -> float | None:
        return self.decisions / self.decision_seconds if self.decision_seconds > 0 else None
