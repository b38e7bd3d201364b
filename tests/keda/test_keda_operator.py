"""The real KEDA (operator + metrics server v2.21.0, lab/peers/keda.py) autoscaling
deploy/examples/qwen-keda on toposcale's external scaler (gRPC, TLS verified with the caCert of a
TriggerAuthentication), on the session's real control plane: the real HPA controller
(kube-controller-manager) reads KEDA's external metrics through the real aggregator.

The example's ScaledObject as shipped, except (said here because they change what a user sees):
- pollingInterval 1 s and cooldownPeriod 5 s (shipped: 15 s and 600 s) and the HPA's scaleDown without a
  stabilization window, so the story takes seconds;
- scalerAddress 127.0.0.1:<port> (the adapter runs on loopback; its test certificate is for 127.0.0.1);
- a third trigger, the queue of a gateway in front of vLLM (pod `vllm-gateway`, label app=vllm-gateway, the
  same vllm_requests_waiting rule): the example's comment says why scale-from-zero needs one, as the queue of
  a vLLM pod exists only while the pod does.

The story:
1. nothing waits: KEDA scales the Deployment to 0 (Active=False), the HPA it made stays at minReplicas 1;
2. 10 requests wait at the gateway: KEDA activates the Deployment (0 -> 1, KEDAScaleTargetActivated), the HPA
   scales on KEDA's external metric (10 / targetValue 4 -> 3), and KEDA's metrics server answers the value
   toposcale read (10) through the aggregator;
3. the gateway's /metrics fails: toposcale answers UNAVAILABLE, never 0. KEDA, with no fallback configured,
   reports Ready=False (TriggerError), an event with toposcale's reason, and scales nothing: 3 replicas
   through more than cooldownPeriod and several polling intervals; the metrics server answers the HPA an error
   for that metric;
4. the gateway drains to 0: the HPA goes down to 1 and, after cooldownPeriod, KEDA to 0
   (KEDAScaleTargetDeactivated).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab.kube.cluster import free_port
from lab.peers.deployed import TOPOSCALE, Deployed, apply_objects, kubectl, process, render
from lab.peers.exporters import VllmExporter
from lab.peers.keda import Keda, make_tls, run_keda, tail, wait_https
from lab.peers.qwen import QwenStack
from lab.procs import wait_for

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "qwen-keda"
GATEWAY = "vllm-gateway"
# each test's namespace and pod IPs (the vLLM replicas and the gateway): 127.0.0.180.. and 127.0.0.200..
NS, FIRST_IP = "llm-keda", "127.0.0.180"
PUSH_NS, PUSH_FIRST_IP = "llm-keda-push", "127.0.0.200"
POLLING_S, COOLDOWN_S = 1, 5


class GatewayStack(QwenStack):
    """qwen-keda's Deployment (no HPA: KEDA makes its own) plus a gateway pod whose vLLM exporter carries the
    queue; the vLLM replicas' queue and KV cache stay 0 (idle replicas)."""

    def __init__(self, deployed: Deployed, namespace: str, first_ip: str) -> None:
        super().__init__(deployed, namespace, first_ip=first_ip)
        self.kv_cache = 0.0
        self.gateway_mode = "ok"
        self.example: list[dict[str, Any]] = []

    def _apply_values(self) -> None:
        for name, e in self.exporters.items():
            gw = name == GATEWAY
            e.waiting = self.waiting_first if gw else 0.0
            e.kv_cache = 0.0 if gw else self.kv_cache
            e.mode = self.gateway_mode if gw else self.mode

    async def start(self) -> GatewayStack:
        await self.kubelet.start()
        self.example = render(EXAMPLE)
        objects = []
        for o in self.example:
            o = copy.deepcopy(o)
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = self.namespace
            else:
                o["metadata"]["namespace"] = self.namespace
            objects.append(o)
        _, left = await asyncio.to_thread(apply_objects, self.cluster, objects)  # CRD kinds left out
        assert "ScaledObject/vllm-qwen" in left, left
        assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in objects), "qwen-keda ships an HPA"
        gateway = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": GATEWAY, "namespace": self.namespace, "labels": {"app": GATEWAY}},
            "spec": {"nodeName": f"{self.namespace}-gpu-0",
                     "containers": [{"name": "gateway", "image": "gateway"}]},
        }
        await asyncio.to_thread(kubectl, self.cluster, "apply", "-f", "-", stdin=json.dumps(gateway))
        return self

    def gateway(self) -> VllmExporter | None:
        return self.exporters.get(GATEWAY)


