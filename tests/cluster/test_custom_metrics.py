"""custom.metrics.k8s.io/v1beta2 through the real aggregator (issue 16 acceptance): `kubectl get --raw
/apis/custom.metrics.k8s.io/v1beta2/namespaces/<ns>/pods/*/vllm_requests_waiting?labelSelector=app%3Dvllm`
against the scrape-mode adapter lists one item per Running and Ready pod, field by field; a pod whose
/metrics fails is absent (never 0), all failing is the adapter's 503 Status. The caller is the adapter's
APIService as deploy/ registers it (run_adapter patches its port and CA), with delegated authn/authz.
Loopback pod IPs 127.0.0.140.. only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lab.peers.qwen import QwenStack

from .conftest import Deployed, kubectl, run_adapter, wait_for

NS = "llm-custom"
PATH = (
    f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NS}/pods/*/vllm_requests_waiting"
    "?labelSelector=app%3Dvllm"
)


def raw(deployed: Deployed, path: str) -> tuple[int, str]:
    r = kubectl(deployed.cluster, "get", "--raw", path, check=False)
    return r.returncode, r.stdout if r.returncode == 0 else r.stderr


async def test_kubectl_get_raw_lists_one_item_per_pod(deployed: Deployed, tmp_path: Path) -> None:
    async with (
        QwenStack(deployed, NS, first_ip="127.0.0.140") as stack,
        run_adapter(
            deployed,
            ["--kubeconfig", str(deployed.kubeconfigs["toposcale-adapter"])],
            tmp_path / "adapter.log",
        ) as adapter,
    ):
        try:
            # the example's HPA would scale on the external metrics meanwhile: the pod count is the test's
            await asyncio.to_thread(kubectl, deployed.cluster, "delete", "hpa", "-n", NS, "--all")
            await asyncio.to_thread(
                kubectl, deployed.cluster, "scale", "-n", NS, "deployment/vllm-qwen", "--replicas=2"
            )
            await wait_for(lambda: len(stack.exporters) == 2, 60, "two pods running")
            stack.set(waiting=7)
            names = list(stack.exporters)  # insertion order: the first pod is the one waiting 7
            want = {names[0]: "7", names[1]: "0"}

            # The example's HPA (synced every 2 s until deleted above) may have had the adapter scrape the
            # first pod before set(waiting=7): that scrape is served for the adapter's 2 s cache TTL, so wait
            # for the values now exposed rather than taking the first listing of two items.
            async def listed() -> dict | None:
                code, out = await asyncio.to_thread(raw, deployed, PATH)
                if code != 0:
                    return None
                body = json.loads(out)
                values = {i["describedObject"]["name"]: i["value"] for i in body["items"]}
                return body if values == want else None

            body = await wait_for(listed, 60, f"the items {want} through the aggregator")
            assert body["kind"] == "MetricValueList"
            assert body["apiVersion"] == "custom.metrics.k8s.io/v1beta2"
            by_name = {i["describedObject"]["name"]: i for i in body["items"]}
            assert set(by_name) == set(names)
            for name, item in by_name.items():
                assert item["describedObject"] == {
                    "kind": "Pod",
                    "namespace": NS,
                    "name": name,
                    "apiVersion": "v1",
                }
                assert item["metric"] == {"name": "vllm_requests_waiting"}
                assert "windowSeconds" not in item
                assert item["timestamp"].endswith("Z")

            stack.exporters[names[1]].mode = "error"  # its /metrics answers 500: absent, never 0

            async def one_left() -> list | None:  # after the adapter's 2 s cache
                code, out = await asyncio.to_thread(raw, deployed, PATH)
                assert code == 0, out
                items = [(i["describedObject"]["name"], i["value"]) for i in json.loads(out)["items"]]
                return items if len(items) == 1 else None

            assert await wait_for(one_left, 20, "the failing pod left out") == [(names[0], "7")]

            stack.set(mode="error")

            async def unavailable() -> str | None:
                code, out = await asyncio.to_thread(raw, deployed, PATH)
                return out if code != 0 else None

            out = await wait_for(unavailable, 20, "a 503 once every pod fails")
            assert "ServiceUnavailable" in out and "all 2 selected pods failed" in out, out
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e


def pods_hpa() -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "vllm-pods", "namespace": NS2},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm-qwen"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "vllm_requests_waiting"},
                        "target": {"type": "AverageValue", "averageValue": "4"},
                    },
                }
            ],
        },
    }


NS2 = "llm-custom-hpa"


async def test_real_hpa_type_pods_with_a_failing_pod(deployed: Deployed, tmp_path: Path) -> None:
    """2 pods: A queue 6, B's /metrics failing. The HPA averages over the pods with a value (6 / 4 = 1.5:
    scale up), then counts B as 0 for a scale-up (podautoscaler/replica_calculator.go): (6 + 0) / 2 / 4 =
    0.75 flips the direction, so it keeps 2 replicas. B answering 6 too: ceil(2 * 1.5) = 3."""
    async with (
        QwenStack(deployed, NS2, first_ip="127.0.0.150") as stack,
        run_adapter(
            deployed,
            ["--kubeconfig", str(deployed.kubeconfigs["toposcale-adapter"])],
            tmp_path / "adapter.log",
        ) as adapter,
    ):
        try:
            cluster = deployed.cluster
            await asyncio.to_thread(kubectl, cluster, "delete", "hpa", "-n", NS2, "--all")
            await asyncio.to_thread(
                kubectl, cluster, "scale", "-n", NS2, "deployment/vllm-qwen", "--replicas=2"
            )
            await wait_for(lambda: len(stack.exporters) == 2, 60, "two pods running")
            stack.set(waiting=6)
            names = list(stack.exporters)
            stack.exporters[names[1]].mode = "error"
            await asyncio.to_thread(kubectl, cluster, "apply", "-f", "-", stdin=json.dumps(pods_hpa()))

            async def hpa() -> dict:
                return await stack.get(
                    f"/apis/autoscaling/v2/namespaces/{NS2}/horizontalpodautoscalers/vllm-pods"
                )

            async def observed() -> dict | None:
                h = await hpa()
                cur = (h.get("status", {}).get("currentMetrics") or [{}])[0].get("pods", {})
                return h if cur.get("current", {}).get("averageValue") == "6" else None

            await wait_for(observed, 60, "the HPA reading A's 6 through custom.metrics.k8s.io")
            await asyncio.sleep(8)  # four sync periods of the controller (2 s)
            h = await hpa()
            assert h["status"]["desiredReplicas"] == 2 and h["status"]["currentReplicas"] == 2, h["status"]
            active = next(c for c in h["status"]["conditions"] if c["type"] == "ScalingActive")
            assert active["status"] == "True", active
            assert len(stack.exporters) == 2

            b = stack.exporters[names[1]]
            b.mode, b.waiting = "ok", 6.0

            async def three() -> bool:
                return (await hpa())["status"].get("desiredReplicas") == 3

            await wait_for(three, 60, "the HPA scaling to 3 once B answers 6")
        except AssertionError as e:
            described = kubectl(
                deployed.cluster, "describe", "hpa", "-n", NS2, "vllm-pods", check=False
            ).stdout
            raise AssertionError(f"{e}\n--- hpa:\n{described}\n--- adapter log:\n{adapter.tail()}") from e
