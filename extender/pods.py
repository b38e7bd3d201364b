"""What a pod asks of the extender: how many GPUs of the managed resource, and which scope it requires.

The count follows the scheduler's own arithmetic (k8s.io/component-helpers resource.PodRequests): the sum over
`containers`, then the maximum with each init container, where restartable init containers (sidecars,
`restartPolicy: Always`) keep running and so add to everything after them. Extended resources have
requests == limits; a pod that only sets limits has its requests defaulted from them by the apiserver, so
`requests` wins and `limits` stands in when requests are absent. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

from .topology.annotations import REQUIRED_SCOPE_ANNOTATION
from .topology.scoring import SCOPES

DEFAULT_RESOURCE = "nvidia.com/gpu"


class PodError(ValueError):
    """The pod's own spec or annotations are unusable (a person must fix the pod)."""


def _quantity(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PodError(f"{where}: {value!r} is not a GPU count")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        raise PodError(f"{where}: {value!r} is not a whole number of GPUs")
    if n < 0:
        raise PodError(f"{where}: negative GPU count {n}")
    return n


def _container_gpus(c: Any, resource: str, where: str) -> int:
    if not isinstance(c, dict):
        return 0
    res = c.get("resources") or {}
    if not isinstance(res, dict):
        return 0
    for part in ("requests", "limits"):
        values = res.get(part)
        if isinstance(values, dict) and resource in values:
            return _quantity(values[resource], f"{where}.resources.{part}[{resource}]")
    return 0


def gpu_request(pod: dict[str, Any], resource: str = DEFAULT_RESOURCE) -> int:
    """GPUs of `resource` the scheduler will account for this pod."""
    spec = pod.get("spec") or {}
    if not isinstance(spec, dict):
        raise PodError("pod spec is not an object")
    total = 0
    for i, c in enumerate(spec.get("containers") or []):
        total += _container_gpus(c, resource, f"containers[{i}]")
    init_max = 0
    sidecars = 0
    for i, c in enumerate(spec.get("initContainers") or []):
        n = _container_gpus(c, resource, f"initContainers[{i}]")
        if isinstance(c, dict) and c.get("restartPolicy") == "Always":
            total += n
            sidecars += n
            running = sidecars
        else:
            running = n + sidecars
        init_max = max(init_max, running)
    return max(total, init_max)


def required_scope(pod: dict[str, Any]) -> str:
    """The pod's `toposcale.io/required-scope` ("any" when absent); PodError when it names no scope."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(REQUIRED_SCOPE_ANNOTATION) if isinstance(annotations, dict) else None
    if raw is None:
        return "any"
    value = str(raw).strip().lower()
    if value not in SCOPES:
        raise PodError(
            f"annotation {REQUIRED_SCOPE_ANNOTATION}: {raw!r} is not one of {', '.join(SCOPES)}"
        )
    return value


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
