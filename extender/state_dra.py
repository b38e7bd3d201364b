"""ClusterState's DRA objects (resource.k8s.io/v1 ResourceSlices, ResourceClaims, DeviceClasses,
ResourceClaimTemplates, watched) and the views they give nodes: a DRA node's view (`draview.DraNode`), the
overlay of full Node objects' views, and the claim views explicit-claim pods are judged on. A mixin of
`ClusterState` (state.py), whose `_forget` drops these views with the node's others."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .decisions import TABLE_LIMIT as _TABLE_LIMIT
from .decisions import Outcome, _unknown, claim_outcome
from .draview import ClaimAsk, claim_ask, dra_node
from .nodeview import NodeView
from .topology import dra
from .topology.model import Tier


class DraObjects:
    """The watched DRA objects, by key (slice name; claim, template namespace/name; class name). Reads
    ClusterState's `resource`, `view` and `_fresh`; calls its `_forget` when an object changes a node's
    view; `_claim_views` and `_overlays` are dropped by that `_forget` with the node's other views."""

    def _init_dra(self) -> None:
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

    # ------------------------------------------------------------ DRA events

    @staticmethod
    def _key(obj: Any) -> str:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return ""
        ns, name = meta.get("namespace"), meta.get("name")
        return f"{ns}/{name}" if ns else str(name or "")

    @classmethod
    def _keyed(cls, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A relist's objects by key (namespace/name, or name), those without one left out."""
        return {k: o for o in items if isinstance(o, dict) and (k := cls._key(o))}

    @classmethod
    def _store(cls, store: dict[str, Any], etype: str, obj: dict[str, Any]) -> tuple[str, Any]:
        """A watch event applied to `store`: (the object's key, "" when it has none and nothing changed;
        the object stored before under it, or None)."""
        key = cls._key(obj)
        if not key:
            return "", None
        old = store.pop(key, None)
        if etype != "DELETED":
            store[key] = obj
        return key, old

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
        self.slices = self._keyed(items)
        self._index_slices()
        self._forget()

    def slice_event(self, etype: str, obj: dict[str, Any]) -> None:
        key, old = self._store(self.slices, etype, obj)
        if not key:
            return
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
        self.claims = self._keyed(items)
        self._allocated = None
        self._forget_dra()

    def claim_event(self, etype: str, obj: dict[str, Any]) -> None:
        key, old = self._store(self.claims, etype, obj)
        if not key:
            return
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
        self.classes = self._keyed(items)
        self._dra_class = None
        self._forget()

    def class_event(self, etype: str, obj: dict[str, Any]) -> None:
        if not self._store(self.classes, etype, obj)[0]:
            return
        self._dra_class = None
        self._forget()

    def templates_relisted(self, items: list[dict[str, Any]], _rv: str) -> None:
        self.templates = self._keyed(items)

    def template_event(self, etype: str, obj: dict[str, Any]) -> None:
        self._store(self.templates, etype, obj)

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
        self,
        ask: ClaimAsk | str,
        names: list[str],
        need: Tier | None,
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
        return [claim_outcome(v, ask, need) for v in vs], vs
