"""From sources to the two annotation documents: topology (NVML, a capture, or `nvidia-smi topo -m` text) and
allocation (the kubelet's pod-resources snapshot). Documents are validated against the published schema before
anyone sees them: the agent never publishes what the extender would reject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
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
    if found.topology.unknown:
        logger.info("discovery could not learn everything", extra={"unknown": found.topology.unknown})
    if len(found.socket_groups) > 1 and any(g.numa < 0 for g in found.topology.gpus):
        # The extender tells sockets apart by the published `cpus` when NUMA is unknown: show what it sees.
        logger.info("NUMA unknown; GPUs grouped by CPU affinity",
                    extra={"socket_groups": found.socket_groups})
    if found.unhealthy:
        logger.warning("GPUs lost", extra={"unhealthy": sorted(found.unhealthy)})
    return Observation(found.topology, found.unhealthy, f"capture:{capture}" if capture else "nvml")


def _from_topo_file(path: str, resource: str, id_strategy: IdStrategy) -> Observation:
    from toposcale.extender.topology.topo_text import parse_topo_text

    try:
        raw = Path(path).read_bytes()[: MAX_TOPO_FILE_BYTES + 1]
    except OSError as exc:
        raise ObserveError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_TOPO_FILE_BYTES:
        raise ObserveError(f"{path}: larger than {MAX_TOPO_FILE_BYTES} bytes, not nvidia-smi topo -m output")
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


def observe_allocation(obs: Observation, snapshot: Snapshot | None) -> Allocation:
    """`snapshot` None: no kubelet belongs to this source (topo file), nothing is known to be held.
    A snapshot with an error: allocation unknown (`allocated: null`), never an empty list."""
    if snapshot is None:
        allocated: frozenset[str] | None = frozenset()
    elif snapshot.error is not None:
        allocated = None
    else:
        allocated = snapshot.allocated
        ids = {g.id for g in obs.topology.gpus}
        foreign = (snapshot.allocatable or frozenset()) - ids
        if foreign:
            logger.warning(
                "kubelet device IDs do not match the discovered GPUs: check --device-id-strategy",
                extra={"kubelet_ids": sorted(foreign)[:8], "gpu_ids": sorted(ids)[:8]},
            )
    return Allocation(allocated=allocated, unhealthy=obs.unhealthy, observed=now_rfc3339())


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
