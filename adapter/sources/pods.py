"""Where direct scraping finds pods: a static targets file, or Kubernetes (kubernetes-asyncio).

targets.yaml is a list of `{url: http://host:port/metrics, labels: {namespace: ..., pod: ..., <any>:
...}}`; the
labels act as the pod's labels for selectors and namespaces. With Kubernetes, pods are listed by namespace and
label selector and scraped at `http://<podIP>:<rule.scrape.port><rule.scrape.path>` (DCGM exporters at the
rule's `gpu_owner` port and path), Running and Ready pods with an IP only: a pod that is not Ready gets no
traffic from its Service, so its queue is not the workload's and it is neither scraped nor expected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from toposcale.yamltext import load_yaml

from ..cache import TTLCache
from ..errors import NotFound, SourceUnavailable
from ..rules import Rule, RulesError
from ..selectors import Selector, SelectorError, parse_selector, validate_key, validate_value

logger = logging.getLogger("toposcale.adapter.pods")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    namespace: str
    pod: str
    labels: Mapping[str, str]
    node: str | None = None  # the pod's node (Kubernetes mode): which DCGM exporter holds its GPUs


class PodFinder(Protocol):
    async def namespace_exists(self, namespace: str) -> bool: ...
    async def workload(self, rule: Rule, namespace: str, selector: Selector) -> list[Target]: ...
    async def exporters(self, rule: Rule) -> list[Target]: ...

    async def pod_counts(self, namespace: str, selector: Selector) -> tuple[int, int]:
        """(ready, starting) pods `selector` picks; a finder that knows only ready pods says (n, 0)."""
        ...

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        """Deployment `name`'s selector text, None when there is none; NotFound when the finder knows no
        Deployments (a targets file)."""
        ...

    async def close(self) -> None: ...


NO_DEPLOYMENTS = "Deployments need pods from Kubernetes (a --scrape-targets file names no owners)"


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$")
    labels: dict[str, str]

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key in ("namespace", "pod"):
            if not v.get(key):
                raise ValueError(f"needs a non-empty {key!r} label")
        for k, val in v.items():
            try:
                validate_key(k)
                validate_value(val)
            except SelectorError as exc:
                raise ValueError(str(exc)) from exc
        return v


_TARGETS = TypeAdapter(list[TargetSpec])


def load_targets(path: str | Path) -> list[Target]:
    p = Path(path)
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"{p}: cannot read scrape targets: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{p}: not valid YAML: {exc}") from exc
    try:
        specs = _TARGETS.validate_python(data)
    except ValidationError as exc:
        lines = [f"{p}: invalid scrape targets (a list of {{url, labels: {{namespace, pod, ...}}}})"]
        lines += [f"  {'.'.join(map(str, e['loc'])) or '<top>'}: {e['msg']}" for e in exc.errors()]
        raise RulesError("\n".join(lines)) from exc
    # A pod listed twice would be counted twice in every sum: the file is wrong, say where. (One URL may stand
    # for pods of several namespaces, as in tests; a request selects within one namespace.)
    seen: dict[tuple[str, str], int] = {}
    for i, spec in enumerate(specs):
        key = (spec.labels["namespace"], spec.labels["pod"])
        if key in seen:
            raise RulesError(
                f"{p}: invalid scrape targets: {i}: pod {key[0]}/{key[1]} is listed twice "
                f"(first at {seen[key]})"
            )
        seen[key] = i
    return [Target(s.url, s.labels["namespace"], s.labels["pod"], dict(s.labels)) for s in specs]


class StaticTargets:
    def __init__(self, targets: list[Target]):
        self.targets = targets
        self._namespaces = {t.namespace for t in targets}

    async def namespace_exists(self, namespace: str) -> bool:
        return namespace in self._namespaces

    async def workload(self, rule: Rule, namespace: str, selector: Selector) -> list[Target]:
        return [t for t in self.targets if t.namespace == namespace and selector.matches(t.labels)]

    async def pod_counts(self, namespace: str, selector: Selector) -> tuple[int, int]:
        """Every listed target is a ready pod; none is starting."""
        return sum(1 for t in self.targets if t.namespace == namespace and selector.matches(t.labels)), 0

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        raise NotFound(NO_DEPLOYMENTS)

    async def exporters(self, rule: Rule) -> list[Target]:
        assert rule.gpu_owner is not None
        sel = parse_selector(rule.gpu_owner.exporters)
        return [t for t in self.targets if sel.matches(t.labels)]

    async def close(self) -> None:
        return None


class TargetsFile:
    """A targets file, re-read when it changes, so pods can come and go without restarting the adapter.

    Each lookup stats the file (cheap); a new mtime, size or inode reloads it. A file that no longer loads
    keeps the last good list, logged once per change; a bad file at start still fails the start.
    Writers should replace the file atomically (write a temp file, rename it over).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._sig = self._signature()
        self._static = StaticTargets(load_targets(self.path))

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _current(self) -> StaticTargets:
        sig = self._signature()
        if sig != self._sig:
            self._sig = sig
            try:
                self._static = StaticTargets(load_targets(self.path))
            except RulesError as exc:
                logger.error("scrape targets not reloaded, keeping the last good list",
                             extra={"error": str(exc)})
            else:
                logger.info("scrape targets reloaded", extra={"targets": len(self._static.targets)})
        return self._static

    async def namespace_exists(self, namespace: str) -> bool:
        return await self._current().namespace_exists(namespace)

    async def workload(self, rule: Rule, namespace: str, selector: Selector) -> list[Target]:
        return await self._current().workload(rule, namespace, selector)

    async def exporters(self, rule: Rule) -> list[Target]:
        return await self._current().exporters(rule)

    async def pod_counts(self, namespace: str, selector: Selector) -> tuple[int, int]:
        return await self._current().pod_counts(namespace, selector)

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        return await self._current().deployment_selector(namespace, name)

    async def close(self) -> None:
        return None


