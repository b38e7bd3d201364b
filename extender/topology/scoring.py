"""Rate what a multi-GPU pod would get on a node, and what it would leave behind. Pure: no I/O.

Shared by the extender (per node, per scheduling decision) and the simulator (per replayed event).

API (sets are bitmasks over `topo.gpus` indices, bit i = gpus[i]; see `allocator.mask_of`):

    choose_gpus(topo, free_mask, k) -> int
        The k free GPUs the pod is predicted to get: among the sets the NVIDIA device plugin may hand out
        (`allocator.candidates`, its best-effort policy; it breaks ties arbitrarily), the one that leaves the
        best residual. 0 when fewer than k GPUs are free. A simulator that wants the kubelet's arbitrary
        tie-break instead samples from `allocator.candidates(topo, free_mask, k)`.

    score_node(topo, free_mask, k, scope="any") -> NodeDecision
        fits / unresolvable / reason / gpus / tier / span / quality / residual / ties / score (0..10).

    set_tier(topo, mask) -> Tier        weakest link of the set (a ring all-reduce runs at its slowest hop)
    set_span(topo, mask) -> int         sockets (NUMA nodes, else distinct CPU affinities) touched; 0 unknown
    required_scope_tier(label) -> Tier | None     "nvlink" ... "numa"; None for "any"

Formula (README "Scoring"):

    quality  = TIER_QUALITY[tier] - 0.1 if the set spans more than one socket            (0..1)
               averaged over the sets the plugin may hand out (its tie-break is arbitrary)
    value(F) = sum over group sizes m in {2, 4, 8, ...} <= n of
               (best packing of disjoint m-GPU groups in F, each worth its quality) / (n // m)
    loss     = value(free) - value(free - set) - k/n * value(all GPUs)   (what is lost beyond a fair share)
    residual = 1 - clamp(loss / value(all GPUs), 0, 1), averaged like quality
    score    = round(10 * (0.7 * quality + 0.3 * residual))     for k >= 2
    score    = round(10 * residual)                              for k == 1 (no link to rate)

Required scope (pod annotation `toposcale.io/required-scope`): `nvlink` / `pcie-switch` / `host-bridge` are
link tiers, met when the set's weakest link is that good or better. `numa` is a span: the set lies on one
NUMA node (or, NUMA unknown, one CPU affinity), whatever its links: NVLink across two sockets does not meet
it, SYS within one socket (an RTX 4090 box) does. Where neither NUMA nor CPU affinity is known, only a PCIe
path that stays inside one socket (PIX/PXB/PHB/NODE) proves it. The node is unresolvable when no k GPUs of
the node can ever meet the scope (hardware), fails now when the free GPUs cannot (or the plugin might hand
out a set that does not), and fits when every set the plugin may hand out meets it.

Everything is memoized per (topology fingerprint, free-GPU mask, k): identical boxes share the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from . import allocator
from .allocator import Wiring, indices_of, mask_of, wiring
from .model import Tier, Topology, link_tier

__all__ = [
    "NEUTRAL_SCORE",
    "SCOPES",
    "TIER_QUALITY",
    "NodeDecision",
    "best_tier",
    "choose_gpus",
    "cuts",
    "decide_raw",
    "freed_value",
    "materialize",
    "meets_scope",
    "required_scope_tier",
    "score_node",
    "set_span",
    "set_tier",
]

TIER_QUALITY = {
    Tier.NVLINK: 1.0,
    Tier.PCIE_SWITCH: 0.8,
    Tier.HOST_BRIDGE: 0.6,
    Tier.NUMA: 0.45,
    Tier.CROSS_SOCKET: 0.2,
    Tier.UNKNOWN: 0.1,
}
SPAN_PENALTY = 0.1  # smaller than any gap between tiers: span only breaks ties within a tier
QUALITY_WEIGHT = 0.7
MAX_SCORE = 10
NEUTRAL_SCORE = 5  # nodes whose topology is unknown: neither pushed toward nor away from
SCOPES = ("nvlink", "pcie-switch", "host-bridge", "numa", "any")
_SCOPE_WORDS = {
    Tier.NVLINK: "connected by NVLink",
    Tier.PCIE_SWITCH: "under one PCIe switch",
    Tier.HOST_BRIDGE: "behind one host bridge",
    Tier.NUMA: "on one NUMA node",
}
_EXACT_PACKING_MAX = 12
_PICK_MAX = 16


@dataclass(frozen=True, slots=True)
class NodeDecision:
    fits: bool  # the pod can go there now
    unresolvable: bool  # the hardware can never satisfy it (FailedAndUnresolvableNodes)
    reason: str  # for a person: why it fits or not, what it would get
    gpus: tuple[str, ...]  # predicted device IDs (empty when it does not fit)
    tier: Tier | None
    residual: float  # 0..1, what is left for later pods (1 = nothing good is cut)
    score: int  # 0..10 (MinExtenderPriority..MaxExtenderPriority)
    quality: float = 0.0  # 0..1, the set's own connectivity
    span: int = 0  # sockets touched by the predicted set, 0 = unknown
    ties: int = 0  # how many sets the device plugin may hand out (its tie-break is arbitrary)
    count_only: bool = False  # does not fit only because too few GPUs are free (no scope involved)


def required_scope_tier(label: str | None) -> Tier | None:
    """The tier a required scope demands; None for `any`. Raises ValueError for an unknown label."""
    if label is None or label == "any":
        return None
    if label not in SCOPES:
        raise ValueError(f"unknown required scope {label!r}; expected one of {', '.join(SCOPES)}")
    return Tier.from_label(label)


def _tier(w: Wiring, topo: Topology, mask: int) -> Tier:
    key = ("tier", mask)
    hit = w.memo.get(key)
    if hit is None:
        idx = indices_of(mask)
        worst = Tier.NVLINK
        for a, b in combinations(idx, 2):
            t = link_tier(topo.links[a][b])
            if t > worst:
                worst = t
        w.memo[key] = hit = worst
    return hit  # type: ignore[return-value]


def _span(w: Wiring, mask: int) -> int:
    keys = {w.keys[i] for i in indices_of(mask)}
    return 0 if None in keys else len(keys)


def _quality(w: Wiring, topo: Topology, mask: int) -> float:
    key = ("q", mask)
    hit = w.memo.get(key)
    if hit is None:
        q = TIER_QUALITY[_tier(w, topo, mask)]
        if _span(w, mask) > 1:
            q -= SPAN_PENALTY
        w.memo[key] = hit = max(q, 0.0)
    return hit  # type: ignore[return-value]


def set_tier(topo: Topology, mask: int) -> Tier:
    return _tier(wiring(topo), topo, mask)


def set_span(topo: Topology, mask: int) -> int:
    return _span(wiring(topo), mask)


def _sizes(n: int) -> tuple[int, ...]:
    out = []
    m = 2
    top = n if n <= _EXACT_PACKING_MAX else 8  # beyond 12 GPUs: groups up to 8 (bounded greedy work)
    while m <= top:
        out.append(m)
        m *= 2
    return tuple(out)


def _pack(w: Wiring, topo: Topology, mask: int, m: int) -> float:
    """Best total quality of disjoint m-GPU groups inside mask (GPUs may stay unused)."""
    if mask.bit_count() < m:
        return 0.0
    key = ("pack", mask, m)
    hit = w.memo.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    low = mask & -mask
    rest = mask & ~low
    if w.n > _EXACT_PACKING_MAX:
        # Greedy beyond 12 GPUs (an approximation, documented in the README): the best of the groups grown
        # from each GPU first, then the rest.
        best_q, best_m = -1.0, 0
        for start in indices_of(mask):
            g = w.grow(start, mask, m)
            q = _quality(w, topo, g)
            if q > best_q:
                best_q, best_m = q, g
        best = best_q + _pack(w, topo, mask & ~best_m, m)
    else:
        best = _pack(w, topo, rest, m)  # the lowest GPU stays unused
        for combo in combinations(indices_of(rest), m - 1):
            g = mask_of(combo) | low
            v = _quality(w, topo, g) + _pack(w, topo, mask & ~g, m)
            if v > best:
                best = v
    w.memo[key] = best
    return best


def _value(w: Wiring, topo: Topology, mask: int) -> float:
    key = ("value", mask)
    hit = w.memo.get(key)
    if hit is None:
        n = w.n
        hit = sum(_pack(w, topo, mask, m) / (n // m) for m in _sizes(n))
        w.memo[key] = hit
    return hit  # type: ignore[return-value]


def _excess(w: Wiring, topo: Topology, free: int, taken: int) -> float:
    """Loss of packable value beyond the fair k/n share, as a fraction of the node's whole value (may be < 0:
    taking GPUs that were stranded anyway costs less than their share)."""
    if not _sizes(w.n):
        return 0.0
    full = (1 << w.n) - 1
    total = _value(w, topo, full)
    if total <= 0:
        return 0.0
    loss = _value(w, topo, free) - _value(w, topo, free & ~taken)
    return (loss - taken.bit_count() / w.n * total) / total


def _pair_meets(w: Wiring, topo: Topology, a: int, b: int, need: Tier) -> bool:
    """Whether two GPUs may be in one set of the scope: a link tier that good, or, for `numa` (a span, not a
    tier), one known NUMA node / CPU affinity; where either is unknown, a PCIe path inside one socket (an
    NVLink hides the path beneath it, so it proves nothing about sockets)."""
    if need != Tier.NUMA:
        return link_tier(topo.links[a][b]) <= need
    ka, kb = w.keys[a], w.keys[b]
    if ka is not None and kb is not None:
        return bool(ka == kb)
    return Tier.PCIE_SWITCH <= link_tier(topo.links[a][b]) <= Tier.NUMA


def _meets(w: Wiring, topo: Topology, mask: int, need: Tier) -> bool:
    """Whether a set satisfies a required scope (every pair of its GPUs does, `_pair_meets`)."""
    if need != Tier.NUMA:
        return _tier(w, topo, mask) <= need
    key = ("numa-span", mask)
    hit = w.memo.get(key)
    if hit is None:
        hit = all(_pair_meets(w, topo, a, b, need) for a, b in combinations(indices_of(mask), 2))
        w.memo[key] = hit
    return hit  # type: ignore[return-value]


def meets_scope(topo: Topology, mask: int, need: Tier) -> bool:
    """Whether the set `mask` satisfies the required scope `need` (what filter checks)."""
    return _meets(wiring(topo), topo, mask, need)


def _max_group(w: Wiring, topo: Topology, mask: int, need: Tier) -> int:
    """The most GPUs of `mask` that together meet the scope (exact up to 12 GPUs, greedy beyond)."""
    key = ("group", mask, int(need))
    hit = w.memo.get(key)
    if hit is None:
        idx = indices_of(mask)
        hit = min(len(idx), 1)
        if w.n > _EXACT_PACKING_MAX:
            hit = max(hit, _greedy_scope_group(w, topo, idx, need))
        else:
            for size in range(len(idx), 1, -1):
                if any(_meets(w, topo, mask_of(c), need) for c in combinations(idx, size)):
                    hit = size
                    break
        w.memo[key] = hit
    return hit  # type: ignore[return-value]


def _greedy_scope_group(w: Wiring, topo: Topology, idx: tuple[int, ...], need: Tier) -> int:
    """The largest group meeting the scope, grown greedily from each GPU (boxes of more than 12 GPUs)."""
    best = 0
    for start in idx:
        group = [start]
        for j in idx:
            if j != start and all(_pair_meets(w, topo, j, g, need) for g in group):
                group.append(j)
        best = max(best, len(group))
    return best


def _greedy_group(w: Wiring, topo: Topology, idx: tuple[int, ...], need: Tier) -> int:
    best = 0
    for start in idx:  # cliques of "link at least this good", grown greedily
        group = [start]
        for j in idx:
            if j != start and all(link_tier(topo.links[j][g]) <= need for g in group):
                group.append(j)
        best = max(best, len(group))
    if need == Tier.NUMA:  # GPUs sharing one known socket meet `numa` whatever their links
        counts: dict[object, int] = {}
        for i in idx:
            if w.keys[i] is not None:
                counts[w.keys[i]] = counts.get(w.keys[i], 0) + 1
        best = max([best, *counts.values()])
    return best


def best_tier(topo: Topology, k: int) -> Tier | None:
    """The best tier any k GPUs of the node can have (its hardware, every GPU free): what "placed on the
    node's best tier" compares with. None for k <= 1 (a single GPU has no link) or k > GPUs. Exact up to 12
    GPUs; beyond, link cliques grown greedily (as `_max_group`)."""
    n = len(topo)
    if k <= 1 or k > n:
        return None
    w = wiring(topo)
    key = ("best-tier", k)
    hit = w.memo.get(key)
    if hit is None:
        if n <= _EXACT_PACKING_MAX:
            hit = min(_tier(w, topo, mask_of(c)) for c in combinations(range(n), k))
        else:
            full = (1 << n) - 1
            idx = indices_of(full)
            tiers = (Tier.NVLINK, Tier.PCIE_SWITCH, Tier.HOST_BRIDGE, Tier.NUMA)
            hit = next((t for t in tiers if _greedy_group(w, topo, idx, t) >= k), Tier.CROSS_SOCKET)
        w.memo[key] = hit
    return hit  # type: ignore[no-any-return]


def freed_value(topo: Topology, free_mask: int, mask: int) -> float:
    """What freeing the GPUs in `mask` gives back to later pods: value(free + mask) - value(free), the value
    being the residual's (best packings of 2, 4, 8, ... GPU groups, each worth its quality, each size counting
    at most 1). Freeing the last busy half of an NVSwitch box gives most (a whole 8-GPU set and two more
    4-GPU ones); freeing one GPU whose neighbours stay busy gives nothing (stranded)."""
    w = wiring(topo)
    full = (1 << len(topo)) - 1
    free_mask &= full
    return _value(w, topo, free_mask | (mask & full)) - _value(w, topo, free_mask)


def cuts(topo: Topology, free_mask: int, mask: int) -> tuple[str, ...]:
    """What taking `mask` out of the free GPUs breaks that later pods would want whole, in words for a
    person (the residual counts it; this names it): "an NVLink pair" when a taken GPU's one NVLink partner
    stays free (NVLink-bridge pairs; an NVSwitch GPU has many partners and no pair to break), "a free N-GPU
    socket" when the set takes part of a socket (NUMA node, else CPU affinity) whose GPUs were all free."""
    w = wiring(topo)
    n = len(topo)
    free_mask &= (1 << n) - 1
    out: list[str] = []
    for i in indices_of(mask):
        partners = [j for j in range(n) if j != i and link_tier(topo.links[i][j]) == Tier.NVLINK]
        if len(partners) == 1 and free_mask >> partners[0] & 1 and not mask >> partners[0] & 1:
            out.append("an NVLink pair")
            break
    sockets: dict[object, int] = {}
    for i, key in enumerate(w.keys):
        if key is not None:
            sockets[key] = sockets.get(key, 0) | (1 << i)
    if len(sockets) > 1 and None not in w.keys:  # one socket (or unknown ones) is no socket to keep whole
        for group in sockets.values():
            if group.bit_count() > 1 and group & free_mask == group and 0 < (group & mask) != group:
                out.append(f"a free {group.bit_count()}-GPU socket")
                break
    return tuple(out)


