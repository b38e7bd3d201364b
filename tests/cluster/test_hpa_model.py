"""The Python HPA model (toposcale's hpa.py, run by the demo and the autoscaling benchmark) against the real
kube-controller-manager's HPA controller: the same scripted sequence of External metric values, served by the
adapter through the real aggregator, must give the same replica changes.

Each sequence runs in its own namespace (all three at once): a Deployment whose pods stay Pending (no node:
an `AverageValue` target divides by the scale's status replicas, which counts them, and needs no ready pod),
an HPA with `type: External` `vllm_requests_waiting` `AverageValue: 1` over one in-test vLLM exporter whose
queue the script sets, and the behavior under test. The real controller (sync period 2 s) logs each rescale
("Successfully rescaled" currentReplicas desiredReplicas); the model replays the script with a sync every
2 s. The rescales must be equal, in order. Each step is held for several sync periods and away from the
window and period boundaries, so the comparison is of decisions, not of when a sync fell.

1. scale-up limited by policies: Pods 1 and Percent 50 per 4 s, selectPolicy Max: 1 -> 2 -> 3 -> 5 -> 6;
2. scale-down stabilization (12 s): 6, then 4 for 6 s, then 2: down to 4 first, then 2;
3. a metric error in the middle: 5, then 5.5 (ratio exactly 1.1: within the tolerance, bounds included as in
   Kubernetes 1.37), then the source failing (the HPA holds, ScalingActive=False), then 2: 5 -> 2;
4. ready pods: a `Value` target (10) scales the ratio by the Ready pods, which the in-test kubelet runs and
   the script makes not Ready: 2 pods at 10 keep 2; one not Ready and 30: ceil(3 x 1) = 3, then 6.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.kube.client import ApiSession
from lab.kube.cluster import Cluster
from lab.kube.kubelet import FakeKubelet
from lab.objects import make_node
from lab.peers.exporters import VllmExporter
from lab.peers.qwen import condition

from .conftest import Deployed, apply_objects, kubectl, run_adapter, wait_for

try:  # the simulator may have moved the model beside the benchmark
    from toposcale.autoscale import hpa  # type: ignore[attr-defined]
except ImportError:
    from toposcale.demo import hpa

SYNC_S = 2.0  # lab/kube/cluster.py: --horizontal-pod-autoscaler-sync-period
METRIC = "vllm_requests_waiting"
ERROR = "error"
_RESCALED = re.compile(
    r'"Successfully rescaled" HPA="(?P<hpa>[^"]+)" currentReplicas=(?P<cur>\d+) '
    r"desiredReplicas=(?P<des>\d+)"
)


def behavior(up: dict[str, Any], down: dict[str, Any]) -> dict[str, Any]:
    return {"scaleUp": up, "scaleDown": down}


def rules(spec: dict[str, Any]) -> Any:
    return hpa.Rules(
        float(spec["stabilizationWindowSeconds"]),
        tuple(hpa.Policy(p["type"], p["value"], float(p["periodSeconds"])) for p in spec["policies"]),
        spec.get("selectPolicy", "Max"),
    )


FAST_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [{"type": "Pods", "value": 10, "periodSeconds": 2}],
}


@dataclass
class Sequence:
    name: str
    behavior: dict[str, Any]
    steps: list[tuple[float | str, float]]  # (queue, or ERROR, seconds held)
    expected: list[tuple[int, int]]  # the rescales, as a reader of the story expects them
    started: list[float] = field(default_factory=list)  # each step's start, seconds since the script began
    target: tuple[str, str] = ("AverageValue", "1")
    replicas: int = 1  # minReplicas and the Deployment's start
    # pods run (Ready) by the in-test kubelet, and how many of them the script makes not Ready in each step;
    # without: the pods stay Pending (an AverageValue target needs no ready pod)
    unready: tuple[int, ...] | None = None

    @property
    def namespace(self) -> str:
        return f"hpa-model-{self.name}"


SEQUENCES = [
    Sequence(
        "policies",
        behavior(
            {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Pods", "value": 1, "periodSeconds": 4},
                    {"type": "Percent", "value": 50, "periodSeconds": 4},
                ],
            },
            {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
            },
        ),
        [(6.0, 30.0)],
        [(1, 2), (2, 3), (3, 5), (5, 6)],
    ),
    Sequence(
        "stabilization",
        behavior(
            FAST_UP,
            {
                "stabilizationWindowSeconds": 12,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
            },
        ),
        [(6.0, 10.0), (4.0, 6.0), (2.0, 26.0)],
        [(1, 6), (6, 4), (4, 2)],
    ),
    Sequence(
        "error",
        behavior(
            FAST_UP,
            {
                "stabilizationWindowSeconds": 6,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
            },
        ),
        [(5.0, 8.0), (5.5, 8.0), (ERROR, 12.0), (2.0, 12.0)],
        [(1, 5), (5, 2)],
    ),
    Sequence(
        "ready",
        behavior(
            FAST_UP,
            {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
            },
        ),
        [(10.0, 6.0), (30.0, 24.0)],
        # Value 10: 2 replicas at 10 keep 2; then one pod not Ready and 30: ceil(3 x 1 ready) = 3, and once
        # the third pod is Ready, ceil(3 x 2) = 6 (all Ready it would have been 2 -> 6 at once)
        [(2, 3), (3, 6)],
        target=("Value", "10"),
        replicas=2,
        unready=(0, 1),
    ),
]


def objects(seq: Sequence) -> list[dict[str, Any]]:
    ns = seq.namespace
    labels = {"app": "hpa-model"}
    # a scheduler name nothing serves keeps the pods Pending; the kubelet's binder takes the "run" one
    scheduler = "hpa-model-run" if seq.unready is not None else "none"
    kind, target = seq.target
    target_field = {"type": kind, "averageValue" if kind == "AverageValue" else "value": target}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "model", "namespace": ns},
            "spec": {
                "replicas": seq.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"schedulerName": scheduler, "containers": [{"name": "c", "image": "none"}]},
                },
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "model", "namespace": ns},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model"},
                "minReplicas": seq.replicas,
                "maxReplicas": 8 if seq.unready is None else 6,
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": METRIC, "selector": {"matchLabels": {"app": "script"}}},
                            "target": target_field,
                        },
                    }
                ],
                "behavior": seq.behavior,
            },
        },
    ]


def model_rescales(seq: Sequence) -> list[tuple[int, int]]:
    """The model's rescales for the script: a sync every SYNC_S seconds, each reading the step in effect."""
    spec = hpa.HPASpec(
        min_replicas=seq.replicas,
        max_replicas=8 if seq.unready is None else 6,
        metrics=(hpa.ExternalMetric(METRIC, "app=script", *seq.target),),
        scale_up=rules(seq.behavior["scaleUp"]),
        scale_down=rules(seq.behavior["scaleDown"]),
    )
    ctl = hpa.HPAController(spec)
    end = seq.started[-1] + seq.steps[-1][1]
    replicas, out, t = seq.replicas, [], 0.0
    while t < end:
        i = max(k for k, s in enumerate(seq.started) if s <= t)
        value = seq.steps[i][0]
        reading: list[int] | Exception = (
            hpa.MetricError("the source failed") if value == ERROR else [hpa.milli_value(repr(value))]
        )
        ready = replicas - (seq.unready[i] if seq.unready is not None else 0)
        d = ctl.reconcile(t, replicas, ready, {METRIC: reading})
        if d.desired != replicas:
            out.append((replicas, d.desired))
            replicas = d.desired
        t += SYNC_S
    return out


