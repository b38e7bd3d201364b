"""One pod against many nodes: what filter, prioritize and explain answer for each node. Pure, no I/O.

Node views come from the request (full Node objects) or from the watch cache (names only); either way each
node ends up in exactly one outcome: passes (with a 0..10 score), fails now (FailedNodes: preemption or
waiting may help) or never fits (FailedAndUnresolvableNodes). Rules, in order:

- the pod asks no GPU of the managed resource: every node passes, score 0;
- the node's topology is unknown (no annotation, invalid annotation, not in the cache): passes with
  `NEUTRAL_SCORE` unless the pod requires a scope, which cannot then be promised (fails now);
- the node's allocation is unknown (agent could not reach the kubelet): the same; never guessed as "all free";
- otherwise `scoring.decide_raw`; a node short of free GPUs without a required scope still passes with
  score 0: the scheduler's own resource count is authoritative for counts, the annotation may lag.

Decisions are memoized per (wiring, free mask, k, scope) in scoring; within one request identical nodes
share one lookup here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodeview import NodeView
from .topology.model import Tier
from .topology.scoring import NEUTRAL_SCORE, NodeDecision, decide_raw, materialize


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    passes: bool
    unresolvable: bool
    score: int
    reason: str
    decision: NodeDecision | None = None  # raw (index-based); `explain` materializes it
    unknown: str = ""  # "missing" / "invalid" / "uncached" / "allocation" when the extender could not judge


def evaluate(
    views: list[tuple[str, NodeView | None]], k: int, need: Tier | None
) -> list[Outcome]:
    """Outcomes in input order. `views`: (node name, its view or None when the extender has none)."""
    out: list[Outcome] = []
    if k <= 0:
        return [Outcome(name, True, False, 0, "pod asks no managed GPU") for name, _ in views]
    local: dict[tuple[str, int], Outcome] = {}
    scoped = need is not None
    for name, view in views:
        if view is None:
            out.append(_unknown(name, "uncached", "node not in the extender's cache (yet)", scoped))
            continue
        topo = view.topology
        if topo is None:
            out.append(_unknown(name, view.problem_kind, f"GPU topology unknown: {view.problem}", scoped))
            continue
        free = view.free_mask
        if free is None:
            out.append(_unknown(name, "allocation", f"{view.allocation_problem}", scoped))
            continue
        key = (topo.fingerprint, free)
        hit = local.get(key)
        if hit is None:
            d = decide_raw(topo, free, k, need)
            if d.fits:
                hit = Outcome("", True, False, d.score, "", d)
            elif d.count_only and not scoped:
                hit = Outcome("", True, False, 0, "", d)
            else:
                hit = Outcome("", False, d.unresolvable, 0, "", d)
            local[key] = hit
        out.append(Outcome(name, hit.passes, hit.unresolvable, hit.score, "", hit.decision))
    return out


def _unknown(name: str, kind: str, why: str, scoped: bool) -> Outcome:
    if scoped:
        return Outcome(name, False, False, 0, f"{why}: a required scope cannot be checked", unknown=kind)
    return Outcome(name, True, False, NEUTRAL_SCORE, f"{why}: neutral score", unknown=kind)


def reason_of(outcome: Outcome, view: NodeView | None) -> str:
    """The human reason (with this node's GPU ids), built only when someone will read it."""
    if outcome.reason or outcome.decision is None:
        return outcome.reason
    topo = view.topology if view is not None else None
    d = materialize(outcome.decision, topo) if topo is not None else outcome.decision
    if outcome.passes and not d.fits:
        return f"{d.reason} per the node's GPU annotations; passing, the scheduler's own count decides"
    return d.reason
