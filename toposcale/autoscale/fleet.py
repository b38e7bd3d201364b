"""A finite, topology-varied GPU fleet for the autoscaling benchmark (issue 29, section 4). Pure, no I/O.

`toposcale simulate autoscale --fleet FILE` replaces "a node has room for --max-replicas replicas" with the
simulator's fleets (toposcale/simulate/fleet.py: nodes from real `nvidia-smi topo -m` outputs):

- **Placement**: a Pending replica goes to the node the extender scores best for it (`scoring.decide_raw`,
  ties: the fuller node, as the shipped profile's MostAllocated packs, then the first), and gets the GPUs
  the device plugin is predicted to hand out (`choose_gpus`); it stays Pending while no node fits.
- **Node autoscaler**: while replicas are Pending that no node fits, one node of `node_kind` (default: the
  fleet file's first type) is ordered per such replica beyond those already ordered, and arrives
  `provision_s` later (--node-provision, default 300 s: cluster-autoscaler or Karpenter plus the node's
  boot, driver and device plugin). Nodes are never removed (the benchmark's traces are short).
- **The cap** (`Capped`): the policy's count is cut to ready + starting + Pending + placeable + allowance,
  `placeable` from the extender's own function (`extender/placeable.py`) over the fleet as it is: the
  adapter's rule (adapter/placement.py).
- **Victims**: `rs` is the ReplicaSet controller's own choice (the most recently ready first, the
  simulator's default); `toposcale` ranks as the adapter's pod-deletion-cost does (adapter/victims.py:
  fewest requests in flight, then what freeing its GPUs gives back, `scoring.freed_value`).

Reported beside the SLO figures (`stats`): nodes added, and the share of placements on their node's best
tier for the replica's GPU count (`scoring.best_tier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from toposcale.extender.nodeview import NodeView
from toposcale.extender.placeable import placeable
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.scoring import best_tier, choose_gpus, decide_raw, freed_value, set_tier

DEFAULT_PROVISION_S = 300.0
DEFAULT_ALLOWANCE = 1


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """The benchmark's cluster: the fleet's nodes (name, topology), the kind a node autoscaler adds."""

    nodes: tuple[tuple[str, Topology], ...]
    node_kind: tuple[str, Topology]
    provision_s: float = DEFAULT_PROVISION_S
    allowance: int = DEFAULT_ALLOWANCE

    @classmethod
    def from_fleet(
        cls,
        fleet: Any,
        provision_s: float = DEFAULT_PROVISION_S,
        kind: str | None = None,
        allowance: int = DEFAULT_ALLOWANCE,
    ) -> FleetSpec:
        """From a toposcale.simulate.fleet.Fleet; `kind` names the node type the autoscaler adds."""
        nodes = tuple((f"{t.name}-{i}", t.topology) for t in fleet.types for i in range(t.count))
        types = {t.name: t for t in fleet.types}
        if kind is not None and kind not in types:
            raise ValueError(f"--node-kind {kind!r}: the fleet has {', '.join(types)}")
        t = types[kind] if kind is not None else fleet.types[0]
        return cls(nodes, (t.name, t.topology), provision_s, allowance)


@dataclass(slots=True)
class Slot:
    node: int
    mask: int
    best: bool  # on its node's best tier for its GPU count


@dataclass(slots=True)
class FleetState:
    spec: FleetSpec
    k: int  # GPUs per replica
    names: list[str] = field(default_factory=list)
    topos: list[Topology] = field(default_factory=list)
    free: list[int] = field(default_factory=list)
    ordered: list[float] = field(default_factory=list)  # arrival times of nodes being provisioned
    nodes_added: int = 0
    placements: int = 0
    best_placements: int = 0

    def __post_init__(self) -> None:
        for name, topo in self.spec.nodes:
            self._add(name, topo)

    def _add(self, name: str, topo: Topology) -> None:
        self.names.append(name)
        self.topos.append(topo)
        self.free.append((1 << len(topo)) - 1)

    # ---- the scheduler with the extender, and the device plugin ----------------------------------------
    def place(self) -> Slot | None:
        """The node the extender scores best (ties: the fuller, then the first) and the predicted GPUs."""
        best: tuple[int, int, int] | None = None
        for i, (topo, free) in enumerate(zip(self.topos, self.free, strict=True)):
            if free.bit_count() < self.k:
                continue
            d = decide_raw(topo, free, self.k, None)
            if not d.fits:
                continue
            key = (d.score, -free.bit_count(), -i)
            if best is None or key > best:
                best = key
        if best is None:
            return None
        i = -best[2]
        mask = choose_gpus(self.topos[i], self.free[i], self.k)
        self.free[i] &= ~mask
        top = best_tier(self.topos[i], self.k)
        on_best = top is None or set_tier(self.topos[i], mask) <= top
        self.placements += 1
        self.best_placements += on_best
        return Slot(i, mask, on_best)

    def release(self, slot: Slot) -> None:
        self.free[slot.node] |= slot.mask

    def gain(self, slot: Slot) -> float:
        """What freeing this replica's GPUs gives back on its node (the extender's /freeing)."""
        return freed_value(self.topos[slot.node], self.free[slot.node], slot.mask)

    def placeable(self) -> int:
        """How many more replicas fit now: the extender's own count over the fleet as it is."""
        views = [
            NodeView(name, topo, None, free, None)
            for name, topo, free in zip(self.names, self.topos, self.free, strict=True)
        ]
        return placeable(views, self.k, None).total("any")

    # ---- the node autoscaler ---------------------------------------------------------------------------
    def tick(self, t: float, unplaced: int) -> None:
        """Nodes ordered earlier arrive; one more is ordered per Pending replica no node fits (beyond those
        already on their way)."""
        while self.ordered and self.ordered[0] <= t + 1e-9:
            self.ordered.pop(0)
            self.nodes_added += 1
            name, topo = self.spec.node_kind
            self._add(f"{name}-added-{self.nodes_added}", topo)
        per_node = max(1, len(self.spec.node_kind[1]) // max(self.k, 1))
        wanted = -(-unplaced // per_node)  # ceil: nodes for every unplaced replica
        for _ in range(wanted - len(self.ordered)):
            self.ordered.append(t + self.spec.provision_s)

    def stats(self) -> dict[str, float]:
        share = self.best_placements / self.placements if self.placements else 1.0
        return {"nodes_added": float(self.nodes_added), "best_tier_share": share}


# ---- policies on a fleet -------------------------------------------------------------------------------

Victims = Literal["rs", "toposcale"]


@dataclass(frozen=True, slots=True)
class Variant:
    base: str  # the policy (policies.NAMES)
    cap: bool  # cut at ready + starting + pending + placeable + allowance
    victims: Victims


# With --fleet, `toposcale` runs capped with its own victims; these are the comparisons of the goals.
VARIANTS = {
    "toposcale-uncapped": Variant("toposcale", cap=False, victims="toposcale"),
    "toposcale-rs-victims": Variant("toposcale", cap=True, victims="rs"),
}


def variant(name: str) -> Variant:
    """How a policy name runs on a fleet: every policy as it is (no cap, the ReplicaSet's victims), except
    toposcale (capped, its own victims) and the two variants above."""
    if name in VARIANTS:
        return VARIANTS[name]
    if name == "toposcale":
        return Variant("toposcale", cap=True, victims="toposcale")
    return Variant(name, cap=False, victims="rs")


class Capped:
    """A policy whose count is cut to what can be placed (adapter/placement.py's rule)."""

    def __init__(self, inner: Any, allowance: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.interval_s = inner.interval_s
        self.allowance = allowance
        self.held_back = 0

    def decide(self, t: float, view: Any) -> int:
        want = int(self.inner.decide(t, view))
        placeable = view.placeable
        if placeable is None:
            return want
        there = view.active  # ready + starting + Pending (not draining)
        # a Pending replica here is one no node takes (the fleet places every one that fits at once): no
        # room (adapter/placement.py's rule: at most `allowance` wait for a node, sync after sync)
        room = there - view.pending + placeable + self.allowance
        if want > room:
            self.held_back = want - room
            return max(room, min(want, there))
        self.held_back = 0
        return want


def toposcale_victims(active: list[Any], fleet: FleetState, excess: int) -> list[Any]:
    """The replicas a scale-down by `excess` removes when toposcale's pod-deletion-cost ranks them: Pending
    and Starting ones first (the ReplicaSet controller ranks them before any Ready pod whatever the cost),
    then the Ready ones in adapter/victims.py's order (requests in flight, then what freeing gives back)."""
    from toposcale.adapter.victims import Replica as Ranked
    from toposcale.adapter.victims import ranking

    early = [r for r in active if r.phase in ("Pending", "Starting")]
    early.sort(key=lambda r: (r.phase != "Pending", -r.created))
    ready = {str(r.rid): r for r in active if r.phase == "Ready"}
    ranked = ranking(
        [
            Ranked(name, float(r.model.outstanding), fleet.gain(r.slot) if r.slot is not None else None)
            for name, r in ready.items()
        ]
    )
    return (early + [ready[n] for n in ranked])[:excess]
