"""The interface the API asks: a source computes one rule's value for a namespace and a label selector."""

from __future__ import annotations

from typing import Protocol

from ..model import MetricValue
from ..rules import Rule
from ..selectors import Selector


class Source(Protocol):
    kind: str

    async def fetch(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        """Items for the ExternalMetricValueList; [] when nothing matched. Raises AdapterError subclasses."""
        ...

    async def ready(self) -> str | None:
        """None when the source can answer, else why not (for /readyz)."""
        ...

    async def close(self) -> None: ...
