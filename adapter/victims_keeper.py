"""`toposcale adapter --pod-deletion-cost NAMESPACE/SELECTOR`: keeps
`controller.kubernetes.io/pod-deletion-cost` on the serving pods so that a scale-down deletes the replica
whose leaving costs least (adapter/victims.py ranks them). Off unless the flag is given.

Every `--pod-deletion-cost-interval` seconds, per NAMESPACE/SELECTOR: list the pods (Running and Ready,
not being deleted: the ones the ReplicaSet controller ranks by cost), read each one's requests in flight
through the adapter's own source and rules (`vllm_requests_running` + `vllm_requests_waiting`, so scrape
and Prometheus mode alike), ask the extender's `/freeing` what freeing each pod's GPUs gives back (when
`--extender-url` is set), rank, and patch the pods whose annotation differs, at most
`--pod-deletion-cost-patches-per-minute` (a token bucket: the annotation is advisory and each patch is an API
write). A round that cannot read the pods or their load changes nothing (no made-up ranking), logs once
(rate-limited) and retries at the next interval. RBAC: `patch` on pods in the serving namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .selectors import Selector, parse_selector
from .victims import DELETION_COST_ANNOTATION, RateLimit, Replica, costs, patches

logger = logging.getLogger("toposcale.adapter.victims")
LOAD_RULES = ("vllm_requests_running", "vllm_requests_waiting")


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    selector: Selector

    @classmethod
    def parse(cls, text: str) -> Target:
        """NAMESPACE/SELECTOR, e.g. `llm/app=vllm-qwen`; ValueError naming what is wrong."""
        ns, sep, sel = text.partition("/")
        if not sep or not ns or not sel.strip():
            raise ValueError(f"--pod-deletion-cost {text!r}: expected NAMESPACE/SELECTOR, e.g. llm/app=vllm")
        selector = parse_selector(sel)
        if selector.empty():
            raise ValueError(f"--pod-deletion-cost {text!r}: an empty selector would rank every pod")
        return cls(ns, selector)


class ExtenderClient:
    """POST /freeing to `toposcale extender`: the same TLS options as the adapter's Prometheus client
    (CA file, bearer token file, skip-verify)."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        bearer_token_file: str | None = None,
        insecure_skip_verify: bool = False,
        timeout: float = 5.0,
    ) -> None:
        import ssl

        self.url = url.rstrip("/")
        self._ssl: Any = None
        if url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if insecure_skip_verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._token_file = bearer_token_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token_file:  # re-read each time: projected tokens rotate
            with open(self._token_file) as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        return headers

    async def post(self, path: str, body: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.post(
            self.url + path, data=orjson.dumps(body), headers=self._headers(), ssl=self._ssl
        ) as r:
            text = await r.read()
            if r.status != 200:
                raise RuntimeError(f"extender {path}: HTTP {r.status}: {text[:300].decode(errors='replace')}")
            return orjson.loads(text)

    async def freeing(self, keys: list[str]) -> dict[str, float | None]:
        doc = await self.post("/freeing", {"pods": keys})
        return {k: v.get("gain") for k, v in doc["pods"].items()}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


class DeletionCostKeeper:
    def __init__(
        self,
        api: Any,
        source: Any,
        rules: dict[str, Any],
        targets: list[Target],
        *,
        extender: ExtenderClient | None = None,
        interval: float = 15.0,
        per_minute: float = 30.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = [r for r in LOAD_RULES if r not in rules]
        if missing:
            raise ValueError(f"--pod-deletion-cost needs the rules {', '.join(missing)} (requests in flight)")
        from kubernetes_asyncio import client

        self.core = client.CoreV1Api(api)
        self.source, self.rules, self.targets = source, rules, targets
        self.extender = extender
        self.interval = interval
        self.clock = clock
        self.limit = RateLimit(per_minute, burst, clock())
        self.patched = 0
        self._warned: dict[str, float] = {}

    def _warn(self, key: str, message: str, **extra: Any) -> None:
        now = self.clock()
        if now - self._warned.get(key, -1e9) < 300:  # once per 5 minutes per problem
            return
        self._warned[key] = now
        logger.warning(message, extra=extra)

    async def run(self) -> None:
        while True:
            for t in self.targets:
                try:
                    await self.once(t)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed round changes nothing; the next one retries
                    self._warn(
                        f"round:{t.namespace}",
                        "pod-deletion-cost round failed, nothing changed",
                        namespace=t.namespace,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            await asyncio.sleep(self.interval)

    async def once(self, t: Target) -> list[tuple[str, int]]:
        """One round for one target: the writes made (pod, cost)."""
        listed = await self.core.list_namespaced_pod(t.namespace, label_selector=str(t.selector))
        pods = [p for p in listed.items if _ready(p)]
        if len(pods) < 2:
            return []  # nothing to choose between
        load: dict[str, float] = {}
        for rule in LOAD_RULES:
            for v in await self.source.fetch_pods(self.rules[rule], t.namespace, t.selector):
                load[v.pod] = load.get(v.pod, 0.0) + v.value
        seen = set(load)
        gains: dict[str, float | None] = {}
        if self.extender is not None:
            got = await self.extender.freeing([f"{t.namespace}/{p.metadata.name}" for p in pods])
            gains = {k.partition("/")[2]: g for k, g in got.items()}
        replicas = [
            Replica(
                p.metadata.name,
                load.get(p.metadata.name) if p.metadata.name in seen else None,
                gains.get(p.metadata.name),
            )
            for p in pods
        ]
        wanted = costs(replicas)
        current = {
            p.metadata.name: (p.metadata.annotations or {}).get(DELETION_COST_ANNOTATION) for p in pods
        }
        done: list[tuple[str, int]] = []
        for name, cost in patches(wanted, current):
            if not self.limit.take(self.clock()):
                break  # the rest waits for the next round (rank order: the likeliest victims went first)
            body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(cost)}}}
            await self.core.patch_namespaced_pod(name, t.namespace, body)
            done.append((name, cost))
        if done:
            self.patched += len(done)
            logger.info(
                "pod-deletion-cost updated",
                extra={
                    "namespace": t.namespace,
                    "patched": dict(done),
                    "ranking": [r.name for r in sorted(replicas, key=lambda r: wanted[r.name])],
                },
            )
        return done

    async def close(self) -> None:
        if self.extender is not None:
            await self.extender.close()


async def start(keeper: DeletionCostKeeper) -> Callable[[], Any]:
    """Run the keeper in the background; returns the stop hook for `serve(on_stop=...)`."""
    task = asyncio.create_task(keeper.run(), name="pod-deletion-cost")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await keeper.close()

    return stop
