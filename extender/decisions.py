"""One pod against many nodes: what filter, prioritize and explain answer for each node. Pure, no I/O.

Node views come from the request (full Node objects) or from the watch cache (names only); either way each
node ends up in exactly one outcome: passes (with a 0..10 score), fails now (FailedNodes: preemption or
waiting may help) or never fits (FailedAndUnresolvableNodes). Rules, in order:

- the pod asks no GPU of the managed resource: every node passes, score 0;
- the node's topology is unknown (no annotation, invalid annotation, not in the cache): passes with
  `NEUTRAL_SCORE` unless the pod requires a scope, which cannot then be promised (fails now);
- the node's allocation is unknown (agent could not reach the kubelet) or stale (observed longer ago than
  `--allocation-max-age`): the same; never guessed as "all free";
- otherwise `scoring.decide_raw`; a node short of free GPUs without a required scope still passes with
  score 0: the scheduler's own resource count is authoritative for counts, the annotation may lag (explain
  and the metrics call it `insufficient-free-gpus`, or `insufficient-gpus` when the node has fewer in all).

Outcomes are shared objects, memoized on each node view per (k, scope), so a request over thousands of
unchanged nodes costs a dictionary lookup per node; `scoring` memoizes per (wiring, free mask, k, scope).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from .draview import ClaimAsk, dra_decision
from .nodeview import NodeView
from .topology.model import Tier
from .topology.scoring import NEUTRAL_SCORE, NodeDecision, decide_raw, materialize
from .wire import host_priority


class Outcome(NamedTuple):
    passes: bool
    unresolvable: bool
    score: int
    reason: str  # set for outcomes without a decision; else built on demand by `reason_of`
    decision: NodeDecision | None = None  # raw (index-based); `reason_of` / explain materialize it
    unknown: str = ""  # "missing"/"invalid"/"uncached"/"allocation"/"stale-allocation"/"dra": could not judge


NO_GPU = Outcome(True, False, 0, "pod asks no managed GPU")


def _unknown(kind: str, why: str, scoped: bool) -> Outcome:
    if scoped:
        return Outcome(False, False, 0, f"{why}: a required scope cannot be checked", unknown=kind)
    return Outcome(True, False, NEUTRAL_SCORE, f"{why}: neutral score", unknown=kind)


UNCACHED = {
    s: _unknown("uncached", "node not in the extender's cache (yet)", s) for s in (False, True)
}


def outcome_for(view: NodeView | None, k: int, need: Tier | None) -> Outcome:
    """The outcome for one node (memoized on the view)."""
    scoped = need is not None
    if view is None:
        return UNCACHED[scoped]
    key = (k, need)
    hit = view.memo.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    topo = view.topology
    if topo is None:
        hit = _unknown(view.problem_kind, f"GPU topology unknown: {view.problem}", scoped)
    elif view.dra is not None:
        d = dra_decision(topo, view.dra, k, need)
        if isinstance(d, str):
            hit = _unknown("dra", d, scoped)
        elif d.fits:
            hit = Outcome(True, False, d.score, "", d)
        elif d.count_only and not scoped:
            hit = Outcome(True, False, 0, "", d)
        else:
            hit = Outcome(False, d.unresolvable, 0, "", d)
    elif view.free_mask is None:
        kind = "stale-allocation" if view.stale else "allocation"
        hit = _unknown(kind, f"{view.allocation_problem}", scoped)
    else:
        d = decide_raw(topo, view.free_mask, k, need)
        if d.fits:
            hit = Outcome(True, False, d.score, "", d)
        elif d.count_only and not scoped:
            hit = Outcome(True, False, 0, "", d)
        else:
            hit = Outcome(False, d.unresolvable, 0, "", d)
    view.memo[key] = hit
    return hit


def claim_outcome(v: NodeView | None, ask: ClaimAsk, need: Tier | None) -> Outcome:
    """The outcome for one node of a pod asking devices through an explicit claim (memoized on the view).
    A node no slice serves passes with score 0: the scheduler's own DRA plugin decides."""
    scoped = need is not None
    if v is None:
        return _unknown("uncached", "node not in the extender's cache (yet)", scoped)
    if v.dra is None:
        return Outcome(True, False, 0, "no ResourceSlice serves this node: the DRA plugin decides")
    key = ("claim", ask.key, need)
    hit = v.memo.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    if v.topology is None:
        hit = _unknown(v.problem_kind, f"GPU topology unknown: {v.problem}", scoped)
    else:
        d = dra_decision(v.topology, v.dra, ask.k, need, ask)
        if isinstance(d, str):
            hit = _unknown("dra", f"{ask.source}: {d}", scoped)
        elif d.fits:
            hit = Outcome(True, False, d.score, "", d)
        else:
            hit = Outcome(False, d.unresolvable, 0, "", d)
    v.memo[key] = hit
    return hit


