"""The demo's load: requests per second over simulated time, and Poisson arrivals drawn from it (pure)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrafficCurve:
    """A day compressed into one run: quiet, a ramp to a plateau, a fall, quiet again.

    Shape points are fractions of the run; between them the rate follows a cosine ease so the HPA sees a
    smooth rise rather than a step (a step would show the scale-up limit, not the metric).
    """

    duration_s: float
    base_rps: float = 2.0
    peak_rps: float = 24.0
    rise_start: float = 0.08
    rise_end: float = 0.28
    fall_start: float = 0.45
    fall_end: float = 0.6
    noise: float = 0.05  # multiplicative, deterministic per second given the seed
    seed: int = 0

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if not 0 <= self.rise_start <= self.rise_end <= self.fall_start <= self.fall_end <= 1:
            raise ValueError("shape points must be ordered fractions of the run")
        if self.base_rps < 0 or self.peak_rps < self.base_rps:
            raise ValueError("need 0 <= base_rps <= peak_rps")

    def level(self, t: float) -> float:
        """0..1: where the load stands between base and peak at simulated second `t`."""
        x = t / self.duration_s
        if x < self.rise_start or x >= self.fall_end:
            return 0.0
        if x < self.rise_end:
            return _ease((x - self.rise_start) / max(self.rise_end - self.rise_start, 1e-9))
        if x < self.fall_start:
            return 1.0
        return 1.0 - _ease((x - self.fall_start) / max(self.fall_end - self.fall_start, 1e-9))

    def rate(self, t: float) -> float:
        """Requests per second at simulated second `t`."""
        clean = self.base_rps + (self.peak_rps - self.base_rps) * self.level(t)
        jitter = random.Random(self.seed * 1_000_003 + int(t)).uniform(-self.noise, self.noise)
        return max(0.0, clean * (1.0 + jitter))


def _ease(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * u)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: Knuth's method for small means (arrivals per tick), a rounded normal above."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