def selector_text(selector: Any) -> str:
    """A metav1.LabelSelector (kubernetes-asyncio model) as label-selector text (labels.Parse syntax)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for e in selector.match_expressions or ():
        op = e.operator
        if op == "In":
            parts.append(f"{e.key} in ({','.join(e.values or ())})")
        elif op == "NotIn":
            parts.append(f"{e.key} notin ({','.join(e.values or ())})")
        elif op == "Exists":
            parts.append(e.key)
        elif op == "DoesNotExist":
            parts.append(f"!{e.key}")
        else:
            raise SourceUnavailable(f"label selector operator {op!r} is not understood")
    return ",".join(parts)


def _running_and_ready(pod: Any) -> bool:
    """Phase Running, an IP, and the Ready condition True (what a Service's endpoints require)."""
    status = pod.status
    if status is None or status.phase != "Running" or not status.pod_ip:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())


class KubePods:
    """Pods from the Kubernetes API; lists are cached briefly (and coalesced) like metric values."""

    def __init__(self, api_client: Any, *, ttl: float = 5.0, timeout: float = 5.0):
        from kubernetes_asyncio import client

        self._api = api_client
        self._core = client.CoreV1Api(api_client)
        self._timeout = timeout
        self._cache: TTLCache[Any] = TTLCache(ttl)

    async def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await fn(_request_timeout=self._timeout, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise SourceUnavailable(f"Kubernetes API: {what} failed: {exc.status} {exc.reason}") from exc
        except Exception as exc:
            raise SourceUnavailable(f"Kubernetes API: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def namespace_exists(self, namespace: str) -> bool:
        async def load() -> Any:
            return await self._call(f"get namespace {namespace}", self._core.read_namespace, name=namespace)

        ns, _ = await self._cache.get(("ns", namespace), load)
        return ns is not None

    async def _pods(self, namespace: str | None, selector: str) -> list[Any]:
        return [p for p in await self._listed(namespace, selector) if _running_and_ready(p)]

    async def pod_counts(self, namespace: str, selector: Selector) -> tuple[int, int]:
        """(ready, starting) of the pods `selector` picks: Running and Ready ones, and those not yet (Pending,
        or Running but not Ready) and not being deleted: the replicas a cold start is bringing
        (vllm_desired_replicas counts them as capacity on its way)."""
        pods = await self._listed(namespace, str(selector))
        ready = sum(1 for p in pods if _running_and_ready(p))
        starting = sum(
            1 for p in pods
            if not _running_and_ready(p) and p.metadata.deletion_timestamp is None
            and p.status is not None and p.status.phase in ("Pending", "Running")
        )
        return ready, starting

    async def _listed(self, namespace: str | None, selector: str) -> list[Any]:
        async def load() -> Any:
            if namespace is None:
                return await self._call(
                    "list pods", self._core.list_pod_for_all_namespaces, label_selector=selector
                )
            return await self._call(
                f"list pods in {namespace}",
                self._core.list_namespaced_pod,
                namespace=namespace,
                label_selector=selector,
            )

        pods, _ = await self._cache.get(("pods", namespace, selector), load)
        return [] if pods is None else list(pods.items)

    @staticmethod
    def _target(pod: Any, port: int, path: str, scheme: str = "http") -> Target:
        ip = pod.status.pod_ip
        host = f"[{ip}]" if ":" in ip else ip
        labels = dict(pod.metadata.labels or {})
        node = (pod.spec.node_name if pod.spec is not None else None) or None
        return Target(f"{scheme}://{host}:{port}{path}", pod.metadata.namespace, pod.metadata.name, labels,
                      node)

    async def workload(self, rule: Rule, namespace: str, selector: Selector) -> list[Target]:
        pods = await self._pods(namespace, str(selector))
        s = rule.scrape
        return [self._target(p, s.port, s.path, s.scheme) for p in pods]

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        """Deployment `name`'s spec.selector as label-selector text; None when there is no such Deployment."""
        from kubernetes_asyncio import client

        async def load() -> Any:
            apps = client.AppsV1Api(self._api)
            return await self._call(
                f"get deployment {namespace}/{name}", apps.read_namespaced_deployment, name=name,
                namespace=namespace,
            )

        dep, _ = await self._cache.get(("deployment", namespace, name), load)
        if dep is None:
            return None
        return selector_text(dep.spec.selector)

    async def exporters(self, rule: Rule) -> list[Target]:
        assert rule.gpu_owner is not None
        pods = await self._pods(None, rule.gpu_owner.exporters)
        return [self._target(p, rule.gpu_owner.port, rule.gpu_owner.path) for p in pods]

    async def close(self) -> None:
        await self._api.close()
