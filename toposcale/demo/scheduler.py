"""The demo's kube-scheduler: its own GPU-count filter, then the extender's filter and prioritize over HTTP.

What kube-scheduler does with an extender (pkg/scheduler/extender.go, schedule_one.go) under the shipped
profile (deploy/extender/scheduler-config.yaml), reduced to one resource: NodeResourcesFit drops nodes without
k free GPUs; the extender (nodeCacheCapable: false here) gets the Pod and the surviving v1.Node objects,
answers which pass; scoring is skipped when one node is left. Each node's total is NodeResourcesFit's
MostAllocated score on nvidia.com/gpu (`requested * 100 // capacity`, requested including the pod, as
noderesources/most_allocated.go computes it; the profile's only scored resource, weight 1) plus the
extender's `score x weight x (MaxNodeScore 100 / MaxExtenderPriority 10)`; the highest total wins, ties
broken at random as selectHost does. The other in-tree scoring plugins are left out: the demo's nodes carry
no taints, affinities or images for them to tell apart."""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

logger = logging.getLogger("toposcale.demo.scheduler")

MAX_NODE_SCORE = 100
MAX_EXTENDER_PRIORITY = 10


class ExtenderError(Exception):
    """The extender failed or answered something the scheduler cannot use."""


def pod_object(name: str, namespace: str, gpus: int, labels: dict[str, str]) -> dict[str, Any]:
    """The v1.Pod a vLLM Deployment's ReplicaSet would create."""
    req = {"nvidia.com/gpu": str(gpus), "cpu": "8", "memory": "64Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": dict(labels)},
        "spec": {
            "schedulerName": "default-scheduler",
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.10.2",
                    "args": ["--model", "Qwen/Qwen2.5-7B-Instruct", "--tensor-parallel-size", str(gpus)],
                    "resources": {"requests": req, "limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
        "status": {"phase": "Pending"},
    }


def _get(doc: dict[str, Any], key: str) -> Any:
    """The scheduler decodes extender answers case-insensitively."""
    low = key.lower()
    for k, v in doc.items():
        if k.lower() == low:
            return v
    return None


@dataclass(frozen=True, slots=True)
class FilterAnswer:
    passed: list[str]
    failed: dict[str, str]


def parse_filter(doc: Any, sent: list[str]) -> FilterAnswer:
    if not isinstance(doc, dict):
        raise ExtenderError(f"filter answered {type(doc).__name__}, not an ExtenderFilterResult object")
    err = _get(doc, "Error")
    if err:
        raise ExtenderError(f"extender filter error: {err}")
    failed: dict[str, str] = {}
    for key in ("FailedNodes", "FailedAndUnresolvableNodes"):
        failed.update(_get(doc, key) or {})
    nodes = _get(doc, "Nodes")
    names = _get(doc, "NodeNames")
    if nodes is not None:
        passed = [n["metadata"]["name"] for n in (nodes.get("items") or [])]
    elif names is not None:
        passed = list(names)
    else:
        passed = []  # neither: every node counts as rejected
    unknown = [n for n in passed if n not in sent]
    if unknown:
        raise ExtenderError(f"extender passed nodes it was not sent: {unknown}")
    return FilterAnswer(passed, failed)


def parse_priorities(doc: Any) -> dict[str, int]:
    if not isinstance(doc, list):
        raise ExtenderError("prioritize must answer a JSON array of HostPriority")
    out: dict[str, int] = {}
    for item in doc:
        host, score = _get(item, "Host"), _get(item, "Score")
        if not isinstance(host, str) or not isinstance(score, int):
            raise ExtenderError(f"bad HostPriority {item!r}")
        out[host] = score
    return out


def most_allocated(requested: int, capacity: int) -> int:
    """NodeResourcesFit MostAllocated for one resource (most_allocated.go mostRequestedScore): requested
    includes the pod being scheduled, clamped to capacity; 0 for a node without the resource."""
    if capacity <= 0:
        return 0
    return min(requested, capacity) * MAX_NODE_SCORE // capacity


def pick(
    candidates: list[str],
    scores: dict[str, int],
    weight: int,
    rng: random.Random,
    fit_points: dict[str, int] | None = None,
) -> tuple[str, int]:
    """Highest total of NodeResourcesFit points (`fit_points`, from `most_allocated`) and weighted extender
    points; ties broken uniformly at random (selectHost's reservoir sampling)."""
    if not candidates:
        raise ValueError("no candidates")
    fit = fit_points or {}
    points = {
        n: fit.get(n, 0) + scores.get(n, 0) * weight * (MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY)
        for n in candidates
    }
    top = max(points.values())
    best = [n for n in candidates if points[n] == top]
    return rng.choice(best), top


def gpu_capacity(node: dict[str, Any]) -> int:
    """The node's allocatable nvidia.com/gpu (what NodeResourcesFit scores against)."""
    return int((node.get("status") or {}).get("allocatable", {}).get("nvidia.com/gpu", "0"))


@dataclass(frozen=True, slots=True)
class Placement:
    node: str | None
    extender_score: int | None
    feasible: list[str]
    failed: dict[str, str]
    reason: str


class SchedulerClient:
    def __init__(self, base_url: str, weight: int, rng: random.Random, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.weight = weight
        self.rng = rng
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)  # the scheduler's httpTimeout default

    async def _post(self, http: aiohttp.ClientSession, verb: str, body: dict[str, Any]) -> Any:
        try:
            async with http.post(f"{self.base_url}/{verb}", json=body, timeout=self.timeout) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise ExtenderError(f"extender {verb}: HTTP {resp.status}: {text}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ExtenderError(f"extender {verb}: {type(exc).__name__}: {exc}") from exc

    async def schedule(
        self,
        http: aiohttp.ClientSession,
        pod: dict[str, Any],
        nodes: list[dict[str, Any]],
        free: dict[str, int],
        k: int,
    ) -> Placement:
        fit = [n for n in nodes if free[n["metadata"]["name"]] >= k]  # NodeResourcesFit
        failed = {
            n["metadata"]["name"]: f"Insufficient nvidia.com/gpu ({free[n['metadata']['name']]} free)"
            for n in nodes
            if n not in fit
        }
        if not fit:
            return Placement(None, None, [], failed, "0 nodes have enough free GPUs")
        names = [n["metadata"]["name"] for n in fit]
        args = {"Pod": pod, "Nodes": {"metadata": {}, "items": fit}, "NodeNames": None}
        answer = parse_filter(await self._post(http, "filter", args), names)
        failed.update(answer.failed)
        if not answer.passed:
            return Placement(None, None, [], failed, "the extender filtered out every node")
        if len(answer.passed) == 1:  # prioritize is skipped when one node is feasible
            return Placement(answer.passed[0], None, answer.passed, failed, "only feasible node")
        passed = [n for n in fit if n["metadata"]["name"] in answer.passed]
        args = {"Pod": pod, "Nodes": {"metadata": {}, "items": passed}, "NodeNames": None}
        scores = parse_priorities(await self._post(http, "prioritize", args))
        fit_points = {
            n["metadata"]["name"]: most_allocated(
                gpu_capacity(n) - free[n["metadata"]["name"]] + k, gpu_capacity(n)
            )
            for n in passed
        }
        node, _points = pick(answer.passed, scores, self.weight, self.rng, fit_points)
        return Placement(
            node, scores.get(node), answer.passed, failed, "highest MostAllocated + extender score"
        )
