"""Run several policies over the same fleet and the same pods."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .fleet import Fleet
from .metrics import PolicyResult
from .policies import DEFAULT_EXTENDER_WEIGHT, make_policy
from .replay import ProgressFn, replay
from .workload import PodSpec


def compare(
    fleet: Fleet,
    pods: list[PodSpec],
    policies: Sequence[str],
    *,
    seed: int,
    extender_weight: int = DEFAULT_EXTENDER_WEIGHT,
    allocator: str = "device-plugin",
    progress: Callable[[str], ProgressFn] | None = None,
) -> list[PolicyResult]:
    from .extender_api import device_choice, dra_choice

    # Who picks the GPUs on the chosen node: the NVIDIA device plugin (as the extender predicts it) or,
    # with dynamic resource allocation, kube-scheduler's own first-fit allocator (exactly predicted).
    allocate = dra_choice if allocator == "dra-first-fit" else device_choice
    built = [
        make_policy(name, extender_weight=extender_weight, allocator=allocator) for name in policies
    ]  # fail before running
    return [
        replay(fleet, pods, p, seed=seed, allocate=allocate, progress=progress(p.name) if progress else None)
        for p in built
    ]
