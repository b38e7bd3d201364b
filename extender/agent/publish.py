"""Publish the two annotation documents on this node's Node object, through kubernetes-asyncio.

A merge patch touches only our two annotation keys. It is sent only when what the Node holds differs from the
truth (content, not the `observed` timestamp), at most once per `min_interval`, and at least once per
`refresh_interval` so `observed` shows the agent is alive. What the Node holds is read back first: a corrupt
or hand-edited annotation is overwritten with the truth and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toposcale.extender.topology.annotations import (
    TOPOLOGY_ANNOTATION,
    AnnotationError,
    allocation_from_doc,
    dumps,
    load_json,
    topology_from_doc,
)

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


class PublishError(RuntimeError):
    """The Node could not be read or patched."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    patched: bool
    reason: str  # "changed", "refresh", "unchanged", "deferred", "overwrote-invalid"
    overwritten: tuple[str, ...] = ()  # annotation keys whose previous value was invalid or hand-edited


def _content(key: str, value: Any) -> str | None:
    """Canonical text of a document without its volatile `observed` field; None if it is not valid."""
    try:
        doc = value if isinstance(value, dict) else load_json(value, key)
        if not isinstance(doc, dict):
            return None
        if key == TOPOLOGY_ANNOTATION:
            topology_from_doc(doc)
        else:
            allocation_from_doc(doc)
    except AnnotationError:
        return None
    return dumps({k: v for k, v in doc.items() if k != "observed"})


class Publisher:
    def __init__(self, api: Any, node_name: str, *, min_interval: float = 10.0,
                 refresh_interval: float = 300.0, request_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes_asyncio import client

        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self.request_timeout = request_timeout
        self.clock = clock
        self._last_patch: float | None = None

    async def _read_annotations(self) -> dict[str, str]:
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            node = await self.core.read_node(self.node_name, _request_timeout=self.request_timeout)
        except ApiException as exc:
            raise PublishError(f"reading Node {self.node_name}: HTTP {exc.status} {exc.reason}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise PublishError(f"reading Node {self.node_name}: {type(exc).__name__}: {exc}") from None
        return dict((node.metadata and node.metadata.annotations) or {})

    async def publish(self, docs: dict[str, dict[str, Any]]) -> PublishResult:
        current = await self._read_annotations()
        now = self.clock()
        stale: list[str] = []
        overwritten: list[str] = []
        for key, doc in docs.items():
            have = current.get(key)
            want = _content(key, doc)
            if have is None:
                stale.append(key)
                continue
            got = _content(key, have)
            if got is None:
                overwritten.append(key)
                stale.append(key)
                logger.warning("Node annotation is not a valid document: overwriting it with the truth",
                               extra={"node": self.node_name, "annotation": key, "found": have[:200]})
            elif got != want:
                stale.append(key)
        refresh_due = self._last_patch is None or now - self._last_patch >= self.refresh_interval
        if not stale and not refresh_due:
            return PublishResult(False, "unchanged")
        if self._last_patch is not None and now - self._last_patch < self.min_interval:
            return PublishResult(False, "deferred", tuple(overwritten))
        # Both keys go together: `observed` of the allocation is the agent's heartbeat for the extender.
        body = {"metadata": {"annotations": {k: dumps(v) for k, v in docs.items()}}}
        await self._patch(body)
        self._last_patch = now
        reason = "overwrote-invalid" if overwritten else ("changed" if stale else "refresh")
        logger.info("published GPU annotations",
                    extra={"node": self.node_name, "reason": reason, "changed": stale})
        return PublishResult(True, reason, tuple(overwritten))

    async def _patch(self, body: dict[str, Any]) -> None:
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self.core.patch_node(self.node_name, body, _content_type=MERGE_PATCH,
                                       _request_timeout=self.request_timeout)
        except ApiException as exc:
            raise PublishError(f"patching Node {self.node_name}: HTTP {exc.status} {exc.reason}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise PublishError(f"patching Node {self.node_name}: {type(exc).__name__}: {exc}") from None
