"""From sources to the two annotation documents: topology (NVML, a capture, or `nvidia-smi topo -m` text) and
allocation (the kubelet's pod-resources snapshot). Documents are validated against the published schema before
anyone sees them: the agent never publishes what the extender would reject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    Allocation,
    AnnotationError,
    allocation_from_doc,
    allocation_to_doc,
    now_rfc3339,
    topology_from_doc,
    topology_to_doc,
)
from toposcale.extender.topology.model import Topology

from .discovery import Discovery, DiscoveryError, IdStrategy, discover
from .files import read_bounded
from .nvml import NvmlBackend

if TYPE_CHECKING:
    from .podresources.client import Snapshot

logger = logging.getLogger(__name__)

MAX_TOPO_FILE_BYTES = 1024 * 1024


class ObserveError(RuntimeError):
    """The topology could not be learned from the chosen source."""


@dataclass(slots=True)
class Observation:
    topology: Topology
    unhealthy: frozenset[str]
    source: str  # "nvml", "capture:<path>", "topo-file:<path>"


def observe_topology(*, topo_file: str | None = None, capture: str | None = None,
                     resource: str = "nvidia.com/gpu", id_strategy: IdStrategy = "uuid",
                     backend: NvmlBackend | None = None) -> Observation:
    if topo_file:
        return _from_topo_file(topo_file, resource, id_strategy)
    if backend is None:
        if capture:
            from .replay import ReplayBackend

            try:
                backend = ReplayBackend.from_file(capture)
            except (OSError, ValueError) as exc:
                raise ObserveError(f"cannot read NVML capture {capture}: {exc}") from None
        else:
            from .nvml import PynvmlBackend

            backend = PynvmlBackend()
    try:
        found: Discovery = discover(backend, resource=resource, id_strategy=id_strategy)
    except DiscoveryError as exc:
        raise ObserveError(str(exc)) from None
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        if not capture:
            raise  # the real driver binding answering out of shape is a bug to see, not a user error
        # A hand-edited or truncated capture: answers of the wrong JSON shape.
        raise ObserveError(f"NVML capture {capture} is malformed: {type(exc).__name__}: {exc}") from None
    if found.topology.unknown:
        logger.info("discovery could not learn everything", extra={"unknown": found.topology.unknown})
    if len(found.socket_groups) > 1 and any(g.numa < 0 for g in found.topology.gpus):
        # The extender tells sockets apart by the published `cpus` when NUMA is unknown: show what it sees.
        logger.info("NUMA unknown; GPUs grouped by CPU affinity",
                    extra={"socket_groups": found.socket_groups})
    if found.unhealthy:
        logger.warning("GPUs lost", extra={"unhealthy": sorted(found.unhealthy)})
    return Observation(found.topology, found.unhealthy, f"capture:{capture}" if capture else "nvml")


async def observe_topology_within(deadline_s: float, **kw: Any) -> Observation:
    """`observe_topology(**kw)` under a deadline, for a one-shot run (`--once`): NVML runs in a daemon thread,
    so a driver call that never returns is abandoned with an ObserveError and cannot hold up the exit."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Observation] = loop.create_future()

    def settle(result: Observation | None, error: BaseException | None) -> None:
        if done.done():
            return  # the deadline passed first
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = observe_topology(**kw), None
        except BaseException as exc:  # handed to the waiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is gone: nobody waits any more

    threading.Thread(target=work, name="nvml-once", daemon=True).start()
    try:
        return await asyncio.wait_for(done, deadline_s)
    except TimeoutError:
        raise ObserveError(f"NVML discovery took longer than {deadline_s}s (hung driver call?)") from None


def _from_topo_file(path: str, resource: str, id_strategy: IdStrategy) -> Observation:
    from toposcale.extender.topology.topo_text import parse_topo_text

    try:
        raw = read_bounded(path, MAX_TOPO_FILE_BYTES, "nvidia-smi topo -m output")
    except ValueError as exc:
        raise ObserveError(str(exc)) from None
    try:
        topo = parse_topo_text(raw.decode("utf-8", errors="replace"), resource=resource)
    except ValueError as exc:
        raise ObserveError(f"{path}: {exc}") from None
    if id_strategy == "index":
        from dataclasses import replace

        topo = Topology(
            gpus=[replace(g, id=str(g.index)) for g in topo.gpus], links=topo.links, resource=topo.resource,
            unknown=topo.unknown,
        )
    return Observation(topo, frozenset(), f"topo-file:{path}")