def evaluate(views: list[NodeView | None], k: int, need: Tier | None) -> list[Outcome]:
    """Outcomes in input order (one per view; None = the extender has no view of that node)."""
    if k <= 0:
        return [NO_GPU] * len(views)
    key = (k, need)
    # The memo lookup inline: one dict.get per node in the common (unchanged node) case.
    return [
        (v.memo.get(key) or outcome_for(v, k, need)) if v is not None else outcome_for(None, k, need)
        for v in views
    ]


# What explain and toposcale_extender_filter_outcomes_total{outcome} call an outcome. A node that passes only
# because the scheduler's own count decides (the annotation shows too few free GPUs, score 0) is not "fits".
OUTCOME_LABELS = ("fits", "insufficient-free-gpus", "insufficient-gpus", "unknown", "fails-now", "never-fits")


def outcome_label(o: Outcome) -> str:
    if not o.passes:
        return "never-fits" if o.unresolvable else "fails-now"
    if o.unknown:
        return "unknown"  # passed with the neutral score: topology or allocation could not be judged
    d = o.decision
    if d is not None and not d.fits:  # count_only: passed to the scheduler's own count
        return "insufficient-gpus" if d.unresolvable else "insufficient-free-gpus"
    return "fits"


def say_trades(rows: list[dict[str, Any]]) -> None:
    """/explain rows, best first, whose fitting rows carry `breaks` (scoring.cuts of their set): each such
    reason says what its set would break, and the best one names the trade when another fitting node's set
    would break something else: a 1-GPU pod sent to an NVLink-pair box, cutting a pair, to keep a PCIe box's
    free 4-GPU socket whole reads "keeps a free 4-GPU socket on node X; breaks an NVLink pair here"."""
    fitting = [r for r in rows if r["outcome"] == "fits" and r.get("breaks")]
    if not fitting:
        return
    best = rows[0] if any(r is rows[0] for r in fitting) else None
    for r in fitting:
        if r is not best:
            r["reason"] += f"; would break {' and '.join(r['breaks'])}"
    if best is None:
        return
    others = ((r["node"], w) for r in fitting if r is not best for w in r["breaks"])
    kept = next(((node, w) for node, w in others if w not in best["breaks"]), None)
    keeps = f"; keeps {kept[1]} on node {kept[0]}" if kept is not None else ""
    best["reason"] += f"{keeps}; breaks {' and '.join(best['breaks'])} here"


def reason_of(outcome: Outcome, view: NodeView | None) -> str:
    """The human reason (with this node's GPU ids), built only when someone will read it."""
    if outcome.reason or outcome.decision is None:
        return outcome.reason
    topo = view.topology if view is not None else None
    d = materialize(outcome.decision, topo) if topo is not None else outcome.decision
    if outcome.passes and not d.fits:
        return f"{d.reason} per the node's GPU annotations; passing, the scheduler's own count decides"
    return d.reason


