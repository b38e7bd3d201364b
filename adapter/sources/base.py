"""The interface the value service asks (values.py): a source computes one rule's value for a namespace and
a label selector, each selected pod's own value, and a Deployment's selector. A source that cannot serve one
of these answers NotFound (404) saying why, so every wire tells the client the same thing."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..model import MetricValue, PodValue
from ..rules import Rule
from ..selectors import Selector


class Source(Protocol):
    kind: str

    async def fetch(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        """Items for the ExternalMetricValueList; [] when nothing matched. Raises AdapterError subclasses."""
        ...

    async def fetch_pods(
        self, rule: Rule, namespace: str, selector: Selector, *, pod: str | None = None
    ) -> list[PodValue]:
        """Each selected pod's own value of `rule` (custom.metrics.k8s.io), or of the one pod `pod`; a pod
        that could not be read is absent (never 0), all of them failing is SourceUnavailable."""
        ...

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        """Deployment `name`'s label selector as text; None when there is no such Deployment. NotFound when
        this source cannot resolve Deployments (no Kubernetes API to ask)."""
        ...

    async def ready(self) -> str | None:
        """None when the source can answer, else why not (for /readyz)."""
        ...

    async def close(self) -> None: ...


class OnceLog:
    """Logs a problem the first time its key is seen, then stays quiet about it: an HPA asks every 15 s, and
    the same answer each time says nothing new. Bounded: past `max_keys` it starts over."""

    def __init__(self, logger: logging.Logger, max_keys: int = 4096) -> None:
        self._logger = logger
        self._seen: set[tuple[str, ...]] = set()
        self._max_keys = max_keys

    def warn(self, key: tuple[str, ...], message: str, **extra: Any) -> None:
        if key in self._seen:
            return
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen.add(key)
        self._logger.warning(message, extra=extra)
