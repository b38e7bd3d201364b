"""The demo's scheduler and kubelet loop: each Pending pod placed by asking the extender over HTTP (as
kube-scheduler does), its GPUs picked as the device plugin would, the replica started after its load time."""

from __future__ import annotations

import logging

import aiohttp

from toposcale.extender.nodeview import view_of_node
from toposcale.extender.placeable import placeable

from . import view
from .fleet import GPU_RESOURCE, has_free_single_numa_set, single_numa
from .placement import predict_allocation, set_tier
from .scheduler import ExtenderError, pod_object
from .services import APP_LABELS
from .vllm_sim import HeldGPU, ReplicaServer, SimReplica

logger = logging.getLogger("toposcale.demo")


class SchedulingLoop:
    """The scheduler and the kubelet (a mixin of runner.Demo)."""

    async def schedule_pending(self, http: aiohttp.ClientSession, now: float) -> None:
        k = self.profile.gpus_per_replica
        for r in [r for r in self.replicas.values() if r.phase == "Pending"]:
            nodes = [n.node_object() for n in self.nodes]
            free = {n.name: len(n.free_ids()) for n in self.nodes}
            pod = pod_object(r.pod, self.cfg.namespace, k, APP_LABELS)
            try:
                placement = await self.sched.schedule(http, pod, nodes, free, k)
            except ExtenderError as exc:
                # the pod stays Pending and is retried next round, as after a failed scheduling cycle
                if (r.pod, str(exc)) not in self.extender_failures:
                    self.extender_failures.add((r.pod, str(exc)))
                    self.story.unschedulable.append((now, r.pod, str(exc)))
                    logger.error("scheduling failed", extra={"pod": r.pod, "error": str(exc)})
                    self.say(f"{view.clock(now):>8}  ! {r.pod}: {exc}")
                continue
            if placement.node is None:
                if r.pod not in self.unschedulable:  # kube-scheduler retries; say it once per pod
                    self.unschedulable.add(r.pod)
                    # the extender's placeable count (extender/placeable.py, what the adapter caps on)
                    room = placeable([view_of_node(o, GPU_RESOURCE) for o in nodes], k, None)
                    self.say(
                        f"{view.clock(now):>8}  ! {r.pod} unschedulable: {placement.reason} "
                        f"(placeable now: {room.total()}, {room.held_back()})"
                    )
                    self.story.unschedulable.append((now, r.pod, placement.reason))
                continue
            node = self.by_name[placement.node]
            chance = has_free_single_numa_set(node, k)
            # The kubelet asks the device plugin which GPUs to give (GetPreferredAllocation).
            ids = predict_allocation(node.topology, node.free_ids(), k, self.sched_rng)
            node.allocate(r.pod, ids, self.cfg.namespace)
            idx = node.indices(ids)
            numas = sorted({node.topology.gpus[i].numa for i in idx})
            rec = view.PlacementRecord(
                t=now,
                pod=r.pod,
                node=node.name,
                gpus=tuple(idx),
                tier=set_tier(node.topology, idx).label,
                numa="unknown" if -1 in numas else "+".join(map(str, numas)),
                single_numa=single_numa(node.topology, idx),
                single_numa_available=chance,
                score=placement.extender_score,
            )
            self.story.placements.append(rec)
            self.say(view.placement_line(rec))
            r.node, r.gpus, r.phase, r.started = node, idx, "Starting", now
            gpus = [HeldGPU(i, node.topology.gpus[i].id, node.gpu_model, node.memory_mib) for i in idx]
            r.sim = SimReplica(r.pod, self.cfg.namespace, node.name, gpus, self.params)

    async def start_ready(self, now: float) -> None:
        changed = False
        for r in self.replicas.values():
            if r.phase == "Starting" and now - r.started >= self.cfg.startup_s:
                assert r.sim is not None
                r.server = ReplicaServer(r.sim)
                await r.server.start()
                self.replica_ports.append(r.server.port)
                r.phase, r.ready_at = "Ready", now
                changed = True
        if changed:
            self.write_targets()