def scaled_object(example: list[dict[str, Any]], ns: str, address: str) -> list[dict[str, Any]]:
    """The example's ScaledObject and TriggerAuthentication, changed as the module docstring says."""
    so = copy.deepcopy(next(o for o in example if o["kind"] == "ScaledObject"))
    ta = copy.deepcopy(next(o for o in example if o["kind"] == "TriggerAuthentication"))
    so["metadata"]["namespace"] = ta["metadata"]["namespace"] = ns
    so["spec"]["pollingInterval"] = POLLING_S
    so["spec"]["cooldownPeriod"] = COOLDOWN_S
    so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] = {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    }
    assert [t["metadata"]["metricName"] for t in so["spec"]["triggers"]] == [
        "vllm_requests_waiting", "vllm_kv_cache_usage"]
    for t in so["spec"]["triggers"]:
        assert t["metadata"]["enableTLS"] == "true"
        t["metadata"]["scalerAddress"] = address
    gw = copy.deepcopy(so["spec"]["triggers"][0])
    gw["metadata"]["labelSelector"] = f"app={GATEWAY}"
    so["spec"]["triggers"].append(gw)
    return [ta, so]


async def get(cluster: Any, ns: str, *path: str) -> dict[str, Any]:
    r = await asyncio.to_thread(kubectl, cluster, "get", *path, "-n", ns, "-o", "json")
    return json.loads(r.stdout)


async def state(cluster: Any, ns: str) -> dict[str, Any]:
    so = await get(cluster, ns, "scaledobject", "vllm-qwen")
    dep = await get(cluster, ns, "deployment", "vllm-qwen")
    conds = {c["type"]: c for c in so.get("status", {}).get("conditions") or []}
    return {"replicas": dep["spec"]["replicas"], "conds": conds, "status": so.get("status", {})}


async def events(cluster: Any, ns: str) -> list[dict[str, Any]]:
    r = await asyncio.to_thread(
        kubectl, cluster, "get", "events", "-n", ns, "-o", "json",
        "--field-selector", "involvedObject.kind=ScaledObject,involvedObject.name=vllm-qwen",
    )
    return json.loads(r.stdout)["items"]


async def raw(cluster: Any, path: str) -> tuple[int, str]:
    r = await asyncio.to_thread(kubectl, cluster, "get", "--raw", path, check=False)
    return r.returncode, r.stdout + r.stderr


@contextlib.asynccontextmanager
async def keda_on_toposcale(
    deployed: Deployed, tmp_path: Path, ns: str, first_ip: str, change: Any = None, *,
    rules: Path | None = None, stack: Any = None,
) -> AsyncIterator[tuple[Any, Keda]]:
    """KEDA, `toposcale adapter --keda-grpc-port` (with `rules`, default the deploy's) and the stack in `ns`
    (default a GatewayStack; another QwenStack without an HPA may be given), with the example's ScaledObject
    (as scaled_object() changes it, then `change(so)`) applied; the ScaledObject and TriggerAuthentication
    deleted at the end while the operator still runs (it takes its finalizers off and removes the HPA it
    made)."""
    cluster = deployed.cluster
    # the adapter's gRPC port with a certificate for 127.0.0.1 from a CA of the test's (KEDA's caCert)
    tls = await asyncio.to_thread(make_tls, tmp_path / "scaler-tls", "127.0.0.1", "localhost")
    port, grpc_port = free_port(), free_port()
    kc = str(deployed.kubeconfigs["toposcale-adapter"])
    argv = [
        str(TOPOSCALE), "adapter", "--port", str(port), "--bind-address", "127.0.0.1",
        "--tls-cert-file", str(tls / "tls.crt"), "--tls-private-key-file", str(tls / "tls.key"),
        "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc, "--kubeconfig", kc,
        "--rules", str(rules or deployed.deploy_dir / "adapter" / "base" / "generated" / "rules.yaml"),
        "--keda-grpc-port", str(grpc_port),
    ]
    log = tmp_path / "adapter.log"
    async with run_keda(cluster, tmp_path / "keda") as keda, process(argv, log) as adapter:
        ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        await wait_https(f"https://127.0.0.1:{port}/healthz", ctx, adapter, log)
        stack = stack or GatewayStack(deployed, ns, first_ip)
        try:
            async with stack:
                if isinstance(stack, GatewayStack):
                    await wait_for(lambda: stack.gateway() is not None, 60, "the gateway pod to run")
                await asyncio.to_thread(
                    kubectl, cluster, "create", "secret", "generic", "-n", ns, "toposcale-adapter-ca",
                    f"--from-file=ca.crt={tls / 'ca.crt'}",
                )
                objects = scaled_object(render(EXAMPLE), ns, f"127.0.0.1:{grpc_port}")
                if change is not None:
                    change(objects[1])
                await asyncio.to_thread(apply_objects_crd, cluster, objects)
                try:
                    yield stack, keda
                except AssertionError as e:
                    hpa = await asyncio.to_thread(kubectl, cluster, "describe", "hpa,scaledobject", "-n", ns,
                                                  check=False)
                    raise AssertionError(f"{e}\n--- kubectl describe hpa,scaledobject:\n{hpa.stdout}"
                                         f"{hpa.stderr}") from e
                finally:
                    # both carry KEDA's finalizer: deleted while the operator runs to take it off
                    await asyncio.to_thread(
                        kubectl, cluster, "delete", "-n", ns, "--timeout=60s", "scaledobject/vllm-qwen",
                        "triggerauthentication/toposcale-adapter", check=False,
                    )
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- toposcale adapter log:\n{tail(log)}\n{keda.logs()}") from e


