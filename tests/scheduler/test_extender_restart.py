"""Scenario 5: the extender restarted mid-stream in watch mode (the shipped `nodeCacheCapable: true`).

A stream of pods; the extender is killed (SIGKILL) in the middle of it, and pods keep coming: the scheduler
binds them without it (`ignorable: true`) and the kubelet gives them GPUs. The new extender process reaches
the API server through a relay that holds its connections for a while, so that its unsynced state is
visible: `/readyz` answers 503 naming what is not listed yet. Once the relay lets it list, `/readyz` is 200
and decisions are right again: the pods bound while it was down are counted exactly once (its view of every
node, cache and assumptions included, equals what the published annotations say and what the kubelet
holds; every GPU set it predicts is free on the kubelet), and the next pods land where /explain ranks best
on the GPUs it predicted.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from lab.peers.deployed import Deployed
from lab.peers.scheduler import (
    Extender,
    Fleet,
    Scheduler,
    Stream,
    TcpGate,
    expected_best,
    running,
    shipped_weight,
    wait_for,
)


def test_extender_restart_mid_stream_readyz_then_right_decisions_no_double_allocation(
    deployed: Deployed, fleet: Fleet, ns: str, tmp_path: Path
) -> None:
    weight = shipped_weight()
    cluster = deployed.cluster
    gate = TcpGate(cluster.ports["kube-apiserver"])
    kc = gate.kubeconfig(
        deployed.kubeconfigs["toposcale-extender"], tmp_path / "extender-via-gate.kubeconfig"
    )
    first = Extender(deployed, tmp_path, kubeconfig=kc)
    sched = Scheduler(deployed, tmp_path, first.url)
    try:
        with running(sched.start()):
            s = Stream(fleet, ns, first)
            with running(first.start()):
                for i in range(2):
                    p = s.place(f"before-{i}", 4)
                    assert p.node in expected_best(fleet, p, weight)[0]
                first.stop(signal.SIGKILL)

            # down: pods keep coming, bound without the extender
            blind = Stream(fleet, ns, None)
            down = [blind.place("down-0", 2), blind.place("down-1", 4)]
            assert all(p.assigned for p in down)

            # back, but its list requests are held at the relay: not ready, and it says why
            gate.open.clear()
            second = Extender(deployed, tmp_path, port=first.port, kubeconfig=kc)
            with running(second.start(wait_ready=False)):

                def answering() -> tuple[int, str] | None:
                    assert second.proc.alive, second.proc.tail()
                    try:
                        return second.readyz()
                    except OSError:
                        return None

                code, body = wait_for(answering, 60, "the restarted extender to answer /readyz")
                assert code == 503, body
                status = json.loads(body)
                assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable", status
                assert "watch cache not synced yet" in status["message"], status
                time.sleep(1.0)  # still held: still 503
                assert second.readyz()[0] == 503
                assert gate.held >= 1
                gate.open.set()
                second.wait_ready(30)

                s.extender = second
                for i in range(2):
                    p = s.place(f"after-{i}", 4)
                    best, totals = expected_best(fleet, p, weight)
                    assert p.node in best, (p.node, totals)
                    # every set the extender predicts is free on the kubelet: nothing counted twice or missed
                    for node, row in p.rows().items():
                        if node in fleet.nodes and row.get("gpus"):
                            held = {g.id for g in fleet.nodes[node].topo.gpus} - p.free_ids(fleet, node)
                            assert not set(row["gpus"]) & held, (node, row, held)
                    if p.row["ties"] == 1:
                        assert p.assigned == set(p.row["gpus"]), (p.assigned, p.row)
                    else:
                        may = fleet.device_plugin_may_return(p.node, p.free_before[p.node], p.gpus)
                        assert p.assigned in may, (p.assigned, may)
        assert not fleet.kubelet.errors, fleet.kubelet.errors  # no pod was given a GPU another one holds
    finally:
        gate.close()