def real_rescales(cluster: Cluster, seq: Sequence, offset: int) -> list[tuple[int, int]]:
    text = (cluster.dir / "kube-controller-manager.log").read_text(errors="replace")[offset:]
    who = f"{seq.namespace}/model"
    return [(int(m["cur"]), int(m["des"])) for m in _RESCALED.finditer(text) if m["hpa"] == who]


async def hpa_status(cluster: Cluster, seq: Sequence) -> dict[str, Any]:
    async with ApiSession(cluster) as api:
        return await api.get(
            f"/apis/autoscaling/v2/namespaces/{seq.namespace}/horizontalpodautoscalers/model"
        )


async def pods(cluster: Cluster, seq: Sequence) -> list[dict[str, Any]]:
    async with ApiSession(cluster) as api:
        items = (await api.get(f"/api/v1/namespaces/{seq.namespace}/pods"))["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def is_ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


async def run(cluster: Cluster, seq: Sequence, exporter: VllmExporter, kubelet: FakeKubelet) -> list[str]:
    """Play the script; returns what was seen of ScalingActive during the error steps."""
    seen: list[str] = []

    async def active() -> bool:
        return condition(await hpa_status(cluster, seq), "ScalingActive").get("status") == "True"

    async def all_ready() -> bool:
        return sum(is_ready(p) for p in await pods(cluster, seq)) == seq.replicas

    await wait_for(active, 90, f"{seq.name}: the HPA reading its metric")
    if seq.unready is not None:
        await wait_for(all_ready, 60, f"{seq.name}: {seq.replicas} pods Ready")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, (value, hold) in enumerate(seq.steps):
        if seq.unready is not None:  # the kubelet reports the first pods not Ready (their probe fails)
            for pod in [p for p in await pods(cluster, seq) if is_ready(p)][: seq.unready[i]]:
                key = f"{seq.namespace}/{pod['metadata']['name']}"
                await kubelet.mark_running(pod, kubelet.ips[key], ready=False)
        seq.started.append(loop.time() - start if seq.started else 0.0)
        exporter.mode = "error" if value == ERROR else "ok"
        if value != ERROR:
            exporter.waiting = float(value)
        await asyncio.sleep(hold)
        if value == ERROR:
            c = condition(await hpa_status(cluster, seq), "ScalingActive")
            seen.append(f"{c.get('status')} {c.get('reason')}")
    return seen


async def test_the_hpa_model_decides_as_the_real_controller(deployed: Deployed, tmp_path: Path) -> None:
    cluster = deployed.cluster
    exporters = {s.name: VllmExporter(waiting=1.0) for s in SEQUENCES}
    for e in exporters.values():
        await e.start()
    exporters["ready"].waiting = 10.0  # 2 replicas at Value 10: kept
    kubelet = FakeKubelet(
        cluster,
        [make_node("hpa-model-node")],
        binder=True,
        scheduler_name="hpa-model-run",
        first_ip="127.0.0.240",
    )
    await kubelet.start()
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "".join(
            f"- url: {exporters[s.name].url}\n"
            f"  labels: {{namespace: {s.namespace}, pod: script, app: script}}\n"
            for s in SEQUENCES
        )
    )
    log = cluster.dir / "kube-controller-manager.log"
    offset = len(log.read_text(errors="replace"))
    try:
        async with run_adapter(
            deployed, ["--scrape-targets", str(targets), "--cache-ttl", "0.5"], tmp_path / "adapter.log"
        ) as adapter:
            for s in SEQUENCES:
                await asyncio.to_thread(apply_objects, cluster, objects(s))
            try:
                errors = await asyncio.gather(
                    *(run(cluster, s, exporters[s.name], kubelet) for s in SEQUENCES)
                )
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e
        for s, seen in zip(SEQUENCES, errors, strict=True):
            real, mine = real_rescales(cluster, s, offset), model_rescales(s)
            assert real == mine == s.expected, (s.name, {"controller": real, "model": mine})
            assert all(x == "False FailedGetExternalMetric" for x in seen), (s.name, seen)
        assert errors[2], "the error step was played"
    finally:
        await kubelet.stop()
        for e in exporters.values():
            await e.stop()
        for s in SEQUENCES:
            await asyncio.to_thread(
                kubectl, cluster, "delete", "namespace", s.namespace, "--wait=false", check=False
            )
