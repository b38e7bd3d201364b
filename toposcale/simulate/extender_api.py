"""The extender's own code, as the simulator calls it: its node score, its device-plugin prediction and its
measure of a GPU set.

Imported, never copied, so the simulator measures exactly what the extender does in a cluster. All take GPU
sets as bitmasks over `topology.gpus` (bit i = gpus[i]), the replay's representation, and memoize per
(topology fingerprint, free mask, k) themselves. A missing module raises `ExtenderUnavailable` naming it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from toposcale.extender.topology.model import Tier, Topology

ALLOCATOR = "toposcale.extender.topology.allocator"
SCORING = "toposcale.extender.topology.scoring"
DRA = "toposcale.extender.topology.dra"
DRA_SYNTH = "toposcale.extender.topology.dra.synth"  # the simulator's DRA node


class ExtenderUnavailable(RuntimeError):
    """The extender module the simulator needs is not installed (or lacks the function it calls)."""


def _module(name: str, attr: str) -> ModuleType:
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ExtenderUnavailable(
                f"{name} is not available, so the simulator cannot call the extender's {attr}(); "
                "it uses the extender's own code and has no copy of it"
            ) from None
        raise
    if not hasattr(mod, attr):
        raise ExtenderUnavailable(f"{name} has no {attr}(); the simulator calls the extender's own {attr}()")
    return mod


def device_choice(topo: Topology, free: int, k: int) -> tuple[int, ...]:
    """Every k-GPU set the NVIDIA device plugin may hand out from `free` (go-gpuallocator best-effort); the
    plugin's pick among them depends on Go map order."""
    return _module(ALLOCATOR, "candidates").candidates(topo, free, k)


def node_score(topo: Topology, free: int, k: int) -> int | None:
    """The extender's 0..10 prioritize score for a pod of k GPUs; None when its filter rejects the node."""
    decision = _module(SCORING, "score_node").score_node(topo, free, k)
    return decision.score if decision.fits else None


def dra_choice(topo: Topology, free: int, k: int) -> tuple[int, ...]:
    """The one k-GPU set kube-scheduler's DRA allocator (first-fit over the node's slice) gives; () when it
    cannot allocate."""
    m = _module(DRA_SYNTH, "first_fit_mask").first_fit_mask(topo, free, k)
    return (m,) if m else ()


def dra_node_score(topo: Topology, free: int, k: int) -> int | None:
    """The extender's 0..10 score of a DRA node: its formula on the set DRA first-fit would give; None when
    DRA cannot allocate there."""
    dra = _module(DRA, "score_prediction")
    chosen = _module(DRA_SYNTH, "first_fit_mask").first_fit_mask(topo, free, k)
    if not chosen:
        return None
    decision = dra.score_prediction(topo, free, chosen, k)
    return decision.score if decision.fits else None


def set_tier(topo: Topology, mask: int) -> Tier:
    return _module(SCORING, "set_tier").set_tier(topo, mask)


def set_span(topo: Topology, mask: int) -> int:
    """Sockets (NUMA nodes, else distinct CPU affinities) the set touches; 0 when unknown."""
    return _module(SCORING, "set_span").set_span(topo, mask)


def socket_keys(topo: Topology) -> tuple[object, ...]:
    """Per GPU what `set_span` counts: ("numa", id), else ("cpus", affinity), else None."""
    return _module(ALLOCATOR, "socket_keys").socket_keys(topo)
