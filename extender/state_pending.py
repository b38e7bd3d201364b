"""ClusterState's Pending GPU pods and what /placeable and /freeing answer from the cache (placeable.py):
a mixin of `ClusterState` (state.py), which holds the nodes, bound pods and views it reads."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from .nodefit import excluded
from .placeable import PendingPod, Placeable, SlotsTable
from .pods import PodError, gpu_request, required_scope
from .topology.model import Tier
from .topology.scoring import freed_value, required_scope_tier

if TYPE_CHECKING:
    from .state import Assumed

_TERMINAL = ("Succeeded", "Failed")

# A Pending GPU pod: (queue order key, GPUs, required scope, the pod's node selectors and tolerations).
Unbound = tuple[tuple[int, str, str], int, Tier | None, dict[str, Any]]


class PendingPods:
    """Pending pods (not bound, not gated) asking GPUs, from the pending-pods reflector. Reads ClusterState's
    nodes (`base`, `node_meta`, `_meta_gen`), bound pods (`pods`), views and tables (`view`, `views`,
    `table`, `_fresh`, `generation`); its `_slot_tables` are marked dirty by ClusterState's `_forget`."""

    def _init_pending(self) -> None:
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
        self._excluded: dict[bytes, tuple[int, frozenset[str]]] = {}  # pod selectors -> nodes it may not use

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
