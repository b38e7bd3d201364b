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
   Kubernetes 1.37), then the source failing (the HPA holds, ScalingActive=False), then 2: 5 -> 2.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.exporters import VllmExporter
from tests.harness.kube_cluster import Cluster
from tests.harness.kubelet import ApiSession

from .conftest import Deployed, apply_objects, kubectl, run_adapter, wait_for
from .qwen import condition

try:  # the simulator may have moved the model beside the benchmark
    from toposcale.autoscale import hpa  # type: ignore[attr-defined]
except ImportError:
    from toposcale.demo import hpa

SYNC_S = 2.0  # tests/harness/kube_cluster.py: --horizontal-pod-autoscaler-sync-period
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
]


def objects(seq: Sequence) -> list[dict[str, Any]]:
    ns = seq.namespace
    labels = {"app": "hpa-model"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "model", "namespace": ns},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    # no scheduler of this name: the pods stay Pending, counted in the scale's status
                    "spec": {"schedulerName": "none", "containers": [{"name": "c", "image": "none"}]},
                },
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "model", "namespace": ns},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model"},
                "minReplicas": 1,
                "maxReplicas": 8,
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": METRIC, "selector": {"matchLabels": {"app": "script"}}},
                            "target": {"type": "AverageValue", "averageValue": "1"},
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
        min_replicas=1,
        max_replicas=8,
        metrics=(hpa.ExternalMetric(METRIC, "app=script", "AverageValue", "1"),),
        scale_up=rules(seq.behavior["scaleUp"]),
        scale_down=rules(seq.behavior["scaleDown"]),
    )
    ctl = hpa.HPAController(spec)
    end = seq.started[-1] + seq.steps[-1][1]
    replicas, out, t = 1, [], 0.0
    while t < end:
        value = next(v for (v, _), s in reversed(list(zip(seq.steps, seq.started, strict=True))) if s <= t)
        reading: list[int] | Exception = (
            hpa.MetricError("the source failed") if value == ERROR else [hpa.milli_value(repr(value))]
        )
        d = ctl.reconcile(t, replicas, replicas, {METRIC: reading})
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


async def run(cluster: Cluster, seq: Sequence, exporter: VllmExporter) -> list[str]:
    """Play the script; returns what was seen of ScalingActive during the error steps."""
    seen: list[str] = []

    async def active() -> bool:
        return condition(await hpa_status(cluster, seq), "ScalingActive").get("status") == "True"

    await wait_for(active, 90, f"{seq.name}: the HPA reading its metric")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for value, hold in seq.steps:
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
                errors = await asyncio.gather(*(run(cluster, s, exporters[s.name]) for s in SEQUENCES))
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e
        for s, seen in zip(SEQUENCES, errors, strict=True):
            real, mine = real_rescales(cluster, s, offset), model_rescales(s)
            assert real == mine == s.expected, (s.name, {"controller": real, "model": mine})
            assert all(x == "False FailedGetExternalMetric" for x in seen), (s.name, seen)
        assert errors[2], "the error step was played"
    finally:
        for e in exporters.values():
            await e.stop()
        for s in SEQUENCES:
            await asyncio.to_thread(
                kubectl, cluster, "delete", "namespace", s.namespace, "--wait=false", check=False
            )