def _most(count: int) -> str:
    return f"at most {count}" if count > 1 else "no two"


def _ids(topo: Topology, mask: int) -> tuple[str, ...]:
    return tuple(topo.gpus[i].id for i in indices_of(mask))


def choose_gpus(topo: Topology, free_mask: int, k: int) -> int:
    """The predicted set (bitmask); 0 when fewer than k GPUs are free or k <= 0."""
    w = wiring(topo)
    cands = w.candidates(free_mask, k)
    if not cands:
        return 0
    return _pick(w, topo, free_mask, cands)[0]


def _pick(w: Wiring, topo: Topology, free: int, cands: tuple[int, ...]) -> tuple[int, float, float]:
    """(best set, mean quality, mean residual) over the plugin's candidate sets."""
    key = ("pick", free, cands[0], len(cands))
    hit = w.memo.get(key)
    if hit is None:
        best, best_key = 0, (0.0, 0.0)
        q_sum = r_sum = 0.0
        if len(cands) > _PICK_MAX:  # bound the work on very large boxes: an even sample of the ties
            step = len(cands) / _PICK_MAX
            cands = tuple(cands[int(i * step)] for i in range(_PICK_MAX))
        for c in cands:
            q = _quality(w, topo, c)
            e = _excess(w, topo, free, c)
            q_sum += q
            r_sum += 1.0 - min(max(e, 0.0), 1.0)
            # The unclamped excess ranks sets even where both residuals read 1.0.
            if best == 0 or (-e, q) > best_key:
                best, best_key = c, (-e, q)
        hit = (best, q_sum / len(cands), r_sum / len(cands))
        w.memo[key] = hit
    return hit  # type: ignore[return-value]


