"""Scenario 3: `toposcale.io/required-scope: nvlink` that no free node can meet.

The fleet's NVLink domains of 4 GPUs are on the HGX (NVSwitch, 8 GPUs) and the H100 VM (NVSwitch, 4); both
are filled, so kube-scheduler's own NodeResourcesFit turns them away, and every node with 4 free GPUs has
no 4 GPUs on NVLink (bridged pairs, PCIe only): the extender answers those FailedAndUnresolvable. The pod
stays Pending, and the scheduler's FailedScheduling event carries the extender's reason text, the same text
`/explain` gives per node. Deleting one of the HGX's pods frees 4 NVSwitch GPUs: the scheduler retries on
its own and the pod lands there, on the freed GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.peers.deployed import Deployed
from lab.peers.scheduler import Extender, Fleet, Scheduler, Stream, failed_scheduling, running, wait_for


@pytest.mark.timeout(600)
def test_unmeetable_nvlink_scope_stays_pending_with_the_extenders_reason_then_schedules(
    deployed: Deployed, fleet: Fleet, ns: str, tmp_path: Path
) -> None:
    ext = Extender(deployed, tmp_path)
    sched = Scheduler(deployed, tmp_path, ext.url)
    api = fleet.api
    with running(ext.start(), sched.start()):
        s = Stream(fleet, ns, ext)
        fill = [
            s.place("fill-hgx-0", 4, node="e2e-hgx"),
            s.place("fill-hgx-1", 4, node="e2e-hgx"),
            s.place("fill-h100vm", 4, node="e2e-h100vm"),
        ]
        assert [p.node for p in fill] == ["e2e-hgx", "e2e-hgx", "e2e-h100vm"]

        s.create("tp4-nvlink", 4, scope="nvlink")
        doc = s.explain_now("tp4-nvlink")
        rows = {r["node"]: r for r in doc["nodes"] if r["node"] in fleet.nodes}
        assert doc["requiredScope"] == "nvlink"
        never = {n: r["reason"] for n, r in rows.items() if r["outcome"] == "never-fits"}
        assert set(never) == {"e2e-a6000", "e2e-a100", "e2e-l40s"}, rows
        assert "at most 2 connected by NVLink; pod needs 4 (required-scope nvlink)" in never["e2e-a6000"]
        s.ungate("tp4-nvlink")

        def event() -> str | None:
            msgs = failed_scheduling(api, ns, "tp4-nvlink")
            return msgs[-1] if msgs else None

        msg = wait_for(event, 30, "a FailedScheduling event for tp4-nvlink")
        print("\nFailedScheduling:", msg)
        # kube-scheduler groups nodes by reason: "0/5 nodes are available: 2 Insufficient nvidia.com/gpu,
        # 1 <extender reason>, ..."; every reason the extender gave is there verbatim
        assert msg.startswith("0/5 nodes are available"), msg
        assert "2 Insufficient nvidia.com/gpu" in msg, msg
        for node, reason in never.items():
            assert reason in msg, f"{node}'s reason {reason!r} is not in the event: {msg}"
        pod = api.pod(ns, "tp4-nvlink")
        assert not pod["spec"].get("nodeName")
        cond = {c["type"]: c for c in pod["status"].get("conditions", [])}["PodScheduled"]
        assert (cond["status"], cond["reason"]) == ("False", "Unschedulable"), cond

        freed = fill[0].assigned
        api.delete(f"/api/v1/namespaces/{ns}/pods/fill-hgx-0")
        # The deletion requeues the pod at once; if the extender's watch has not yet seen it (its process
        # slower than the scheduler's under load: seen once at load 3, "pod needs 4 GPUs, 0 free" on
        # e2e-hgx 0.6 s after the delete), the pod is unschedulable again with no later event to requeue
        # it, and the scheduler's own flush retries it after podMaxInUnschedulablePodsDuration (5 min,
        # checked every 30 s). extender/README.md ("A deletion the extender has not seen yet") says so.
        node = s.wait_running("tp4-nvlink", timeout=360)
        got = wait_for(lambda: fleet.kubelet.assignment(f"{ns}/tp4-nvlink"), 30, "tp4-nvlink's GPUs")
        assert node == "e2e-hgx"
        assert set(got.gpus) == freed
        fleet.wait_published()
    assert not fleet.kubelet.errors, fleet.kubelet.errors