def _pick(names: Sequence[str], table: dict[str, object]) -> Sequence[object]:
    """`table[name]` for every name, in order, at C speed; KeyError on the first name not in `table`."""
    if len(names) > 1:
        return itemgetter(*names)(table)  # type: ignore[no-any-return]
    return [table[n] for n in names]


# Entries per outcome table (and per view cache): names the scheduler asks about that the cache lacks are
# kept too (answered "uncached" until their Node arrives), so bound them; a real cluster has at most ~5,000.
TABLE_LIMIT = 100_000

# A node's entry in an OutcomeTable: its HostPriority fragment, its Outcome and score, in one object, so one
# hashed lookup per node serves both the answer and the metrics.
Entry = tuple[bytes, Outcome, int]
FRAGMENT = itemgetter(0)
OUTCOME = itemgetter(1)
SCORE = itemgetter(2)


class OutcomeTable:
    """For one (k, scope): each node's Outcome and its prebuilt HostPriority JSON fragment, by node name.

    The watch cache keeps one per (k, scope) and drops a node's entry whenever anything that node's answer
    depends on changes (its annotations, a pod assumed on it), so a names-only request costs one C-level pass
    over its NodeNames. Names not in the table yet are filled in through `fill` (that node's outcome now).
    `failing` / `unknown` hold the names whose outcome fails / could not be judged, `short` those passing on
    the scheduler's count alone (too few free GPUs per the annotation): when all three are empty, every node
    of a request answered from this table "fits", and no per-node scan is needed.
    """

    __slots__ = ("_fill", "_limit", "entries_by_name", "failing", "short", "unknown")

    def __init__(self, fill: Callable[[str], Outcome], limit: int) -> None:
        self._fill = fill
        self._limit = limit  # names asked about that the cache does not hold are kept too: bound them
        self.entries_by_name: dict[str, Entry] = {}
        self.failing: set[str] = set()
        self.unknown: set[str] = set()
        self.short: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries_by_name)

    def put(self, name: str, outcome: Outcome) -> None:
        self.entries_by_name[name] = (host_priority(name, outcome.score), outcome, outcome.score)
        if outcome.passes:
            self.failing.discard(name)
        else:
            self.failing.add(name)
        if outcome.unknown:
            self.unknown.add(name)
        else:
            self.unknown.discard(name)
        if outcome.passes and outcome.decision is not None and not outcome.decision.fits:
            self.short.add(name)
        else:
            self.short.discard(name)

    def drop(self, name: str) -> None:
        if self.entries_by_name.pop(name, None) is not None:
            self.failing.discard(name)
            self.unknown.discard(name)
            self.short.discard(name)

    def clear(self) -> None:
        self.entries_by_name.clear()
        self.failing.clear()
        self.unknown.clear()
        self.short.clear()

    def _complete(self, names: Sequence[str]) -> None:
        have = self.entries_by_name
        missing = [n for n in dict.fromkeys(names) if n not in have]
        if len(have) + len(missing) > self._limit:
            self.clear()
            missing = list(dict.fromkeys(names))
        for name in missing:
            self.put(name, self._fill(name))

    def entries(self, names: Sequence[str]) -> Sequence[Entry]:
        """The entry of each named node, in order (`FRAGMENT` / `OUTCOME` get its parts)."""
        try:
            return _pick(names, self.entries_by_name)  # type: ignore[return-value]
        except KeyError:
            self._complete(names)
            return _pick(names, self.entries_by_name)  # type: ignore[return-value]

    def outcomes(self, names: Sequence[str]) -> list[Outcome]:
        """The outcome of each named node, in order."""
        return list(map(OUTCOME, self.entries(names)))

    def fragments(self, names: Sequence[str]) -> list[bytes]:
        """The HostPriority fragment of each named node, in order (`wire.priority_list_of` joins them)."""
        return list(map(FRAGMENT, self.entries(names)))