def _fmt(topo: Topology, mask: int) -> str:
    return ",".join(_ids(topo, mask))


def score_node(topo: Topology, free_mask: int, k: int, scope: str | None = "any") -> NodeDecision:
    """Fit, unresolvability and score of a k-GPU pod on this node; `scope` as in `required_scope_tier`."""
    return materialize(decide_raw(topo, free_mask, k, required_scope_tier(scope)), topo)


def decide_raw(topo: Topology, free_mask: int, k: int, need: Tier | None) -> NodeDecision:
    """The memoized decision shared by every node with this wiring: `gpus` holds GPU indices (as strings)
    and `reason` holds `#i#` placeholders. Hot paths read fits/score from it and call `materialize` only
    when a person will read the reason; everyone else uses `score_node`."""
    w = wiring(topo)
    n = len(topo)
    free_mask &= (1 << n) - 1
    key = ("decision", free_mask, k, need)
    hit = w.memo.get(key)
    if hit is None:
        hit = _decide(w, topo, free_mask, k, need, n, free_mask.bit_count())
        w.memo[key] = hit
    return hit  # type: ignore[return-value]


def materialize(d: NodeDecision, topo: Topology) -> NodeDecision:
    """`decide_raw`'s decision with this node's own GPU ids in `gpus` and `reason`."""
    if not d.gpus:
        return d
    ids = tuple(topo.gpus[int(i)].id for i in d.gpus)
    reason = d.reason
    for i in {int(x) for x in d.gpus}:
        reason = reason.replace(f"#{i}#", topo.gpus[i].id)
    return NodeDecision(
        fits=d.fits, unresolvable=d.unresolvable, reason=reason, gpus=ids, tier=d.tier, residual=d.residual,
        score=d.score, quality=d.quality, span=d.span, ties=d.ties, count_only=d.count_only,
    )