def apply_objects_crd(cluster: Any, objects: list[dict[str, Any]]) -> None:
    kubectl(cluster, "apply", "--server-side", "--field-manager=toposcale-tests", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


async def test_keda_scales_qwen_from_zero_to_n_and_back_on_the_toposcale_scaler(
    deployed: Deployed, tmp_path: Path
) -> None:
    async with keda_on_toposcale(deployed, tmp_path, NS, FIRST_IP) as (stack, keda):
        await scale_story(stack, keda)


async def scale_story(stack: GatewayStack, keda: Keda) -> None:
    cluster, ns = stack.cluster, stack.namespace

    # 1. nothing waits anywhere: KEDA takes the Deployment to 0 and keeps the HPA it made at minReplicas 1
    async def idle() -> dict[str, Any] | None:
        s = await state(cluster, ns)
        ok = (s["replicas"] == 0 and s["conds"].get("Ready", {}).get("status") == "True"
              and s["conds"].get("Active", {}).get("status") == "False")
        return s if ok else None

    s = await wait_for(idle, 90, "KEDA to scale the idle Deployment to 0 (Ready, not Active)")
    assert s["status"]["hpaName"] == "keda-hpa-vllm-qwen", s["status"]
    hpa = await get(cluster, ns, "hpa", "keda-hpa-vllm-qwen")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4), hpa["spec"]
    metrics = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert metrics == ["s0-vllm_requests_waiting", "s1-vllm_kv_cache_usage", "s2-vllm_requests_waiting"]
    await wait_for(lambda: len(stack.exporters) == 1, 30, "the vLLM replica gone (only the gateway left)")

    # 2. ten requests wait at the gateway: activation 0 -> 1 by KEDA, then the HPA: ceil(10 / 4) = 3
    stack.set(waiting=10)

    async def three() -> bool:
        return (await state(cluster, ns))["replicas"] == 3

    await wait_for(three, 90, "KEDA to activate and the HPA to scale to 3")
    activated = [e for e in await events(cluster, ns) if e["reason"] == "KEDAScaleTargetActivated"]
    assert activated and "from 0 to 1" in activated[-1]["message"], activated
    sel = "labelSelector=scaledobject.keda.sh%2Fname%3Dvllm-qwen"
    rc, out = await raw(cluster, f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/"
                        f"s2-vllm_requests_waiting?{sel}")
    assert rc == 0, out
    items = json.loads(out)["items"]
    assert [(i["metricName"], i["value"]) for i in items] == [("s2-vllm_requests_waiting", "10")], items
    await wait_for(lambda: len(stack.exporters) == 4, 60, "three vLLM replicas running")

    # 3. the gateway's /metrics fails: UNAVAILABLE from toposcale; KEDA scales nothing without a fallback
    stack.gateway_mode = "error"
    stack.set()
    gateway = stack.gateway()
    assert gateway is not None
    served, log_at = gateway.served, keda.operator_log_size()

    async def trigger_error() -> dict[str, Any] | None:
        s = await state(cluster, ns)
        ready = s["conds"].get("Ready", {})
        return s if ready.get("status") == "False" else None

    s = await wait_for(trigger_error, 60, "KEDA to report the failing trigger (Ready=False)")
    assert s["conds"]["Ready"]["reason"] == "TriggerError", s["conds"]
    assert s["conds"]["Active"]["status"] == "False", s["conds"]
    failed = [e for e in await events(cluster, ns) if e["reason"] == "KEDAScalerFailed"]
    # toposcale's gRPC status and reason, as KEDA reports them to the user
    assert failed and "code = Unavailable" in failed[-1]["message"], failed
    assert f"{ns}/{GATEWAY}" in failed[-1]["message"] and "HTTP 500" in failed[-1]["message"], failed
    for _ in range(3 * COOLDOWN_S):  # more than cooldownPeriod, many polling intervals and HPA syncs
        replicas = (await state(cluster, ns))["replicas"]
        if replicas != 3:
            # KEDA v2.21.0's scalers-cache race (Keda.cache_closed_reads), not a value of toposcale's: the
            # gateway answered nothing but HTTP 500 since it failed, so toposcale had no value to serve
            assert replicas == 0 and gateway.served == served, (replicas, gateway.served, served)
            closed = keda.cache_closed_reads(log_at)
            assert closed, f"KEDA scaled 3 -> {replicas} on a failing trigger without its cache race"
            print(f"KEDA's scalers-cache race took the Deployment to 0 ({len(closed)} closed-cache reads)")
            break
        await asyncio.sleep(1)
    rc, out = await raw(cluster, f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/"
                        f"s2-vllm_requests_waiting?{sel}")
    assert rc != 0, f"KEDA's metrics server served a value for a failed source: {out}"
    assert "error when getting metric values metric:s2-vllm_requests_waiting" in out, out

    # 4. back and drained: HPA to 1, then KEDA to 0 after cooldownPeriod
    stack.gateway_mode = "ok"
    stack.set(waiting=0)
    await wait_for(idle, 90, "KEDA to scale the drained Deployment back to 0")
    deactivated = [e for e in await events(cluster, ns) if e["reason"] == "KEDAScaleTargetDeactivated"]
    assert deactivated and "to 0" in deactivated[-1]["message"], deactivated
    await wait_for(lambda: len(stack.exporters) == 1, 60, "the vLLM replicas gone")