def _short(device_id: str, limit: int = 64) -> str:
    """A device ID as one short printable token for a reason line."""
    text = ascii(device_id)
    return text if len(text) <= limit else f"{text[:limit]}...({len(device_id)} chars)"


def allocation_problem(obs: Observation, snapshot: Snapshot | None) -> str | None:
    """Why the kubelet's answer cannot say which GPUs are held (None: it can).

    The kubelet names devices by the device plugin's IDs. When they are not the discovered GPUs' ids (the
    plugin runs with another deviceIDStrategy, or hands out MIG devices), held GPUs cannot be told apart from
    free ones: the allocation is unknown, never "all free"."""
    if snapshot is None:
        return None
    if snapshot.error is not None:
        return snapshot.error
    known = {g.id for g in obs.topology.gpus} | {g.uuid for g in obs.topology.gpus if g.uuid}
    foreign = ((snapshot.allocatable or frozenset()) | (snapshot.allocated or frozenset())) - known
    if foreign:
        # Quoted short and escaped: the IDs are the kubelet's (or whatever answers on its socket) and end up
        # in /healthz and the log; a 200 KB ID with a newline made a 300 KB multi-line reason.
        quoted = ", ".join(_short(i) for i in sorted(foreign)[:4])
        return (
            f"kubelet device IDs [{quoted}]{f' and {len(foreign) - 4} more' if len(foreign) > 4 else ''} "
            "are not the discovered GPUs' ids "
            f"{sorted(g.id for g in obs.topology.gpus)[:4]}: set the agent's --device-id-strategy to the "
            "NVIDIA device plugin's deviceIDStrategy (uuid or index); MIG devices are not tracked"
        )
    if snapshot.allocated is None:
        return "kubelet listed no allocation"
    return None


def observe_allocation(obs: Observation, snapshot: Snapshot | None) -> Allocation:
    """`snapshot` None: no kubelet belongs to this source (topo file), nothing is known to be held.
    A snapshot with an error, or whose device IDs are not the GPUs' ids: allocation unknown
    (`allocated: null`), never an empty list. GPUs the kubelet does not list as allocatable (the device plugin
    reported them unhealthy) are unhealthy, as are those NVML reports lost."""
    unhealthy = set(obs.unhealthy)
    problem = allocation_problem(obs, snapshot)
    allocated: frozenset[str] | None
    if snapshot is None:
        allocated = frozenset()
    elif problem is not None:
        allocated = None
        if snapshot.error is None:
            logger.error("GPU allocation unknown: kubelet device IDs do not match the discovered GPUs",
                         extra={"error": problem, "fix": "--device-id-strategy"})
    else:
        allocated = snapshot.allocated
        if snapshot.allocatable is not None:
            # The kubelet answers GetAllocatableResources with allDevices.Filter(healthyDevices)
            # (pkg/kubelet/cm/devicemanager/manager.go): held GPUs stay listed, unhealthy ones vanish. Before
            # the device plugin registers, nothing is listed, and the Node's allocatable count is 0 as well.
            offered = snapshot.allocatable
            withheld = {g.id for g in obs.topology.gpus if g.id not in offered and g.uuid not in offered}
            if withheld - unhealthy:
                logger.warning("GPUs the kubelet does not offer (device plugin marked them unhealthy)",
                               extra={"gpus": sorted(withheld - unhealthy)})
            unhealthy |= withheld
    return Allocation(allocated=allocated, unhealthy=frozenset(unhealthy), observed=now_rfc3339())


def documents(obs: Observation, alloc: Allocation) -> dict[str, dict[str, Any]]:
    """Both annotation documents, validated against the schema the extender reads them with."""
    topo_doc = topology_to_doc(obs.topology)
    alloc_doc = allocation_to_doc(alloc)
    try:
        topology_from_doc(topo_doc)
        allocation_from_doc(alloc_doc)
    except AnnotationError as exc:
        raise ObserveError(f"discovered documents do not validate: {exc}") from None
    return {TOPOLOGY_ANNOTATION: topo_doc, ALLOCATION_ANNOTATION: alloc_doc}