def _decide(
    w: Wiring, topo: Topology, free: int, k: int, need: Tier | None, n: int, nfree: int
) -> NodeDecision:
    scope_txt = f" (required-scope {need.label})" if need is not None else ""
    if k <= 0:
        return NodeDecision(True, False, "pod asks no GPU", (), None, 1.0, 0)
    if k > n:
        return NodeDecision(
            False, True, f"pod needs {k} GPUs, node has {n}", (), None, 0.0, 0, count_only=need is None
        )
    if need is not None:
        best_hw = _max_group(w, topo, (1 << n) - 1, need)
        if best_hw < k:
            return NodeDecision(
                False, True,
                f"node has {n} GPUs but {_most(best_hw)} {_SCOPE_WORDS[need]}; pod needs {k}{scope_txt}",
                (), None, 0.0, 0,
            )
    if k > nfree:
        return NodeDecision(
            False, False, f"pod needs {k} GPUs, {nfree} free", (), None, 0.0, 0, count_only=need is None
        )
    if need is not None:
        best_now = _max_group(w, topo, free, need)
        if best_now < k:
            return NodeDecision(
                False, False,
                f"{nfree} free GPUs but {_most(best_now)} {_SCOPE_WORDS[need]}; pod needs {k}{scope_txt}",
                (), None, 0.0, 0,
            )
    cands = w.candidates(free, k)
    chosen, quality, residual = _pick(w, topo, free, cands)
    tier: Tier | None = _tier(w, topo, chosen) if k > 1 else None  # one GPU: no link to rate
    span = _span(w, chosen)
    idx = indices_of(chosen)
    placeholder = ",".join(f"#{i}#" for i in idx)
    if need is not None:
        bad = [c for c in cands if not _meets(w, topo, c, need)]
        if bad:
            b = bad[0]
            return NodeDecision(
                False, False,
                f"{k} GPUs {_SCOPE_WORDS[need]} are free, but the device plugin may hand out "
                + ",".join(f"#{i}#" for i in indices_of(b))
                + f" ({_tier(w, topo, b).label}){scope_txt}",
                tuple(str(i) for i in indices_of(b)), _tier(w, topo, b), 0.0, 0,
            )
    # One GPU has no link to rate: only what it leaves behind tells nodes apart.
    weight = QUALITY_WEIGHT if k > 1 else 0.0
    score = round(MAX_SCORE * (weight * quality + (1 - weight) * residual))
    where = f", {span} socket{'s' if span != 1 else ''}" if span else ""
    ties = f"; device plugin may pick any of {len(cands)} equal sets" if len(cands) > 1 else ""
    what = tier.label if tier is not None else "single GPU"
    reason = f"{k} GPU{'s' if k != 1 else ''} {placeholder}: {what}{where}, residual {residual:.2f}{ties}"
    return NodeDecision(
        True, False, reason, tuple(str(i) for i in idx), tier, round(residual, 3), int(score),
        quality=round(quality, 3), span=span, ties=len(cands),
    )


# Re-exported for callers that only import scoring.
candidates = allocator.candidates
