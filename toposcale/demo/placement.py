"""The kubelet's side of a placement: which of the chosen node's GPUs the NVIDIA device plugin hands out.

The plugin's best-effort policy may return any of several equally good sets (Go map order decides); the
extender's allocator lists exactly those (`candidates`), and the demo draws one with its seeded RNG, so a run
is reproducible and never assumes more than the real plugin promises.
"""

from __future__ import annotations

import random

from toposcale.extender.topology.allocator import candidates, indices_of, mask_of
from toposcale.extender.topology.model import Tier, Topology
from toposcale.extender.topology.scoring import set_tier as _set_tier


class NoAllocation(Exception):
    """Fewer free GPUs than requested: the kubelet would reject the pod (UnexpectedAdmissionError)."""


def predict_allocation(topo: Topology, free_ids: list[str], k: int, rng: random.Random) -> list[str]:
    idx = [topo.index_of(g) for g in free_ids]
    if any(i is None for i in idx):
        raise NoAllocation(f"unknown GPU ids {[g for g, i in zip(free_ids, idx, strict=True) if i is None]}")
    sets = candidates(topo, mask_of(i for i in idx if i is not None), k)
    if not sets:
        raise NoAllocation(f"{k} GPUs requested, {len(free_ids)} free")
    return [topo.gpus[i].id for i in indices_of(rng.choice(sets))]


def set_tier(topo: Topology, idx: list[int]) -> Tier:
    """The tier the extender rates a GPU set by (its weakest link, NVLink estimated as the extender does)."""
    return _set_tier(topo, mask_of(idx))
