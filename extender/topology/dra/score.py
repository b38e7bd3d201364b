"""The predicted devices against the node's GPU topology: which GPU each device is (`join_topology`) and the
extender's score of that one set (`score_prediction`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..allocator import indices_of, mask_of, wiring
from ..model import Tier, Topology
from ..scoring import (
    MAX_SCORE,
    NEUTRAL_SCORE,
    QUALITY_WEIGHT,
    NodeDecision,
    _excess,
    _max_group,
    _meets,
    _quality,
    _span,
    _tier,
    required_scope_tier,
)
from .pools import Device, Pools
from .values import DeviceID

_PCI = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")


def _pci_key(text: Any) -> tuple[int, int, int, int] | None:
    if not isinstance(text, str):
        return None
    m = _PCI.fullmatch(text.strip())
    if m is None:
        return None
    dom, bus, dev, fn = m.groups()
    return (int(dom or "0", 16), int(bus, 16), int(dev, 16), int(fn))


def join_topology(topo: Topology, devices: Iterable[Device]) -> list[int | None]:
    """Each device's index in `topo.gpus`: by `uuid`, else by `pcieBusID` (PCI addresses compared as
    numbers: nvidia-smi's 00000000:3B:00.0 is NVML's 0000:3b:00.0); None when neither matches."""
    by_uuid = {g.uuid.lower(): i for i, g in enumerate(topo.gpus) if g.uuid}
    by_id = {g.id.lower(): i for i, g in enumerate(topo.gpus) if g.id}
    by_pci = {k: i for i, g in enumerate(topo.gpus) if (k := _pci_key(g.pci)) is not None}
    out: list[int | None] = []
    for d in devices:
        u = d.lookup(f"{d.driver}/uuid")
        idx = None
        if isinstance(u, str):
            idx = by_uuid.get(u.lower(), by_id.get(u.lower()))
        if idx is None:
            k = _pci_key(d.lookup(f"{d.driver}/pcieBusID"))
            idx = by_pci.get(k) if k is not None else None
        out.append(idx)
    return out


def score_prediction(
    topo: Topology,
    free_mask: int,
    chosen_mask: int,
    k: int,
    scope: str | None = "any",
    names: Sequence[str] | None = None,
) -> NodeDecision:
    """The extender's decision for a node where DRA first-fit gives exactly `chosen_mask` (0: it cannot
    allocate): the same quality/residual/score formula as `scoring.score_node`, on one known set instead of
    the device plugin's candidates. `names` (device names in GPU order) are used in the reason."""
    need = required_scope_tier(scope)
    w = wiring(topo)
    n = len(topo)
    full = (1 << n) - 1
    free_mask &= full
    scope_txt = f" (required-scope {need.label})" if need is not None else ""

    def label(mask: int) -> str:
        idx = indices_of(mask)
        if names is not None:
            return ",".join(names[i] for i in idx)
        return ",".join(topo.gpus[i].id for i in idx)

    if k > n:
        return NodeDecision(False, True, f"pod needs {k} GPUs, node has {n}", (), None, 0.0, 0)
    if need is not None and _max_group(w, topo, full, need) < k:
        return NodeDecision(
            False, True, f"node has {n} GPUs but too few together{scope_txt}", (), None, 0.0, 0
        )
    if chosen_mask == 0:
        return NodeDecision(
            False,
            False,
            f"DRA cannot allocate {k} devices here ({free_mask.bit_count()} free)",
            (),
            None,
            0.0,
            0,
            count_only=need is None,
        )
    tier: Tier | None = _tier(w, topo, chosen_mask) if k > 1 else None
    span = _span(w, chosen_mask)
    what = tier.label if tier is not None else "single GPU"
    gpus = tuple(topo.gpus[i].id for i in indices_of(chosen_mask))
    if need is not None and not _meets(w, topo, chosen_mask, need):
        return NodeDecision(
            False,
            False,
            f"DRA first-fit would give {label(chosen_mask)} ({what}){scope_txt}",
            gpus,
            tier,
            0.0,
            0,
        )
    quality = _quality(w, topo, chosen_mask)
    residual = 1.0 - min(max(_excess(w, topo, free_mask, chosen_mask), 0.0), 1.0)
    weight = QUALITY_WEIGHT if k > 1 else 0.0
    score = round(MAX_SCORE * (weight * quality + (1 - weight) * residual))
    where = f", {span} socket{'s' if span != 1 else ''}" if span else ""
    return NodeDecision(
        True,
        False,
        f"DRA first-fit would give {label(chosen_mask)}: {what}{where}, residual {residual:.2f}",
        gpus,
        tier,
        round(residual, 3),
        int(score),
        quality=round(quality, 3),
        span=span,
        ties=1,
    )


def neutral(reason: str) -> NodeDecision:
    """A node whose DRA prediction is unknown: fits as far as toposcale can tell, neutral score."""
    return NodeDecision(True, False, reason, (), None, 0.5, NEUTRAL_SCORE)


def predicted_mask(topo: Topology, pools: Pools, devices: Iterable[DeviceID]) -> int | None:
    """The predicted devices as a GPU mask over `topo`; None when one of them is not in the topology."""
    devs = [pools.device_index[d] for d in devices]
    idx = join_topology(topo, devs)
    if any(i is None for i in idx):
        return None
    return mask_of(i for i in idx if i is not None)
