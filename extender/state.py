"""The extender's own view of the cluster for `nodeCacheCapable: true`: Nodes and bound GPU pods, watched.

Two reflectors (toposcale/core/kube.py: list, then watch from the list's resourceVersion, relist on 410 Gone)
keep every Node's annotations and every pod bound to a node that asks GPUs of the managed resource.

Assumed allocations: the agent publishes which device IDs are held (`toposcale.io/gpu-allocation`) only after
the kubelet has admitted a pod. A pod this scheduler just bound is therefore invisible in the annotation for a
while; until then its GPUs are *assumed* taken, as the set `scoring.choose_gpus` predicts. An assumption ends
when the node's allocation was observed `reflect_grace_s` after the kubelet admitted the pod (its
`status.startTime`; before that is known, the time the pod was first seen bound), when the pod ends or is
deleted, or after `assume_ttl_s`. So pods long running when the extender starts are not counted twice.

Stale allocations: the agent re-publishes its allocation at least every `--refresh-interval` (300 s). One
observed longer than `allocation_max_age_s` ago (0: never stale) is unknown, like no allocation at all. A
node goes stale without any watch event, so each cached view's expiry (observed + max age) is kept in a heap
and the hot path compares the earliest one with the clock: one float comparison per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from .decisions import Outcome, OutcomeTable, _unknown, outcome_for
from .draview import ClaimAsk, claim_ask, dra_decision, dra_node
from .nodefit import NodeMeta, excluded, node_meta
from .nodeview import MAX_FUTURE_S, NodeView, stale_twin, view_of_node
from .placeable import PendingPod, Placeable, SlotsTable
from .pods import PodError, gpu_request, required_scope
from .topology import dra
from .topology.model import Tier
from .topology.scoring import choose_gpus, freed_value, required_scope_tier

logger = logging.getLogger(__name__)

_TERMINAL = ("Succeeded", "Failed")
# Entries per outcome table: names the scheduler asks about that the cache lacks are kept too (answered
# "uncached" until their Node arrives), so bound them; a real cluster has at most ~5,000 nodes.
_TABLE_LIMIT = 100_000


# A Pending GPU pod: (queue order key, GPUs, required scope, the pod's node selectors and tolerations).
Unbound = tuple[tuple[int, str, str], int, Tier | None, dict[str, Any]]


@dataclass(slots=True)
class Assumed:
    uid: str
    key: str  # namespace/name
    node: str
    k: int
    ref_wall: float  # kubelet's status.startTime when known (admission), else when first seen bound
    seen_mono: float


def _rfc3339(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except (ValueError, AttributeError):
        return None


def _start_time(pod: dict[str, Any]) -> float | None:
    value = (pod.get("status") or {}).get("startTime")
    return _rfc3339(value) if isinstance(value, str) else None


class ClusterState:
    def __init__(
        self,
        resource: str,
        *,
        assume_ttl_s: float = 120.0,
        reflect_grace_s: float = 2.0,
        allocation_max_age_s: float = 900.0,
        wall: Callable[[], float] = time.time,
        freeze_gc: bool = False,
    ) -> None:
        self.resource = resource
        self.assume_ttl_s = assume_ttl_s
        self.reflect_grace_s = reflect_grace_s
        self.allocation_max_age_s = allocation_max_age_s
        self._wall = wall  # the agent's `observed` is wall-clock time
        self._freeze_gc = freeze_gc
        # (wall time a cached view's allocation turns stale, node name); entries of replaced views only
        # cause a spare recompute of that node.
        self._ages: list[tuple[float, str]] = []
        self._bad_pods: set[str] = set()  # pods with a malformed field, logged once each
        self.base: dict[str, NodeView] = {}  # node name -> view from its annotations
        self.pods: dict[str, Assumed] = {}  # pod uid -> bound GPU pod (assumed until reflected)
        self._views: dict[str, NodeView] = {}  # name -> view adjusted for assumed pods
        self._views_expire = float("inf")  # monotonic time the first assumption in `_views` runs out
        # Per (k, scope): each node's outcome and answer fragment, so a names-only request costs one C-level
        # pass over its names. A node's entries are dropped whenever its view changes (`_forget`).
        self._tables: dict[tuple[int, Tier | None], OutcomeTable] = {}
        # Bumped whenever a derived view or outcome is dropped: an answer computed at generation g is still
        # exactly the answer while the generation is g (the prioritize that follows a filter reuses it).
        self.generation = 0
        self.synced_nodes = asyncio.Event()
        self.synced_pods = asyncio.Event()
        # Pending pods (not bound, not gated) asking GPUs: /placeable counts them as taking their slots.
        # Only what placing them needs is kept: uid -> (order key, GPUs, scope, pod with its node selectors).
        self.unbound: dict[str, Unbound] = {}
        self.synced_unbound = asyncio.Event()
        self._unbound_gen = 0  # bumped by every Pending-pod event
        # /placeable answers by (k, scope, the template's selectors, generation, Pending pods, node metas): an
        # autoscaler asking every sync between which nothing changed gets the answer at once
        self._placeable_cache: dict[tuple[Any, ...], Placeable] = {}
        # running counts per (k, scope, template selectors, node metas): a node event costs that node only
        self._slot_tables: dict[tuple[Any, ...], SlotsTable] = {}
        self.node_meta: dict[str, NodeMeta] = {}  # labels, taints, cordon: which nodes a template may use
        self._meta_gen = 0  # bumped when a node comes, goes, or changes labels, taints or cordon
        self._excluded: dict[bytes, tuple[int, frozenset[str]]] = {}  # pod selectors -> nodes it may not use
        self._tasks: list[asyncio.Task[None]] = []
        self.reflectors: list[Any] = []
        self.api: Any = None
        # DRA (resource.k8s.io/v1): a node with slices while a DeviceClass serves `resource` is scored on
        # the scheduler's first-fit allocation (draview.py). Keys: slice name, claim namespace/name, class.
        self.slices: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}
        self.classes: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}  # ResourceClaimTemplates, namespace/name
        self._slices_of: dict[str, dict[str, dict[str, Any]]] = {}  # node name -> slice name -> slice
        # Per node: the view explicit-claim pods are judged on (a DraNode even without an extended-resource
        # class), and full Node objects' views with their DRA overlay: dropped with the node's other views.
        self._claim_views: dict[str, NodeView | None] = {}
        self._overlays: dict[str, tuple[NodeView, NodeView]] = {}
        self._allocated: set[dra.DeviceID] | None = None  # every device some claim holds (lazy)
        self._dra_class: tuple[str | None] | None = None  # (class serving `resource` or None,) (lazy)

    # ------------------------------------------------------------ node events

    def nodes_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        base: dict[str, NodeView] = {}
        meta: dict[str, NodeMeta] = {}
        for obj in items:
            v = view_of_node(obj, self.resource)
            if v is not None:
                base[v.name] = v
                meta[v.name] = node_meta(obj)
        self.base = base
        self.node_meta = meta
        self._meta_gen += 1
        self._forget()
        self.synced_nodes.set()
        self._freeze()

    def node_event(self, etype: str, obj: dict[str, Any]) -> None:
        v = view_of_node(obj, self.resource)
        if v is None:
            return
        if etype == "DELETED":
            self.base.pop(v.name, None)
            self.node_meta.pop(v.name, None)
            self._meta_gen += 1
        else:
            self.base[v.name] = v
            meta = node_meta(obj)
            if self.node_meta.get(v.name) != meta:  # the agent's re-publishes change annotations only
                self.node_meta[v.name] = meta
                self._meta_gen += 1
        self._forget(v.name)

    # ------------------------------------------------------------ pod events

    def pods_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        keep: dict[str, Assumed] = {}
        for obj in items:
            a = self._assumed_from(obj)
            if a is not None:
                keep[a.uid] = self.pods.get(a.uid, a)
        self.pods = keep
        self._forget()
        self.synced_pods.set()
        self._freeze()

    def _freeze(self) -> None:
        """After a (re)list, move what is cached out of the collector's reach: a full collection walks every
        tracked object, ~90 ms at 5,000 cached nodes, a pause a 2 s scheduler call can ill afford. The cache
        is acyclic and freed by reference counting; unfreeze first so objects of the previous list that
        became garbage are collectable again."""
        if self._freeze_gc and self.synced:
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def pod_event(self, etype: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        uid = meta.get("uid", "") if isinstance(meta, dict) else ""
        if not isinstance(uid, str):
            uid = ""
        old = self.pods.get(uid)
        a = None if etype == "DELETED" else self._assumed_from(obj)
        if a is None:
            if old is not None:
                del self.pods[uid]
                self._forget(old.node)
            return
        if old is None:
            self.pods[uid] = a
        elif a.ref_wall != old.ref_wall and _start_time(obj) is not None:
            old.ref_wall = a.ref_wall  # the kubelet admitted it: its allocation happened then
        self._forget(a.node)

    def _bad_pod(self, obj: Any, problem: str) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        key = f"{meta.get('namespace')}/{meta.get('name')}" if isinstance(meta, dict) else "?"
        if key in self._bad_pods:
            return
        if len(self._bad_pods) >= _TABLE_LIMIT:
            self._bad_pods.clear()
        self._bad_pods.add(key)
        logger.warning("watched pod skipped", extra={"pod": key, "problem": problem})

    def _assumed_from(self, obj: Any) -> Assumed | None:
        """The bound GPU pod this object describes; None for anything else (malformed: skipped, logged)."""
        if not isinstance(obj, dict):
            self._bad_pod(obj, "not an object")
            return None
        spec, meta, status = obj.get("spec"), obj.get("metadata"), obj.get("status")
        for field, value in (("spec", spec), ("metadata", meta), ("status", status)):
            if value is not None and not isinstance(value, dict):
                self._bad_pod(obj, f"{field} is not an object")
                return None
        spec, meta, status = spec or {}, meta or {}, status or {}
        node = spec.get("nodeName")
        if not node or status.get("phase") in _TERMINAL:
            return None
        if not isinstance(node, str):
            self._bad_pod(obj, "spec.nodeName is not a string")
            return None
        try:
            k = gpu_request(obj, self.resource)
        except PodError as exc:
            self._bad_pod(obj, str(exc))
            return None
        if k <= 0:
            return None
        started = _start_time(obj)
        return Assumed(
            uid=str(meta.get("uid", "")), key=f"{meta.get('namespace')}/{meta.get('name')}", node=node, k=k,
            ref_wall=started if started is not None else time.time(), seen_mono=time.monotonic(),
        )

    # ------------------------------------------------------------ Pending pods (for /placeable)

    def unbound_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.unbound = {}
        for obj in items:
            self.unbound_event("ADDED", obj)
        self._unbound_gen += 1
        self.synced_unbound.set()

    def unbound_event(self, etype: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        uid = meta.get("uid") if isinstance(meta, dict) else None
        if not isinstance(uid, str) or not uid:
            return
        entry = None if etype == "DELETED" else self._pending_from(obj)
        if entry is None:
            if self.unbound.pop(uid, None) is not None:
                self._unbound_gen += 1
        else:
            self.unbound[uid] = entry
            self._unbound_gen += 1

    def _pending_from(self, obj: dict[str, Any]) -> Unbound | None:
        """A Pending pod that will take GPUs when the scheduler places it; None for anything else: bound,
        ended, being deleted, gated (`schedulingGates`: not being scheduled now) or asking no GPU."""
        spec, meta, status = obj.get("spec"), obj.get("metadata"), obj.get("status")
        if not isinstance(spec, dict) or not isinstance(meta, dict):
            return None
        status = status if isinstance(status, dict) else {}
        if spec.get("nodeName") or spec.get("schedulingGates") or meta.get("deletionTimestamp"):
            return None
        if status.get("phase") in _TERMINAL:
            return None
        try:
            k = gpu_request(obj, self.resource)
            need = required_scope_tier(required_scope(obj))
        except (PodError, ValueError) as exc:
            self._bad_pod(obj, str(exc))
            return None
        if k <= 0:
            return None
        priority = spec.get("priority") if isinstance(spec.get("priority"), int) else 0
        created = meta.get("creationTimestamp") if isinstance(meta.get("creationTimestamp"), str) else ""
        keep = {k2: spec[k2] for k2 in ("nodeSelector", "affinity", "tolerations") if k2 in spec}
        # The scheduler's queue order: higher priority first, then the older pod.
        return (-priority, created, str(meta.get("uid"))), k, need, {"spec": keep}

    def placeable(self, template: dict[str, Any], k: int, need: Tier | None, scope: str) -> Placeable:
        """How many more pods like `template` (asking k GPUs, scope `need`) the cached nodes take now, the
        Pending pods placed first (placeable.py)."""
        self._fresh(time.monotonic())  # assumptions run out, allocations turn stale: the generation moves
        tkey, shut = self._excluded_by(template)
        ckey = (k, need, scope, tkey, self.generation, self._unbound_gen, self._meta_gen)
        hit = self._placeable_cache.get(ckey)
        if hit is not None:
            return hit
        names = list(self.base)

        def admits_of(pod: dict[str, Any]) -> tuple[Any, bytes]:
            key, out = self._excluded_by(pod)
            return (lambda name: name not in out), key

        pending = []
        for _, pk, pneed, pod in sorted(self.unbound.values(), key=lambda e: e[0]):
            admits, key = admits_of(pod)
            pending.append(PendingPod(pk, pneed, admits, key))
        tkey_full = (k, need, scope, tkey, self._meta_gen)
        table = self._slot_tables.get(tkey_full)
        if table is None:
            if len(self._slot_tables) >= 64:
                self._slot_tables.clear()
            table = self._slot_tables[tkey_full] = SlotsTable(k, need, scope)
            for name, v in zip(names, self.views(names), strict=True):
                if name in shut:
                    table.excluded += 1
                else:
                    table.put(name, v)
        outcomes = self.table  # filter's outcome tables, kept between requests: no view list per group
        out = table.answer(names, self.view, pending, lambda pk, pneed: outcomes(pk, pneed).outcomes(names))
        if len(self._placeable_cache) >= 64:
            self._placeable_cache.clear()
        self._placeable_cache[ckey] = out
        return out

    def freeing(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """For each bound GPU pod (namespace/name): what freeing its GPUs gives back on its node
        (scoring.freed_value; the adapter ranks scale-down victims by it). Its GPUs are known when it is the
        only GPU pod bound to the node and the node's published allocation holds exactly its count; else
        `gain` is None with the reason (device-plugin allocations are published per node, not per pod)."""
        by_key: dict[str, Assumed] = {}
        per_node: dict[str, int] = {}
        for a in self.pods.values():
            by_key[a.key] = a
            per_node[a.node] = per_node.get(a.node, 0) + 1
        out: dict[str, dict[str, Any]] = {}
        for key in keys:
            a = by_key.get(key)
            if a is None:
                out[key] = {"node": None, "gain": None, "reason": "not a GPU pod bound to a node"}
                continue
            out[key] = {"node": a.node, "gpus": a.k, **self._freed(a, per_node[a.node])}
        return out

    def _freed(self, a: Assumed, pods_on_node: int) -> dict[str, Any]:
        base = self.base.get(a.node)
        if base is None or base.topology is None:
            return {"gain": None, "reason": f"GPU topology of node {a.node} unknown"}
        if base.free_mask is None or base.allocation is None or base.allocation.allocated is None:
            return {"gain": None, "reason": f"GPU allocation of node {a.node} unknown"}
        if pods_on_node != 1:
            return {
                "gain": None,
                "reason": f"{pods_on_node} GPU pods share node {a.node}: whose GPUs are which is unpublished",
            }
        topo = base.topology
        held = base.allocation.allocated
        mask = 0
        for i, g in enumerate(topo.gpus):
            if g.id in held or (g.uuid is not None and g.uuid in held):
                mask |= 1 << i
        if mask.bit_count() != a.k:
            return {
                "gain": None,
                "reason": f"node {a.node} publishes {mask.bit_count()} GPUs held, the pod asks {a.k}",
            }
        return {"gain": round(freed_value(topo, base.free_mask, mask), 4), "reason": ""}

    def _excluded_by(self, pod: dict[str, Any]) -> tuple[bytes, frozenset[str]]:
        """The nodes this pod may not go to (nodefit.excluded), cached per distinct selectors and
        tolerations until a node comes, goes or changes its labels, taints or cordon."""
        spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
        parts = {f: spec.get(f) for f in ("nodeSelector", "affinity", "tolerations")}
        key = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
        hit = self._excluded.get(key)
        if hit is not None and hit[0] == self._meta_gen:
            return key, hit[1]
        probe = {"spec": parts}
        out = frozenset(name for name, m in self.node_meta.items() if excluded(probe, name, m) is not None)
        if len(self._excluded) >= 1024:
            self._excluded.clear()
        self._excluded[key] = (self._meta_gen, out)
        return key, out

    # ------------------------------------------------------------ DRA events

    @staticmethod
    def _key(obj: Any) -> str:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return ""
        ns, name = meta.get("namespace"), meta.get("name")
        return f"{ns}/{name}" if ns else str(name or "")

    @staticmethod
    def _slice_node(obj: dict[str, Any]) -> str | None:
        spec = obj.get("spec")
        node = spec.get("nodeName") if isinstance(spec, dict) else None
        return node if isinstance(node, str) and node else None

    def _index_slices(self) -> None:
        by_node: dict[str, dict[str, dict[str, Any]]] = {}
        for key, obj in self.slices.items():
            node = self._slice_node(obj)
            if node is not None:
                by_node.setdefault(node, {})[key] = obj
        self._slices_of = by_node

    def slices_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.slices = {self._key(o): o for o in items if isinstance(o, dict) and self._key(o)}
        self._index_slices()
        self._forget()

    def slice_event(self, etype: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if not key:
            return
        old = self.slices.pop(key, None)
        if etype != "DELETED":
            self.slices[key] = obj
        for o in (old, obj):
            node = self._slice_node(o) if isinstance(o, dict) else None
            if node is None:
                continue
            mine = self._slices_of.setdefault(node, {})
            mine.pop(key, None)
            if o is obj and etype != "DELETED":
                mine[key] = obj
            if not mine:
                del self._slices_of[node]
            self._forget(node)

    def claims_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.claims = {self._key(o): o for o in items if isinstance(o, dict) and self._key(o)}
        self._allocated = None
        self._forget_dra()

    def claim_event(self, etype: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if not key:
            return
        old = self.claims.pop(key, None)
        if etype != "DELETED":
            self.claims[key] = obj
        if self._devices_of(old) != self._devices_of(obj if etype != "DELETED" else None):
            self._allocated = None
            self._forget_dra()

    @staticmethod
    def _devices_of(claim: Any) -> set[dra.DeviceID]:
        if not isinstance(claim, dict):
            return set()
        try:
            return dra.allocated_devices([claim])
        except (AttributeError, TypeError):
            return set()

    def classes_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.classes = {self._key(o): o for o in items if isinstance(o, dict) and self._key(o)}
        self._dra_class = None
        self._forget()

    def class_event(self, etype: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if not key:
            return
        self.classes.pop(key, None)
        if etype != "DELETED":
            self.classes[key] = obj
        self._dra_class = None
        self._forget()

    def templates_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.templates = {self._key(o): o for o in items if isinstance(o, dict) and self._key(o)}

    def template_event(self, etype: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if not key:
            return
        self.templates.pop(key, None)
        if etype != "DELETED":
            self.templates[key] = obj

    def _forget_dra(self) -> None:
        for node in list(self._slices_of):
            self._forget(node)

    def dra_class(self) -> str | None:
        """The DeviceClass serving the managed resource (extendedResourceName), or None."""
        if self._dra_class is None:
            try:
                cls = dra.class_for_extended_resource(list(self.classes.values()), self.resource)
            except (AttributeError, TypeError):
                cls = None
            name = (cls.get("metadata") or {}).get("name") if isinstance(cls, dict) else None
            self._dra_class = (name if isinstance(name, str) else None,)
        return self._dra_class[0]

    def _dra_view(self, base: NodeView) -> NodeView | None:
        """`base` as a DRA node when a class serves the resource and slices serve the node, else None."""
        slices = self._slices_of.get(base.name)
        if not slices:
            return None
        cls = self.dra_class()
        if cls is None:
            return None
        node = dra_node(cls, list(slices.values()), base.name, self.allocated(), self.classes)
        return replace(base, dra=node, memo={})

    def allocated(self) -> set[dra.DeviceID]:
        if self._allocated is None:
            allocated: set[dra.DeviceID] = set()
            for c in self.claims.values():
                allocated |= self._devices_of(c)
            self._allocated = allocated
        return self._allocated

    def overlay(self, views: list[NodeView | None]) -> list[NodeView | None]:
        """Full Node objects' views (nodeCacheCapable: false) with the DRA predictor where the node is a DRA
        node: the watch mode sees the slices even when the scheduler sends whole Nodes."""
        if not self._slices_of:
            return views
        out: list[NodeView | None] = []
        for v in views:
            if v is None or v.name not in self._slices_of:
                out.append(v)
                continue
            hit = self._overlays.get(v.name)
            if hit is None or hit[0] is not v:
                dv = self._dra_view(v) or v
                if len(self._overlays) >= _TABLE_LIMIT:
                    self._overlays.clear()
                self._overlays[v.name] = hit = (v, dv)
            out.append(hit[1])
        return out

    # ------------------------------------------------------------ explicit claims

    def claim_ask(self, pod: Any) -> ClaimAsk | str | None:
        """The pod's explicit claim (draview.claim_ask over the watched templates and claims)."""
        try:
            return claim_ask(pod, self.templates, self.claims, self.classes)
        except (AttributeError, TypeError, ValueError) as exc:  # malformed pod or cached object
            return f"resource claims unreadable: {exc}"

    def _claim_view(self, v: NodeView | None) -> NodeView | None:
        """`v` with a DraNode when slices serve the node (whatever class serves the managed resource)."""
        if v is None or v.dra is not None:
            return v
        slices = self._slices_of.get(v.name)
        if not slices:
            return v
        node = dra_node(self.dra_class() or "", list(slices.values()), v.name, self.allocated(), self.classes)
        return replace(v, dra=node, memo={})

    def claim_outcomes(
        self, ask: ClaimAsk | str, names: list[str], need: Tier | None,
        views: list[NodeView | None] | None = None,
    ) -> tuple[list[Outcome], list[NodeView | None]]:
        """Outcome per node for a pod asking devices through an explicit claim (`views`: full Node objects'
        views; else the cache's, by name). A node no slice serves passes with score 0: the scheduler's own
        DRA plugin decides whether it can host the claim at all."""
        scoped = need is not None
        if views is None:
            self._fresh(time.monotonic())
            vs = []
            for name in names:
                if name not in self._claim_views:
                    if len(self._claim_views) >= _TABLE_LIMIT:
                        self._claim_views.clear()
                    self._claim_views[name] = self._claim_view(self.view(name))
                vs.append(self._claim_views[name])
        else:
            vs = [self._claim_view(v) for v in views]
        if isinstance(ask, str):
            return [_unknown("dra", ask, scoped)] * len(vs), vs
        return [self._claim_outcome(v, ask, need) for v in vs], vs

    @staticmethod
    def _claim_outcome(v: NodeView | None, ask: ClaimAsk, need: Tier | None) -> Outcome:
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

    # ------------------------------------------------------------ reads

    def _forget(self, name: str | None = None) -> None:
        """Drop derived views and outcomes: of one node, or of all (relist, an assumption ran out)."""
        self.generation += 1
        if name is None:
            self._claim_views.clear()
            self._overlays.clear()
            self._views.clear()
            self._tables.clear()
            self._slot_tables.clear()
            self._views_expire = float("inf")
            self._ages.clear()
            return
        self._views.pop(name, None)
        self._claim_views.pop(name, None)
        self._overlays.pop(name, None)
        for table in self._tables.values():
            table.drop(name)
        for slots in self._slot_tables.values():
            slots.dirty.add(name)

    def _fresh(self, now: float) -> None:
        if now >= self._views_expire:
            self._forget()  # an assumption ran out: recompute lazily
        ages = self._ages
        if ages and ages[0][0] <= self._wall():
            self._expire_ages()

    def _expire_ages(self) -> None:
        """Drop the cached views (and outcomes) of nodes whose allocation has just turned stale."""
        ages, wall = self._ages, self._wall()
        while ages and ages[0][0] <= wall:
            self._forget(heapq.heappop(ages)[1])

    def _compact_ages(self) -> None:
        """Keep one expiry per cached view: entries of views replaced since only cost memory."""
        limit = self.allocation_max_age_s
        self._ages = [
            (v.observed_at + limit, name)
            for name, v in self._views.items()
            if v.observed_at is not None and not v.stale
        ]
        heapq.heapify(self._ages)

    def table(self, k: int, need: Tier | None) -> OutcomeTable:
        """The outcomes (and answer fragments) of cached nodes for pods asking k GPUs with scope `need`: the
        hot path of names-only requests. Valid until the next event or await."""
        self._fresh(time.monotonic())
        table = self._tables.get((k, need))
        if table is None:

            def fill(name: str) -> Outcome:
                return outcome_for(self.view(name), k, need)

            table = self._tables[(k, need)] = OutcomeTable(fill, _TABLE_LIMIT)
        return table

    def outcomes(self, names: list[str], k: int, need: Tier | None) -> list[Outcome]:
        """The outcome for each named node, in order."""
        return list(self.table(k, need).outcomes(names))

    def view(self, name: str) -> NodeView | None:
        """The node's view with assumed allocations taken out of its free GPUs; None when not cached."""
        now = time.monotonic()
        self._fresh(now)
        hit = self._views.get(name)
        if hit is not None:
            return hit
        base = self.base.get(name)
        if base is None:
            return None
        if self._slices_of:
            dv = self._dra_view(base)
            if dv is not None:  # devices held come from the claims, not the allocation annotation
                self._views[name] = dv
                return dv
        limit = self.allocation_max_age_s
        if limit > 0 and base.observed_at is not None:
            expires = base.observed_at + limit
            if self._wall() >= expires or base.observed_at > self._wall() + MAX_FUTURE_S:
                base = stale_twin(base, limit, future=self._wall() < expires)  # allocation unknown
            else:
                heapq.heappush(self._ages, (expires, name))
        v, valid = self._adjust(base, now)
        self._views[name] = v
        if len(self._ages) > 4 * len(self._views) + 1024:
            self._compact_ages()  # amortized: only after 3x the cached views' worth of replacements
        self._views_expire = min(self._views_expire, valid)
        return v

    def views(self, names: list[str]) -> list[NodeView | None]:
        """`view` for many nodes at once (the hot path of names-only requests)."""
        self._fresh(time.monotonic())
        get = self._views.get
        view = self.view
        return [get(name) or view(name) for name in names]

    def _adjust(self, base: NodeView, now: float) -> tuple[NodeView, float]:
        valid_until = float("inf")
        if base.topology is None or base.free_mask is None or base.allocation is None:
            return base, valid_until
        observed = _rfc3339(base.allocation.observed)
        free = base.free_mask
        pending = sorted(
            (a for a in self.pods.values() if a.node == base.name), key=lambda a: (a.seen_mono, a.uid)
        )
        # The annotation lists as many held GPUs as the node's bound pods ask: an observation no earlier than
        # a pod's admission then holds that pod too. Without this, an allocation observed within the grace of
        # the admission (the agent re-publishes only on change) left the pod counted twice until the TTL.
        held = base.allocation.allocated
        covered = held is not None and len(held) >= sum(a.k for a in pending)
        for a in pending:
            expires = a.seen_mono + self.assume_ttl_s
            if now >= expires:
                continue
            if observed is not None and observed >= a.ref_wall + self.reflect_grace_s:
                continue  # the agent has looked at the kubelet since this pod was bound
            if covered and observed is not None and observed >= a.ref_wall:
                continue  # observed since its admission, with every bound pod's GPUs listed
            taken = choose_gpus(base.topology, free, a.k)
            if taken == 0:
                free = 0  # more assumed than free: nothing left to offer
            free &= ~taken
            valid_until = min(valid_until, expires)
        if free == base.free_mask:
            return base, valid_until
        return replace(base, free_mask=free, memo={}), valid_until

    def names(self) -> list[str]:
        return list(self.base)

    @property
    def synced(self) -> bool:
        return self.synced_nodes.is_set() and self.synced_pods.is_set()

    # ------------------------------------------------------------ lifecycle

    async def start(self, api: Any) -> None:
        """Run the Node and Pod reflectors over `api` (a kubernetes-asyncio ApiClient) until `stop`."""
        from kubernetes_asyncio import client

        from toposcale.core.kube import Reflector

        self.api = api
        core = client.CoreV1Api(api)
        nodes = Reflector(
            core.list_node, on_relist=self.nodes_relisted, on_event=self.node_event, name="nodes"
        )
        pods = Reflector(
            core.list_pod_for_all_namespaces,
            on_relist=self.pods_relisted,
            on_event=self.pod_event,
            name="pods",
            field_selector="spec.nodeName!=",
        )
        resource = client.ResourceV1Api(api)
        dra_reflectors = [
            Reflector(
                resource.list_resource_slice, on_relist=self.slices_relisted, on_event=self.slice_event,
                name="resourceslices",
            ),
            Reflector(
                resource.list_resource_claim_for_all_namespaces, on_relist=self.claims_relisted,
                on_event=self.claim_event, name="resourceclaims",
            ),
            Reflector(
                resource.list_device_class, on_relist=self.classes_relisted, on_event=self.class_event,
                name="deviceclasses",
            ),
            Reflector(
                resource.list_resource_claim_template_for_all_namespaces,
                on_relist=self.templates_relisted, on_event=self.template_event,
                name="resourceclaimtemplates",
            ),
        ]
        unbound = Reflector(
            core.list_pod_for_all_namespaces,
            on_relist=self.unbound_relisted,
            on_event=self.unbound_event,
            name="pending-pods",
            field_selector="spec.nodeName=",
        )
        self.reflectors = [nodes, pods, unbound, *dra_reflectors]
        self._tasks = [asyncio.create_task(r.run(), name=f"reflector-{r.name}") for r in self.reflectors]

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Pod object (for /explain of a pending pod, which the bound-pod watch does not hold)."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        if self.api is None:
            return None
        try:
            pod = await client.CoreV1Api(self.api).read_namespaced_pod(name, namespace)
            return self.api.sanitize_for_serialization(pod)  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
