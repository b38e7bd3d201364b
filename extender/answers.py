"""What each verb answers, from its parsed arguments: the node views, the outcome per node, the answer, and
what the metrics and the log say about them. No HTTP: the server parses, calls one method, answers.

A request's nodes are judged on views from one of three places: the watch cache's outcome table
(`nodeCacheCapable: true`, names only: one lookup per node, `decisions.OutcomeTable`), the request's full
Node objects (`nodeview.view_of_node`, an allocation older than `--allocation-max-age` unknown, DRA nodes
overlaid by the cache's slices), or, for a pod asking GPUs through an explicit ResourceClaim, the cache's
claim views (`ClusterState.claim_outcomes`). `decisions.evaluate` turns views into outcomes. A node that
cannot be judged is answered (neutral score, reason) and logged once per node and problem, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any

import orjson

from . import wire
from .decisions import (
    FRAGMENT,
    OUTCOME,
    SCORE,
    Entry,
    Outcome,
    OutcomeTable,
    evaluate,
    outcome_label,
    reason_of,
    say_trades,
)
from .metrics import ExtenderMetrics
from .nodeview import NodeView, aged, view_of_node
from .pods import PodError, gpu_request, pod_key, required_scope
from .state import ClusterState
from .topology.allocator import mask_of
from .topology.model import Tier
from .topology.scoring import cuts, materialize, required_scope_tier

logger = logging.getLogger("toposcale.extender")

STANDALONE_REASON = (
    "toposcale extender runs --standalone (no Kubernetes connection, no node cache) and got node names "
    "only: configure the extender with nodeCacheCapable: false, or run it with cluster access"
)
_LOGGED_LIMIT = 100_000

# Outcome is a NamedTuple: item getters run at C speed over thousands of nodes.
_PASSES = itemgetter(Outcome._fields.index("passes"))
_SCORE = itemgetter(Outcome._fields.index("score"))
_UNKNOWN = itemgetter(Outcome._fields.index("unknown"))


class Answers:
    """The answers of one extender: `state` is its watch cache (None: --standalone), `resource` the managed
    extended resource, `allocation_max_age_s` the age beyond which a full Node's allocation is unknown."""

    def __init__(
        self,
        state: ClusterState | None,
        metrics: ExtenderMetrics,
        *,
        resource: str,
        allocation_max_age_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.resource = resource
        self.allocation_max_age_s = allocation_max_age_s  # full-Node mode; the watch cache has its own
        self._wall = wall  # for the age of full Node objects' allocations
        self._logged: dict[str, str] = {}
        self.followups = Followups()

    # ------------------------------------------------------------ verbs

    def filter(self, args: wire.ExtenderArgs, body: bytes) -> bytes:
        """ExtenderFilterResult: the nodes passing, failing now, and never fitting (with reasons). `body`,
        the request as sent, is what the prioritize that follows will resend (`Followups`)."""
        m = self.metrics
        k, need, fail_all = self._prepare("filter", args)
        names = args.names
        passing: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        if fail_all is not None:
            unresolvable = dict.fromkeys(names, fail_all)
            m.outcome.labels("never-fits").inc(len(unresolvable))
            return wire.filter_result(args, passing, failed, unresolvable)
        table = self._table(args, k, need)
        if table is not None:
            entries = table.entries(names)  # one C-level pass; fills in nodes not judged yet
            if not table.failing and not table.unknown and not table.short:
                # No cached node fails this pod, is unknown or short: every name fits, nothing to scan.
                m.nodes.labels("filter").inc(len(names))
                if names:
                    m.outcome.labels("fits").inc(len(names))
                self.followups.expect(body, names, entries, table, k, need, self._generation())
                return wire.filter_result(args, names, failed, unresolvable)
            outcomes, view_of = self._outcomes("filter", args, k, need, table, entries)
        else:
            outcomes, view_of = self._outcomes("filter", args, k, need, None)
        passing = list(compress(names, map(_PASSES, outcomes)))
        if table is not None and not table.unknown:
            kept = list(compress(entries, map(_PASSES, outcomes)))
            self.followups.expect(body, passing, kept, table, k, need, self._generation())
        if len(passing) < len(names):
            for i, o in enumerate(outcomes):
                if o.passes:
                    continue
                if o.unresolvable:
                    unresolvable[names[i]] = reason_of(o, view_of(i))
                else:
                    failed[names[i]] = reason_of(o, view_of(i))
        if outcomes:
            for label, count in Tally(map(outcome_label, outcomes)).items():
                m.outcome.labels(label).inc(count)
        return wire.filter_result(args, passing, failed, unresolvable)

    def followup(self, body: bytes) -> bytes | None:
        """The HostPriorityList of a prioritize that resends the last filter's nodes for the same pod while
        the cache is unchanged (`Followups`): the filter's entries, no parsing; None otherwise."""
        state = self.state
        hit = self.followups.match(body, state) if state is not None else None
        if hit is None:
            return None
        entries, table, k, need = hit
        self.metrics.followup.inc()
        answer = wire.priority_list_of(map(FRAGMENT, entries))
        asyncio.get_running_loop().call_soon(self._count_prioritize_later, None, k, need, table, entries)
        return answer

    def prioritize(self, args: wire.ExtenderArgs) -> bytes:
        """HostPriorityList: a 0..10 score per node, in the request's order."""
        k, need, fail_all = self._prepare("prioritize", args)
        names = args.names
        if fail_all is not None:
            return wire.priority_list(names, [0] * len(names))
        table = self._table(args, k, need)
        if table is not None:
            # From the cache: the answer is a join of the nodes' prebuilt fragments; the metrics, which
            # need every outcome, are counted right after the answer is on its way.
            entries = table.entries(names)
            answer = wire.priority_list_of(map(FRAGMENT, entries))
            later = self._count_prioritize_later
            asyncio.get_running_loop().call_soon(later, args, k, need, table, entries)
            return answer
        outcomes = self._count_prioritize(args, k, need, None, None)
        return wire.priority_list(names, list(map(_SCORE, outcomes)))

    def explain(self, args: wire.ExtenderArgs) -> dict[str, Any]:
        """/explain: every node's outcome, score, reason and predicted GPU set, best first."""
        k, scope, pod_error = self._pod(args)
        doc: dict[str, Any] = {
            "pod": pod_key(args.pod),
            "resource": self.resource,
            "gpus": wire.json_int(k),
            "requiredScope": scope,
        }
        if pod_error is not None:
            doc["error"] = pod_error
            doc["nodes"] = []
            return doc
        if k > 0 and args.nodes is None and self.state is None:
            doc["error"] = STANDALONE_REASON
            doc["nodes"] = []
            return doc
        if k > 0 and args.nodes is not None:
            views = self._node_views(args.nodes)
        elif k > 0 and self.state is not None:
            views = [self.state.view(n) for n in args.names]
        else:
            views = [None] * len(args.names)
        rows = []
        outcomes = evaluate(views, k, required_scope_tier(scope))
        claimed = self._claimed(args, required_scope_tier(scope)) if k == 0 else None
        if claimed is not None:
            outcomes, views = claimed
            ask = self.state.claim_ask(args.pod) if self.state is not None else None
            doc["claim"] = ask if isinstance(ask, str) else getattr(ask, "source", None)
            doc["gpus"] = getattr(ask, "k", 0)
        for name, o, view in zip(args.names, outcomes, views, strict=True):
            row: dict[str, Any] = {
                "node": name,
                "outcome": outcome_label(o),
                "score": o.score,
                "reason": reason_of(o, view),
            }
            if o.unknown:
                row["unknown"] = o.unknown
            d = o.decision
            if d is not None and view is not None and view.topology is not None:
                if d.fits and view.dra is None and view.free_mask is not None:
                    row["breaks"] = list(cuts(view.topology, view.free_mask, mask_of(int(i) for i in d.gpus)))
                d = materialize(d, view.topology)
                row.update(
                    gpus=list(d.gpus),
                    tier=d.tier.label if d.tier is not None else None,
                    quality=d.quality,
                    residual=d.residual,
                    span=d.span,
                    ties=d.ties,
                )
            rows.append(row)
        rows.sort(key=lambda r: (-r["score"], r["outcome"] != "fits", r["node"]))
        say_trades(rows)
        doc["nodes"] = rows
        return doc

    def placeable(self, template: dict[str, Any]) -> dict[str, Any]:
        """/placeable: how many more pods like `template` the cluster's GPUs take now (placeable.py)."""
        try:
            k, scope = gpu_request(template, self.resource), required_scope(template)
        except PodError as exc:
            raise wire.WireError(f"pod template {pod_key(template)}: {exc}") from None
        if k <= 0:
            claims = (
                " (GPUs through spec.resourceClaims are not counted)"
                if wire.spec_of(template).get("resourceClaims")
                else ""
            )
            what = f"pod template {pod_key(template)} asks no {self.resource}"
            raise wire.WireError(f"{what}: GPUs do not limit it{claims}")
        assert self.state is not None
        doc = self.state.placeable(template, k, required_scope_tier(scope), scope).doc()
        return {"kind": "Placeable", "template": pod_key(template), "resource": self.resource, **doc}

    def freeing(self, pods: list[str]) -> dict[str, Any]:
        """/freeing: what freeing each pod's GPUs gives back on its node (ClusterState.freeing)."""
        assert self.state is not None
        return {"kind": "Freeing", "pods": self.state.freeing(pods)}

    # ------------------------------------------------------------ the pod

    def _pod(self, args: wire.ExtenderArgs) -> tuple[int, str, str | None]:
        """(GPUs asked, scope, pod error or None)."""
        try:
            return gpu_request(args.pod, self.resource), required_scope(args.pod), None
        except PodError as exc:
            logger.warning("unusable pod", extra={"pod": pod_key(args.pod), "error": str(exc)})
            return 0, "any", f"pod {pod_key(args.pod)}: {exc}"

    def _prepare(self, verb: str, args: wire.ExtenderArgs) -> tuple[int, Tier | None, str | None]:
        """(GPUs asked, required scope, reason that fails every node or None: pod error, standalone)."""
        if args.dropped:
            logger.warning("node items ignored", extra={"verb": verb, "items": args.dropped[:10]})
        k, scope, pod_error = self._pod(args)
        if pod_error:
            return 0, None, pod_error
        if k > 0 and args.nodes is None and self.state is None:
            return k, None, STANDALONE_REASON
        return k, required_scope_tier(scope), None

    # ------------------------------------------------------------ node views and outcomes

    def _generation(self) -> int:
        return self.state.generation if self.state is not None else -1

    def _table(self, args: wire.ExtenderArgs, k: int, need: Tier | None) -> OutcomeTable | None:
        """The watch cache's outcome table when the request is answered from it (names only, GPU pod)."""
        if k > 0 and args.nodes is None and self.state is not None:
            return self.state.table(k, need)
        return None

    def _node_views(self, nodes: list[dict[str, Any]]) -> list[NodeView | None]:
        """Views of full Node objects, an allocation older than --allocation-max-age treated as unknown."""
        res = self.resource
        views = [view_of_node(n, res) for n in nodes]
        limit = self.allocation_max_age_s
        if limit > 0:
            cutoff = self._wall() - limit
            views = [aged(v, cutoff, limit) for v in views]
        return self.state.overlay(views) if self.state is not None else views  # DRA nodes: slices watched

    def _claimed(
        self, args: wire.ExtenderArgs, need: Tier | None
    ) -> tuple[list[Outcome], list[NodeView | None]] | None:
        """Outcomes and views for a pod asking GPUs through an explicit ResourceClaim (no managed resource
        asked); None for a pod without claims, or without a cluster connection to read them."""
        state = self.state
        ask = state.claim_ask(args.pod) if state is not None else None
        if state is None or ask is None:
            return None
        views = self._node_views(args.nodes) if args.nodes is not None else None
        return state.claim_outcomes(ask, args.names, need, views)

    def _view_of(self, args: wire.ExtenderArgs) -> Callable[[int], NodeView | None]:
        state, names = self.state, args.names
        if state is None:
            return _no_view

        def view_of(i: int) -> NodeView | None:
            return state.view(names[i])

        return view_of

    def _outcomes(
        self,
        verb: str,
        args: wire.ExtenderArgs,
        k: int,
        need: Tier | None,
        table: OutcomeTable | None,
        entries: Sequence[Entry] | None = None,
    ) -> tuple[Sequence[Outcome], Callable[[int], NodeView | None]]:
        """Outcome per input node and a way to get node i's view (for reasons), counted in the metrics.
        From the cache: `entries` (the table's, for these names) when the caller already has them."""
        view_of: Callable[[int], NodeView | None]
        if table is not None:
            outcomes = list(map(OUTCOME, entries if entries is not None else table.entries(args.names)))
            view_of = self._view_of(args)
        elif k <= 0:
            claimed = self._claimed(args, need)
            if claimed is None:
                return evaluate([None] * len(args.names), 0, None), _no_view
            outcomes, claim_views = claimed
            view_of = claim_views.__getitem__
        else:
            views = self._node_views(args.nodes or [])
            outcomes = evaluate(views, k, need)
            view_of = views.__getitem__
        self.metrics.nodes.labels(verb).inc(len(outcomes))
        # From the cache, a table without unknown nodes answers no request with one: skip the scan.
        if (table is None or table.unknown) and any(map(_UNKNOWN, outcomes)):
            unknown = [i for i, o in enumerate(outcomes) if o.unknown]
            counts: dict[str, int] = {}
            for i in unknown:
                kind = outcomes[i].unknown
                counts[kind] = counts.get(kind, 0) + 1
                v = view_of(i)
                if v is not None:
                    self._log_node_once(v.name, v.problem or v.allocation_problem or outcomes[i].reason)
            for kind, count in counts.items():
                self.metrics.unknown.labels(kind).inc(count)
        return outcomes, view_of

    def _log_node_once(self, name: str, problem: str) -> None:
        if self._logged.get(name) == problem:
            return
        if len(self._logged) >= _LOGGED_LIMIT:
            self._logged.clear()
        self._logged[name] = problem
        logger.warning(
            "node answered without usable GPU annotations", extra={"node": name, "problem": problem}
        )

    # ------------------------------------------------------------ prioritize's metrics

    def _count_prioritize_later(
        self,
        args: wire.ExtenderArgs | None,
        k: int,
        need: Tier | None,
        table: OutcomeTable,
        entries: Sequence[Entry],
    ) -> None:
        try:
            if table.unknown and args is not None:
                self._count_prioritize(args, k, need, table, entries)  # unknown nodes to count and log
                return
            self.metrics.nodes.labels("prioritize").inc(len(entries))
            if entries:
                scores = bytes(map(SCORE, entries))  # 0..10 each: max and index at C speed
                self._count_tier(entries[scores.index(max(scores))][1])
        except Exception:  # a bug in counting must not surface as an asyncio callback error per request
            logger.exception("counting a prioritize answer failed", extra={"verb": "prioritize"})

    def _count_prioritize(
        self,
        args: wire.ExtenderArgs,
        k: int,
        need: Tier | None,
        table: OutcomeTable | None,
        entries: Sequence[Entry] | None,
    ) -> Sequence[Outcome]:
        outcomes, _ = self._outcomes("prioritize", args, k, need, table, entries)
        if outcomes:
            self._count_tier(max(outcomes, key=_SCORE))
        return outcomes

    def _count_tier(self, best: Outcome) -> None:
        """The tier the pod most likely gets: that of the best-scored node (first of equals)."""
        if best.passes and best.decision is not None and best.decision.fits:
            tier = best.decision.tier
            self.metrics.tier.labels(tier.label if tier is not None else "single-gpu").inc()


class Followups:
    """What the prioritize that follows a filter will send, so its answer comes from the filter's work.

    kube-scheduler calls filter with the nodes its own filters passed, then prioritize with the nodes the
    filter kept, for the same pod (`HTTPExtender.send`: `json.Marshal` of the same `ExtenderArgs{Pod,
    Nodes, NodeNames}`, fields in that order). So the prioritize body is the filter body with the filter's
    answer as NodeNames, byte for byte. When a prioritize body is exactly that and the watch cache has not
    changed since (its generation), the filter's entries for those nodes are the answer: no JSON decoding
    of the pod and thousands of names, no lookup per name. Any other body (another client, an extender
    before this one in the chain dropping nodes, a changed cache) takes the ordinary path."""

    SLOTS = 4  # calls of a few schedulers (or profiles) in flight at once

    def __init__(self) -> None:
        self._items: list[tuple[bytes, list[Any], OutcomeTable, int, Tier | None, int]] = []

    def expect(
        self,
        filter_body: bytes,
        kept: Sequence[str],
        entries: Sequence[Any],
        table: OutcomeTable,
        k: int,
        need: Tier | None,
        generation: int,
    ) -> None:
        # Go's encoder writes NodeNames last: `...,"NodeNames":[...]}`; node names need no escaping.
        cut = filter_body.rfind(b',"NodeNames":[')
        if cut < 0 or not filter_body.endswith(b"]}"):
            return
        expected = filter_body[:cut] + b',"NodeNames":' + orjson.dumps(list(kept)) + b"}"
        self._items.append((expected, list(entries), table, k, need, generation))
        if len(self._items) > self.SLOTS:
            del self._items[0]

    def match(
        self, body: bytes, state: ClusterState
    ) -> tuple[list[Any], OutcomeTable, int, Tier | None] | None:
        items = self._items
        for i in range(len(items) - 1, -1, -1):
            expected, entries, table, k, need, gen = items[i]
            if len(expected) == len(body) and expected == body:
                del items[i]
                # table(): expires assumptions that ran out (bumping the generation) before the check
                if state.table(k, need) is table and state.generation == gen:
                    return entries, table, k, need
                return None
        return None


def _no_view(_i: int) -> NodeView | None:
    return None
