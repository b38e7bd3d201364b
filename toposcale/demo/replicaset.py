"""The demo's ReplicaSet controller loop: Pods created up to spec.replicas, the excess terminated in
controller.ActivePodsWithRanks order, terminations finished after the grace period."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from . import view
from .fleet import SimNode
from .vllm_sim import ReplicaServer, SimReplica

# With a Prometheus (file_sd), a terminating replica keeps serving /metrics this long (real seconds) after it
# left the target list, as a Kubernetes pod's container does while Prometheus' service discovery drops it:
# stopped at once, a scrape already due meets a closed port (up == 0), which the adapter rightly reports
# as a pod it cannot read.
SD_DROP_S = 3.0

logger = logging.getLogger("toposcale.demo")


@dataclass(slots=True)
class Replica:
    pod: str
    created: float
    phase: str = "Pending"  # Pending -> Starting -> Ready -> Terminating
    node: SimNode | None = None
    gpus: list[int] = field(default_factory=list)
    started: float = 0.0
    ready_at: float = 0.0
    terminating_at: float = 0.0
    sim: SimReplica | None = None
    server: ReplicaServer | None = None


class ReplicaSetLoop:
    """The ReplicaSet controller (a mixin of runner.Demo)."""

    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.phase != "Terminating"]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.phase == "Ready"]

    def reconcile_replicaset(self, now: float) -> None:
        active = self.active()
        for _ in range(self.spec_replicas - len(active)):
            pod = f"vllm-qwen-{self.next_id}"
            self.next_id += 1
            self.replicas[pod] = Replica(pod, created=now)
        excess = len(active) - self.spec_replicas
        if excess > 0:
            for r in sorted(active, key=self._deletion_rank)[:excess]:
                self.terminate(r, now)

    def _deletion_rank(self, r: Replica) -> tuple[Any, ...]:
        """controller.ActivePodsWithRanks order: unscheduled, not ready, more siblings on the node, then the
        most recently ready, go first."""
        siblings = sum(1 for o in self.active() if o.node is not None and o.node is r.node)
        return (r.node is not None, r.phase == "Ready", -siblings, -r.ready_at)

    def terminate(self, r: Replica, now: float) -> None:
        if r.phase == "Pending":
            del self.replicas[r.pod]
            return
        was_ready = r.phase == "Ready"
        r.phase = "Terminating"
        r.terminating_at = now
        if was_ready:
            self.write_targets()  # out of the Service's endpoints and the adapter's targets at once
            if r.sim is not None:  # requests that were only queued go back through the load balancer
                for req in r.sim.model.take_waiting():
                    self.route(req)

    async def finish_terminations(self, now: float) -> None:
        for r in list(self.replicas.values()):
            if r.phase != "Terminating":
                continue
            idle = r.sim is None or r.sim.model.idle
            if self.cfg.file_sd is not None and now - r.terminating_at < SD_DROP_S * self.cfg.speed:
                continue
            if idle or now - r.terminating_at >= self.cfg.grace_s:
                if r.server is not None:
                    await r.server.stop()
                if r.node is not None:
                    r.node.release(r.pod)
                    self.story.removals.append((now, r.pod, r.node.name))
                    self.say(view.removal_line(now, r.pod, r.node.name))
                del self.replicas[r.pod]
