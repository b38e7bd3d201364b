"""Client of the kubelet's pod-resources API on its unix socket: which GPU device IDs exist, which pods hold.

Bounded in every way a kubelet can misbehave: each call has a deadline, answers are capped in size, and after
a failure the socket is left alone for an exponentially growing pause (a restarting kubelet is not hammered).
A failed, slow or missing kubelet yields a snapshot with `error` set: allocation unknown, never "none held".
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

import grpc

from . import api_pb2, api_pb2_grpc

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the kubelet's own server caps its messages at 16 MiB


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the kubelet said about one resource. `error` set: the kubelet could not be asked (unknown)."""

    allocatable: frozenset[str] | None = None  # None: unknown (old kubelet without GetAllocatableResources)
    allocated: frozenset[str] | None = None  # None: unknown
    holders: dict[str, str] = field(default_factory=dict)  # device ID -> "namespace/pod/container"
    error: str | None = None
    # DRA devices in the containers' dynamic_resources, (driver, pool, device) -> "namespace/pod/container"
    dynamic_holders: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # where `allocated` came from: the kubelet's device-plugin list, its DRA devices, or the ResourceClaims
    source: str = "kubelet"


class PodResourcesClient:
    def __init__(self, socket_path: str, *, timeout: float = 2.0, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._allocatable_unimplemented = False

    def _connect(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.enable_retries", 0),
                ],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self._retry_at

    async def snapshot(self, resource: str) -> Snapshot:
        if self.backing_off:
            wait = self._retry_at - time.monotonic()
            return Snapshot(error=f"{self._last_error} (retrying in {wait:.0f}s)")
        if not os.path.exists(self.socket_path):  # noqa: ASYNC240 - one stat of a local socket path
            return await self._failed(f"kubelet pod-resources socket {self.socket_path} does not exist")
        try:
            return await self._ask(resource)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            what = "timed out" if code == grpc.StatusCode.DEADLINE_EXCEEDED else f"failed: {code.name}"
            return await self._failed(f"kubelet pod-resources {what}: {exc.details()}")
        except (TimeoutError, OSError) as exc:
            return await self._failed(f"kubelet pod-resources: {type(exc).__name__}: {exc}")

    async def _ask(self, resource: str) -> Snapshot:
        stub = self._connect()
        allocatable: frozenset[str] | None = None
        if not self._allocatable_unimplemented:
            try:
                resp = await stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(),
                                                          timeout=self.timeout)
                allocatable = frozenset(
                    d for dev in resp.devices if dev.resource_name == resource for d in dev.device_ids
                )
            except grpc.aio.AioRpcError as exc:
                # Kubelets before 1.23 (feature gate KubeletPodResourcesGetAllocatable) do not serve it.
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._allocatable_unimplemented = True
                logger.warning("kubelet has no GetAllocatableResources; allocatable devices unknown")
        listing = await stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        holders: dict[str, str] = {}
        dynamic: dict[tuple[str, str, str], str] = {}
        for pod in listing.pod_resources:
            for ctr in pod.containers:
                for dev in ctr.devices:
                    if dev.resource_name == resource:
                        for device_id in dev.device_ids:
                            holders[device_id] = f"{pod.namespace}/{pod.name}/{ctr.name}"
                # A share (share_id set, consumable capacity) still holds the GPU for a whole-GPU pod.
                for claim in ctr.dynamic_resources:
                    for res in claim.claim_resources:
                        if res.device_name:  # empty: a non-device resource (the proto reserves that case)
                            key = (res.driver_name, res.pool_name, res.device_name)
                            dynamic[key] = f"{pod.namespace}/{pod.name}/{ctr.name}"
        if self._failures:
            logger.info("kubelet pod-resources reachable again", extra={"socket": self.socket_path})
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = None
        return Snapshot(allocatable=allocatable, allocated=frozenset(holders), holders=holders,
                        dynamic_holders=dynamic)

    async def _failed(self, message: str) -> Snapshot:
        self._failures += 1
        pause = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
        pause *= 0.5 + random.random() / 2
        self._retry_at = time.monotonic() + pause
        self._last_error = message
        logger.warning("kubelet pod-resources unavailable; allocation unknown",
                       extra={"error": message, "retry_in_s": round(pause, 2), "failures": self._failures})
        await self.close()  # the kubelet may recreate its socket: reconnect from scratch next time
        return Snapshot(error=message)

