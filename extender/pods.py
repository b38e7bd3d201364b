"""What a pod asks of the extender: how many GPUs of the managed resource, and which scope it requires.

The count follows the scheduler's own arithmetic (k8s.io/component-helpers resource.PodRequests): the sum over
`containers`, then the maximum with each init container, where restartable init containers (sidecars,
`restartPolicy: Always`) keep running and so add to everything after them. Extended resources have
requests == limits; a pod that only sets limits has its requests defaulted from them by the apiserver, so
`requests` wins and `limits` stands in when requests are absent. Pure, no I/O.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from toposcale.core.quantity import QuantityError, parse_quantity

from .topology.annotations import REQUIRED_SCOPE_ANNOTATION
from .topology.scoring import SCOPES

DEFAULT_RESOURCE = "nvidia.com/gpu"


class PodError(ValueError):
    """The pod's own spec or annotations are unusable (a person must fix the pod)."""


# Extended resources must be whole (the apiserver rejects "1.5" or "500m"), but "1k", "1000m", "2e0" and "4.0"
# are whole numbers. The scheduler sends the Quantity as Go prints it, never with spaces: parsed as
# ParseQuantity does (toposcale.core.quantity), untrimmed.


def _quantity(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PodError(f"{where}: {value!r} is not a GPU count")
    if isinstance(value, int):
        q: Fraction | None = Fraction(value)
    elif isinstance(value, float):  # a JSON number: the apiserver reads it as a Quantity too
        q = Fraction(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        try:
            q = parse_quantity(value)
        except QuantityError:
            q = None
    else:
        q = None
    if q is None:
        raise PodError(f"{where}: {str(value)[:64]!r} is not a Kubernetes quantity")
    if q.denominator != 1:
        raise PodError(f"{where}: {str(value)[:64]!r} is not a whole number of GPUs")
    if q < 0:
        raise PodError(f"{where}: negative GPU count {value!r}")
    return int(q)


def _object(value: Any, where: str) -> dict[str, Any]:
    """An optional object field: absent/null is empty, anything but an object is the pod's error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PodError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _container(c: Any, where: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise PodError(f"{where} must be an object, got {type(c).__name__}")
    return c


def _container_gpus(c: dict[str, Any], resource: str, where: str) -> int:
    res = _object(c.get("resources"), f"{where}.resources")
    for part in ("requests", "limits"):
        values = _object(res.get(part), f"{where}.resources.{part}")
        if resource in values:
            return _quantity(values[resource], f"{where}.resources.{part}[{resource}]")
    return 0


def gpu_request(pod: dict[str, Any], resource: str = DEFAULT_RESOURCE) -> int:
    """GPUs of `resource` the scheduler will account for this pod."""
    if not isinstance(pod, dict):
        raise PodError(f"pod must be an object, got {type(pod).__name__}")
    _object(pod.get("metadata"), "metadata")
    spec = _object(pod.get("spec"), "spec")
    total = 0
    for i, c in enumerate(_list(spec.get("containers"), "spec.containers")):
        total += _container_gpus(_container(c, f"containers[{i}]"), resource, f"containers[{i}]")
    init_max = 0
    sidecars = 0
    for i, c in enumerate(_list(spec.get("initContainers"), "spec.initContainers")):
        c = _container(c, f"initContainers[{i}]")
        n = _container_gpus(c, resource, f"initContainers[{i}]")
        policy = c.get("restartPolicy")
        if policy is not None and not isinstance(policy, str):
            raise PodError(f"initContainers[{i}].restartPolicy must be a string")
        if policy == "Always":
            total += n
            sidecars += n
            running = sidecars
        else:
            running = n + sidecars
        init_max = max(init_max, running)
    return max(total, init_max)


def required_scope(pod: dict[str, Any]) -> str:
    """The pod's `toposcale.io/required-scope` ("any" when absent); PodError when it names no scope."""
    if not isinstance(pod, dict):
        raise PodError(f"pod must be an object, got {type(pod).__name__}")
    meta = _object(pod.get("metadata"), "metadata")
    annotations = _object(meta.get("annotations"), "metadata.annotations")
    raw = annotations.get(REQUIRED_SCOPE_ANNOTATION)
    if raw is None:
        return "any"
    if not isinstance(raw, str):
        raise PodError(f"annotation {REQUIRED_SCOPE_ANNOTATION} must be a string, got {type(raw).__name__}")
    value = raw.strip().lower()
    if value not in SCOPES:
        raise PodError(
            f"annotation {REQUIRED_SCOPE_ANNOTATION}: {raw!r} is not one of {', '.join(SCOPES)}"
        )
    return value


def pod_key(pod: Any) -> str:
    """namespace/name for logs and reasons; never raises, whatever shape the pod has."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(meta, dict):
        return "?/?"
    ns, name = meta.get("namespace"), meta.get("name")
    ns = ns[:253] if isinstance(ns, str) and ns else "default"
    return f"{ns}/{name[:253] if isinstance(name, str) and name else '?'}"
