"""A finite fleet under the autoscaling benchmark (issue 29, section 4): placement as the extender and device
plugin do it, the node autoscaler, the placement cap without a cascade, toposcale's scale-down victims, and
`--fleet` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from toposcale.extender.topology.topo_text import parse_topo_text

from toposcale.autoscale.cluster import ClusterView, SimConfig, Simulation
from toposcale.autoscale.fleet import Capped, FleetSpec, FleetState, toposcale_victims
from toposcale.autoscale.traces import Trace
from toposcale.cli import main
from toposcale.serving.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
TOPO = ROOT / "tests" / "fixtures" / "topologies"
P4 = load_profile("rtx4090d-tp4")  # 4 GPUs a replica


def topo(name: str):
    return parse_topo_text((TOPO / f"{name}.txt").read_text())


def spec(*names: str, provision_s: float = 100.0, allowance: int = 1) -> FleetSpec:
    nodes = tuple((f"{n}-{i}", topo(n)) for i, n in enumerate(names))
    return FleetSpec(nodes, (names[0], topo(names[0])), provision_s, allowance)


def test_a_replica_goes_where_the_extender_scores_best_and_stays_pending_when_nothing_fits() -> None:
    f = FleetState(spec("l40s-4gpu-two-per-socket", "hgx-h100-nvswitch-8gpu"), 4)
    first = f.place()
    assert first is not None and f.names[first.node] == "hgx-h100-nvswitch-8gpu-1" and first.best
    assert f.placeable() == 2  # the HGX's other half and the L40S box: the extender's own count
    assert f.place() is not None and f.place() is not None
    assert f.place() is None and f.placeable() == 0
    f.release(first)
    assert f.placeable() == 1
    assert f.stats() == {"nodes_added": 0.0, "best_tier_share": 1.0}


def test_the_node_autoscaler_orders_a_node_per_waiting_replica_and_it_arrives_later() -> None:
    f = FleetState(spec("l40s-4gpu-two-per-socket", provision_s=100.0), 4)
    assert f.place() is not None and f.place() is None
    f.tick(10.0, unplaced=1)
    f.tick(50.0, unplaced=1)  # already ordered: no second node
    assert f.ordered == [110.0] and f.nodes_added == 0
    f.tick(110.0, unplaced=1)
    assert f.nodes_added == 1 and f.place() is not None


class Wants:
    name, interval_s = "wants", 15.0

    def __init__(self, n: int) -> None:
        self.n = n

    def decide(self, t: float, view: ClusterView) -> int:
        return self.n


def idle(seconds: float) -> Trace:
    return Trace("idle", (0.0,), (100,), (10,))


def test_the_cap_leaves_at_most_the_allowance_waiting_sync_after_sync() -> None:
    fleet = spec("l40s-4gpu-two-per-socket", provision_s=10_000.0)  # no node arrives within the run
    cfg = SimConfig(P4, initial_replicas=1, cold_start_s=10, until_s=120, fleet=fleet, max_replicas=20)
    capped = Simulation(cfg, idle(120), Capped(Wants(8), allowance=1)).run()
    assert capped.peak_pending == 1 and capped.spec == 2
    uncapped = Simulation(cfg, idle(120), Wants(8)).run()
    assert uncapped.peak_pending == 7
    assert uncapped.pending_replica_s > 6 * capped.pending_replica_s


def test_toposcale_victims_are_the_idle_replica_whose_gpus_give_most_back() -> None:
    from toposcale.serving.model import Request

    fleet = spec("hgx-h100-nvswitch-8gpu", "l40s-4gpu-two-per-socket", provision_s=1e9)
    cfg = SimConfig(P4, initial_replicas=3, until_s=1, fleet=fleet, victims="toposcale")
    sim = Simulation(cfg, idle(1), Wants(3))
    hgx = [r for r in sim.replicas if r.slot.node == 0]
    (l40s,) = [r for r in sim.replicas if r.slot.node == 1]
    assert len(hgx) == 2  # the NVSwitch box's two halves first, then the PCIe box
    # equally idle: freeing an HGX half gives back a whole NVSwitch 4-set, more than the L40S box's
    assert sim.fleet.gain(hgx[0].slot) > sim.fleet.gain(l40s.slot) > 0
    assert toposcale_victims(sim.replicas, sim.fleet, 1)[0] in hgx
    # requests in flight come first: busy HGX replicas stay, the idle L40S one goes
    for r in hgx:
        r.model.submit(Request(arrival=0.0, prompt=100, output=10))
    assert toposcale_victims(sim.replicas, sim.fleet, 1) == [l40s]
    # the simulated scale-down follows it (victims="toposcale")
    sim.set_spec(0.5, 2)
    assert sum(r.phase == "Draining" for r in sim.replicas) == 1 and l40s.phase == "Draining"


def test_fleet_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{i * 0.5:.1f},500,50\n" for i in range(60))
    )
    fleet = ROOT / "examples" / "fleets" / "autoscale-small.yaml"
    code = main(
        [
            "simulate",
            "autoscale",
            "--trace",
            str(trace),
            "--profile",
            "rtx4090d-tp4",
            "--seeds",
            "1",
            "--fleet",
            str(fleet),
            "--policies",
            "toposcale,toposcale-uncapped",
            "--jobs",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| nodes added | best tier |" in out and "| toposcale-uncapped |" in out
    code = main(["simulate", "autoscale", "--trace", str(trace), "--policies", "toposcale-uncapped"])
    err = capsys.readouterr().err
    assert code == 2 and "toposcale-uncapped run only with --fleet" in err
    code = main(["simulate", "autoscale", "--trace", str(trace), "--fleet", str(fleet), "--node-kind", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "--node-kind 'x'" in err


@pytest.mark.parametrize(("victims", "aborted"), [("rs", True), ("toposcale", False)])
def test_the_replicasets_victim_aborts_what_toposcales_lets_finish(victims: str, aborted: bool) -> None:
    """Three replicas, the one the ReplicaSet ranks first (the most recently ready; started together here,
    the first) serving a long request that outlives a 5 s grace; toposcale's victim is an idle one."""
    from toposcale.serving.model import Request

    fleet = spec("hgx-h100-nvswitch-8gpu", "hgx-h100-nvswitch-8gpu", provision_s=1e9)
    cfg = SimConfig(P4, initial_replicas=3, grace_s=5, until_s=60, fleet=fleet, victims=victims)  # type: ignore
    sim = Simulation(cfg, idle(60), Wants(2))
    sim.replicas[0].model.submit(Request(arrival=0.0, prompt=200, output=5000))
    sim.run()
    assert (sim.aborted > 0) is aborted


def test_the_auto_rate_scale_is_the_traces_not_the_fleets() -> None:
    """`--rate-scale auto` sizes the trace so its busiest minute needs about 6 replicas of the profile; a
    finite fleet (room for 2 replicas here) must not shrink it (a search that waits for nodes would ask for
    ever more replicas, and the scale would fall until the busiest minute fit the first nodes)."""
    import dataclasses

    from toposcale.autoscale.bench import BenchConfig, default_scale

    t = [i * 0.25 for i in range(480)] + [120 + i * 0.05 for i in range(1200)]
    trace = Trace("burst", tuple(t), (600,) * len(t), (60,) * len(t))
    cfg = BenchConfig(cold_start_s=30.0)
    small = dataclasses.replace(cfg, fleet=spec("rtx4090-8gpu-node-per-socket", provision_s=300.0))
    assert default_scale(trace, P4, small, None) == pytest.approx(default_scale(trace, P4, cfg, None))