async def test_keda_activates_from_zero_on_the_scalers_stream(deployed: Deployed, tmp_path: Path) -> None:
    """The gateway trigger as `type: external-push` (KEDA holds StreamIsActive open) with pollingInterval
    300 s: the Deployment leaves 0 within a minute of the queue rising, which only the stream can explain
    (the next poll is minutes away), and the HPA then scales on the value as before."""

    def push(so: dict[str, Any]) -> None:
        so["spec"]["pollingInterval"] = 300
        gateway = so["spec"]["triggers"][2]
        assert gateway["metadata"]["labelSelector"] == f"app={GATEWAY}"
        gateway["type"] = "external-push"

    async with keda_on_toposcale(deployed, tmp_path, PUSH_NS, PUSH_FIRST_IP, push) as (stack, _):
        cluster, ns = stack.cluster, stack.namespace

        async def at(n: int) -> dict[str, Any] | None:
            s = await state(cluster, ns)
            return s if s["replicas"] == n else None

        await wait_for(lambda: at(0), 90, "KEDA's first poll to scale the idle Deployment to 0")
        await wait_for(lambda: len(stack.exporters) == 1, 30, "the vLLM replica gone (only the gateway left)")
        stack.set(waiting=10)
        await wait_for(lambda: at(3), 60, "the pushed activation (0 -> 1) and the HPA (-> 3)")
        activated = [e for e in await events(cluster, ns) if e["reason"] == "KEDAScaleTargetActivated"]
        assert activated and "from 0 to 1" in activated[-1]["message"], activated
