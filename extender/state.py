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

from .decisions import TABLE_LIMIT as _TABLE_LIMIT
from .decisions import Outcome, OutcomeTable, outcome_for
from .nodefit import NodeMeta, node_meta
from .nodeview import MAX_FUTURE_S, NodeView, stale_twin, view_of_node
from .pods import PodError, gpu_request
from .state_dra import DraObjects
from .state_pending import PendingPods
from .topology.model import Tier
from .topology.scoring import choose_gpus

logger = logging.getLogger(__name__)

_TERMINAL = ("Succeeded", "Failed")


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


class ClusterState(PendingPods, DraObjects):
    """The watch cache, by concern: Nodes, bound GPU pods and their assumptions, the views and outcome
    tables derived from them (here); Pending pods, /placeable and /freeing (`PendingPods`,
    state_pending.py); DRA objects and the views they give nodes (`DraObjects`, state_dra.py)."""

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
        self.node_meta: dict[str, NodeMeta] = {}  # labels, taints, cordon: which nodes a template may use
        self._meta_gen = 0  # bumped when a node comes, goes, or changes labels, taints or cordon
        self._init_pending()  # state_pending.py: Pending pods, /placeable's caches
        self._init_dra()  # state_dra.py: slices, claims, classes, templates, their views
        self._tasks: list[asyncio.Task[None]] = []
        self.reflectors: list[Any] = []
        self.api: Any = None

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
