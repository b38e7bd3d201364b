"""Scale-up that does not cascade: `vllm_desired_replicas` capped at what the cluster can place.

With `--extender-url`, each `vllm_desired_replicas` answer that wants more replicas than are ready or
starting asks the extender's `POST /placeable` (extender/README.md "Placeable replicas") how many more pods
like the selected ones fit now, and caps the answer at

    ready + starting + placeable + provisioning_allowance      (the rule's desired.provisioning_allowance, 1)

where a starting pod that is still Pending counts only when the extender found it a slot (its answer places
the Pending pods first: `pending.placed`); so at most `allowance` of the Deployment's pods wait for a node
at any time, however many syncs pass. The allowance leaves that many Pending pods for a node autoscaler
(cluster-autoscaler, Karpenter) to add nodes for, without a cascade of Pending replicas that all land at
once when the nodes arrive. What is cut
off is served as `toposcale_unplaceable_replicas{namespace,metric,reason}` (reason: no-gpu,
no-topology-slot, required-scope) on the adapter's /metrics, so an operator sees that the cluster, not the
autoscaler, is the limit; `/debug/desired` names the cap in one record ("wanted 6; 3 ready, 1 starting;
1 placeable (node gpu-hgx-7, tier nvlink); 1 held back: ...").

The template is one of the selected pods (any: a Deployment's pods share it). No pod to take it from (scale
from zero), or the extender failing: no cap (the answer is the algorithm's, as without an extender), logged
with the reason, and the explain record says so: a failed source never becomes a made-up cap.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from .selectors import Selector

logger = logging.getLogger("toposcale.adapter.placement")
REASONS = ("no-gpu", "no-topology-slot", "required-scope")
WARN_EVERY_S = 300.0


def cap(
    desired: int, ready: int, starting: int, placeable: int, allowance: int, unplaced: int = 0
) -> tuple[int, int]:
    """(the capped count, how many were held back). `unplaced`: starting pods still Pending without a slot
    (they do not count toward the room: else each sync would add `allowance` more). Never below what is
    already there."""
    room = ready + starting - max(unplaced, 0) + max(placeable, 0) + max(allowance, 0)
    if desired <= room:
        return desired, 0
    return max(room, ready + starting), desired - max(room, ready + starting)


def held_back_text(reason: str, gpus: int, scope: str) -> str:
    if reason == "required-scope":
        return f"no {gpus}-GPU set meeting required-scope {scope} free"
    if reason == "no-topology-slot":
        return f"no {gpus}-GPU set of the asked tier free"
    return f"no node with {gpus} free GPUs"


def summary(desired: int, ready: int, starting: int, doc: dict[str, Any], allowance: int, held: int) -> str:
    """The one-line record: "wanted 6; 3 ready, 1 starting; 1 placeable (node gpu-hgx-7, tier nvlink) ..."."""
    n = doc["placeable"]["any"]
    where = [f"node {r['node']}, tier {r['tiers'][0]}" for r in doc.get("nodes", [])[:3] if r.get("tiers")]
    text = f"wanted {desired}; {ready} ready, {starting} starting; {n} placeable"
    if where:
        text += f" ({'; '.join(where)})"
    text += f"; allowance {allowance}"
    if held:
        reason = held_back_text(doc["heldBack"]["any"], doc["gpus"], doc.get("requiredScope", "any"))
        text += f"; {held} held back: {reason}"
    return text


class Placement:
    """The cap and its metric; `extender` has `post(path, body)` (victims_keeper.ExtenderClient)."""

    def __init__(
        self,
        api: Any,
        extender: Any,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes_asyncio import client

        self.api = api
        self.core = client.CoreV1Api(api)
        self.extender = extender
        self.clock = clock
        self.gauge = Gauge(
            "toposcale_unplaceable_replicas",
            "Replicas vllm_desired_replicas wanted beyond ready + starting + placeable + allowance: the "
            "cluster, not the autoscaler, is the limit (reason: no-gpu, no-topology-slot, required-scope)",
            ["namespace", "metric", "reason"],
            registry=registry,
        )
        self._held: dict[tuple[str, str, str], tuple[int, str]] = {}  # (ns, metric, selector) -> (held, why)
        self._warned: dict[str, float] = {}

    def _warn(self, key: str, message: str, **extra: Any) -> None:
        now = self.clock()
        if now - self._warned.get(key, -1e9) >= WARN_EVERY_S:
            self._warned[key] = now
            logger.warning(message, extra=extra)

    def _record(self, namespace: str, metric: str, selector: str, held: int | None, reason: str) -> None:
        """This selector's cut (None: unknown now, the extender failing: its part leaves the sum, and a
        (namespace, metric) with no known part has no series, rather than a stale or made-up value)."""
        if held is None:
            self._held.pop((namespace, metric, selector), None)
        else:
            self._held[(namespace, metric, selector)] = (held, reason)
        known = [(h, why) for (ns, m, _), (h, why) in self._held.items() if ns == namespace and m == metric]
        for r in REASONS:
            if known:
                self.gauge.labels(namespace, metric, r).set(sum(h for h, why in known if why == r))
            else:
                with contextlib.suppress(KeyError):
                    self.gauge.remove(namespace, metric, r)

    async def template(self, namespace: str, selector: Selector) -> tuple[dict[str, Any] | None, int]:
        """One selected pod (the template; None when there is none) and how many are unscheduled."""
        pods = (await self.core.list_namespaced_pod(namespace, label_selector=str(selector))).items
        if not pods:
            return None, 0
        waiting = sum(
            1
            for p in pods
            if not (p.spec is not None and p.spec.node_name) and p.metadata.deletion_timestamp is None
        )
        return self.api.sanitize_for_serialization(pods[0]), waiting

    async def cap(
        self,
        metric: str,
        namespace: str,
        selector: Selector,
        desired: int,
        ready: int,
        starting: int,
        allowance: int,
        explain: dict[str, Any] | None,
    ) -> int:
        """`desired` capped at what can be placed (see the module docstring); `explain` gets the record."""
        sel = str(selector)
        if desired <= ready + starting + max(allowance, 0):
            self._record(namespace, metric, sel, 0, "no-gpu")
            return desired  # nothing beyond what is there and the allowance: no need to ask
        try:
            pod, waiting = await self.template(namespace, selector)
            if pod is None:
                raise LookupError("no pod selected to take the template from (scale from zero)")
            doc = await self.extender.post("/placeable", pod)
            placeable = int(doc["placeable"]["any"])
            # ours first among the Pending pods the extender placed (exact when no other workload waits)
            unplaced = max(0, waiting - int(doc["pending"]["placed"]))
        except Exception as exc:  # no cap on a failed source: the algorithm's answer stands
            why = f"{type(exc).__name__}: {exc}"
            self._record(namespace, metric, sel, None, "")
            self._warn(
                f"{namespace}/{sel}",
                "placeable replicas unknown: no cap",
                namespace=namespace,
                selector=sel,
                error=why[:300],
            )
            if explain is not None:
                explain["placement"] = {"capped": False, "error": why[:500]}
            return desired
        out, held = cap(desired, ready, starting, placeable, allowance, unplaced)
        reason = str(doc["heldBack"]["any"]) if held else "no-gpu"
        self._record(namespace, metric, sel, held, reason if reason in REASONS else "no-gpu")
        if explain is not None:
            explain["placement"] = {
                "capped": bool(held),
                "wanted": desired,
                "ready": ready,
                "starting": starting,
                "placeable": placeable,
                "unplacedPending": unplaced,
                "allowance": allowance,
                "heldBack": held,
                "reason": reason if held else None,
                "nodes": doc.get("nodes", [])[:10],
                "summary": summary(desired, ready, starting, doc, allowance, held),
            }
            if held:
                explain["desiredReplicas"] = out
        if held:
            logger.info(
                "desired replicas capped by placement",
                extra={
                    "metric": metric,
                    "namespace": namespace,
                    "selector": sel,
                    "wanted": desired,
                    "answer": out,
                    "summary": summary(desired, ready, starting, doc, allowance, held),
                },
            )
        return out
