"""Scenario 4: the extender down under the shipped `ignorable: true`, then back, nothing restarted.

While nothing listens at the extender's URL, pods still schedule: kube-scheduler logs the extender's error
("Skipping extender as it returned error and has ignorable flag set", connection refused) and places by its
own plugins only, i.e. by MostAllocated, which prefers the full-looking 4-GPU boxes whatever their wiring
(the first such pod lands on a node whose 4 GPUs are not all NVLinked, or on the one that is, by chance).
When a new extender process answers at the same URL, the same kube-scheduler process is topology-aware
again: the next 4-GPU pod goes where /explain ranks best, and NVLink is what that is while an NVLink
domain is free.
"""

from __future__ import annotations

from pathlib import Path

from lab.peers.deployed import Deployed
from lab.peers.scheduler import (
    Extender,
    Fleet,
    Scheduler,
    Stream,
    expected_best,
    most_allocated,
    running,
    shipped_weight,
)

SKIPPED = "Skipping extender as it returned error and has ignorable flag set"


def test_extender_down_pods_still_schedule_and_topology_returns_without_restarts(
    deployed: Deployed, fleet: Fleet, ns: str, tmp_path: Path
) -> None:
    weight = shipped_weight()
    ext = Extender(deployed, tmp_path)
    sched = Scheduler(deployed, tmp_path, ext.url)
    assert sched.config["extenders"][0]["ignorable"] is True  # the shipped file's setting
    with running(sched.start()):
        pid = sched.proc.popen.pid  # type: ignore[union-attr]
        # nothing listens at the extender's URL
        blind = Stream(fleet, ns, None)
        free = {n: fleet.free_mask(n) for n in fleet.nodes}
        p = blind.place("down-0", 4)
        log = sched.proc.text()
        skipped = [line for line in log.splitlines() if SKIPPED in line]
        assert skipped, f"no extender error in the scheduler's log:\n{sched.proc.tail()}"
        assert "connection refused" in skipped[-1], skipped[-1]
        assert f"127.0.0.1:{ext.port}" in skipped[-1], skipped[-1]
        print("\nscheduler:", skipped[-1][:400])
        attempt = sched.attempts(ns, "down-0")[-1]
        assert attempt.extender == {}, attempt.extender  # no extender score was added
        ma = {n: most_allocated(fleet, n, free[n], 4) for n in attempt.final}
        assert p.node in {n for n, v in ma.items() if v == max(ma.values())}, (p.node, ma)
        assert fleet.nodes[p.node].gpus == 4  # MostAllocated alone: a 4-GPU box (100) over an 8-GPU one (50)

        # the extender comes back at the same URL; the scheduler is not restarted
        with running(ext.start()):
            s = Stream(fleet, ns, ext)
            q = s.place("back-0", 4)
            best, totals = expected_best(fleet, q, weight)
            assert q.node in best, (q.node, totals)
            assert q.row["tier"] == "nvlink", q.row  # an NVLink domain was still free
            assert q.row["ties"] > 1 or q.assigned == set(q.row["gpus"]), (q.assigned, q.row)
            attempt = sched.attempts(ns, "back-0")[-1]
            assert attempt.extender == {n: q.rows()[n]["score"] for n in attempt.extender}
            assert attempt.extender, "the extender scored nothing after coming back"
        assert sched.proc.popen.pid == pid and sched.proc.alive  # type: ignore[union-attr]
    assert not fleet.kubelet.errors, fleet.kubelet.errors
