"""The value service: what every wire serves, computed once.

The external metrics API (api.py), the custom metrics API (custom.py), the KEDA external scaler
(keda/scaler.py) and `/debug/desired` all ask `MetricValues`, so an HPA and a KEDA ScaledObject asking for
the same metric and selector share one source query. Each request is checked (namespace, names, selectors),
then bounded: at most `max_inflight` in flight (then 429), answered within `request_timeout` (then 503), and
served from a TTL cache with request coalescing (`cache_ttl`), so a hundred HPAs asking the same thing cost
one source query. Every value is checked against what the HPA can read (an int64 of milli-units). Errors are
AdapterError subclasses (400, 404, 429, 503), which each wire turns into its own answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from .cache import TTLCache
from .errors import BadRequest, NotFound, SourceUnavailable, TooManyRequests
from .metrics import AdapterMetrics
from .model import MetricValue, PodValue
from .quantity import QuantityError, check_hpa_range
from .rules import Rule, RuleSet
from .selectors import Selector, SelectorError, parse_selector
from .sources.base import Source
from .wire import external

# fullmatch everywhere: `re.match` with "^...$" takes "ml\n" (`$` matches before a trailing newline).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_namespace(namespace: str) -> None:
    if len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace):
        raise BadRequest(f'invalid namespace "{namespace[:80]}": must be a DNS label (RFC 1123)')


def check_object_name(what: str, name: str) -> None:
    if len(name) > 253 or not _POD_NAME.fullmatch(name):
        raise BadRequest(f'invalid {what} name "{name[:80]}": must be a DNS subdomain (RFC 1123)')


def _selector(text: str | None, what: str = "labelSelector") -> Selector:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from exc


def _key(selector: Selector) -> tuple[Any, ...]:
    return tuple(sorted(selector.requirements, key=lambda r: (r.key, r.op, r.values)))


class MetricValues:
    def __init__(
        self,
        rules: RuleSet,
        source: Source,
        metrics: AdapterMetrics,
        *,
        cache_ttl: float,
        request_timeout: float,
        max_inflight: int,
    ) -> None:
        self.rules = rules.by_name()
        self.rule_set = rules
        self.source = source
        self.metrics = metrics
        self.cache: TTLCache[list[MetricValue]] = TTLCache(cache_ttl)
        self.pod_cache: TTLCache[list[PodValue]] = TTLCache(cache_ttl)
        self.request_timeout = request_timeout
        self.max_inflight = max_inflight
        self.inflight = 0
        self.desired: Any = None  # vllm_desired_replicas rules' engine (adapter/desired.py)
        if any(r.aggregation == "vllm_desired_replicas" for r in rules.rules):
            from .desired import DesiredEngine

            self.desired = DesiredEngine(source, rules.rules)

    def rule(self, name: str) -> Rule | None:
        """The rule named `name`; rule names are lowercase, and the HPA passes metric.name as written, so
        matched case-insensitively."""
        return self.rules.get(name) or self.rules.get(name.lower())

    def _admit(self, namespace: str) -> None:
        if self.inflight >= self.max_inflight:
            raise TooManyRequests(f"more than {self.max_inflight} metric requests in flight; try again")
        check_namespace(namespace)

    async def compute(
        self, namespace: str, name: str, label_selector: str | None
    ) -> tuple[Rule, list[MetricValue]]:
        """The rule and items for metric `name` over the pods `label_selector` picks in `namespace`: what
        every wire serves, through one cache, one in-flight bound and one deadline. Raises AdapterError
        subclasses (400, 404, 429, 503)."""
        self._admit(namespace)
        rule = self.rule(name)
        if rule is None:
            raise NotFound(
                f'external metric "{name[:100]}" not found '
                f"(this adapter serves: {', '.join(sorted(self.rules))})",
                {"name": name[:253], "group": external.GROUP, "kind": name[:253]},
            )
        selector = _selector(label_selector)
        key = (rule.name, namespace, _key(selector))
        values = await self._bounded(name, self.cache, key, lambda: self._load(rule, namespace, selector))
        for v in values:  # every wire serves what the HPA computes with: an int64 of milli-units
            try:
                check_hpa_range(v.value)
            except QuantityError as exc:
                raise SourceUnavailable(f"{name}: {exc}") from exc
        return rule, values

    async def compute_pods(
        self, rule: Rule, namespace: str, label_selector: str | None, *, pod: str | None = None
    ) -> list[PodValue]:
        """Each selected pod's own value of `rule` (custom.metrics.k8s.io), or of the one pod `pod`: the same
        source, bounds and deadline as `compute`, its own cache (per-pod lists are another answer). A pod
        that could not be read is absent; all failing is a 503 (the source raises it)."""
        self._admit(namespace)
        if pod is not None:
            check_object_name("pod", pod)
            selector = parse_selector(None)
        else:
            selector = _selector(label_selector)
        key = (rule.name, namespace, _key(selector), pod)
        values: list[PodValue] = await self._bounded(
            rule.name, self.pod_cache, key, lambda: self.source.fetch_pods(rule, namespace, selector, pod=pod)
        )
        for v in values:  # the HPA computes with int64 milli-units
            try:
                check_hpa_range(v.value)
            except QuantityError as exc:
                raise SourceUnavailable(f"{rule.name}: {v.namespace}/{v.pod}: {exc}") from exc
        return values

    async def object_selector(self, namespace: str, name: str) -> str | None:
        """The label selector of Deployment `name` (None: not found), from the source's pod finder."""
        check_namespace(namespace)
        check_object_name("Deployment", name)
        return await self.source.deployment_selector(namespace, name)

    async def _bounded(
        self, name: str, cache: TTLCache[Any], key: Any, load: Callable[[], Awaitable[Any]]
    ) -> Any:
        """`load` through `cache` (coalesced), within the in-flight bound and the request deadline."""
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            async with asyncio.timeout(self.request_timeout):
                values, how = await cache.get(key, load)
        except TimeoutError as exc:
            self.metrics.source_error(self.source.kind, "timeout")
            raise SourceUnavailable(
                f"{name}: no answer from the {self.source.kind} source within {self.request_timeout:g}s"
            ) from exc
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        self.metrics.cache.labels(how).inc()
        return values

    async def _load(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        if rule.aggregation == "vllm_desired_replicas":
            values: list[MetricValue] = await self.desired.fetch(rule, namespace, selector)
            return values
        return await self.source.fetch(rule, namespace, selector)
