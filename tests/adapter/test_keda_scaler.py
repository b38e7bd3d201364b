"""KEDA external scaler (adapter/keda): a client from the stubs generated from KEDA's own proto, against the
real adapter reading in-test vLLM exporters through a --scrape-targets file.

In-process tests run the adapter's HTTP app and its gRPC server on the test's loop (the objects
`toposcale adapter` builds); the subprocess tests run `toposcale adapter --keda-grpc-port` and
`toposcale keda-probe` themselves, with TLS from lab/pki.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry
from toposcale.adapter.api import VALUES_KEY
from toposcale.adapter.keda import externalscaler_pb2 as pb
from toposcale.adapter.keda import externalscaler_pb2_grpc as pb_grpc
from toposcale.adapter.keda import scaler
from toposcale.adapter.security.tls import ServingTLS
from toposcale.adapter.sources.pods import TargetsFile
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter
from lab.pki import TestPKI
from lab.procs import Child, port_open
from toposcale.core.ports import free_port

from .conftest import LOCAL, TOPOSCALE

NS = "llm"
SERVICE_NAME = "toposcale-adapter.toposcale.svc"
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def write_targets(path: Path, exporters: list[tuple[VllmExporter, str, dict[str, str]]]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump([
        {"url": e.url, "labels": {"namespace": NS, "pod": pod, **labels}} for e, pod, labels in exporters]))
    os.replace(tmp, path)  # atomically, as TargetsFile asks
    return path


def ref(metric: str = "vllm_requests_waiting", selector: str | None = "app=vllm", namespace: str = NS,
        **meta: str) -> pb.ScaledObjectRef:
    md = {"metricName": metric, "scalerAddress": "toposcale-adapter.toposcale.svc:6000", **meta}
    if selector is not None:
        md["labelSelector"] = selector
    return pb.ScaledObjectRef(name="vllm-qwen", namespace=namespace, scalerMetadata=md)


class Adapter:
    """The adapter's HTTP app and KEDA gRPC server, in process."""

    def __init__(self, http_url: str, keda: scaler.KedaServer, values: Any) -> None:
        self.http_url = http_url
        self.keda = keda
        self.values = values
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{keda.port}")
        self.stub = pb_grpc.ExternalScalerStub(self.channel)

    async def http_value(self, metric: str, selector: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(
                f"{self.http_url}{BASE}/namespaces/{NS}/{metric}", params={"labelSelector": selector}) as r:
            return r.status, await r.json()


@pytest.fixture
async def vllm() -> AsyncIterator[tuple[VllmExporter, VllmExporter]]:
    a = VllmExporter(generation="v1", engines=2, waiting=[2, 1], running=[1, 1], kv_cache=[0.5, 0.25])
    b = VllmExporter(generation="v0", waiting=2, running=3, kv_cache=0.25)
    for e in (a, b):
        await e.start()
    yield a, b
    for e in (a, b):
        await e.stop()


@pytest.fixture
async def start_adapter(tmp_path: Path, rules, serve_adapter, vllm) -> AsyncIterator[Callable[..., Any]]:
    servers: list[scaler.KedaServer] = []
    a, b = vllm
    targets = write_targets(tmp_path / "targets.yaml",
                            [(a, "vllm-0", {"app": "vllm"}), (b, "vllm-1", {"app": "vllm", "tier": "old"})])

    async def start(*, cache_ttl: float = 0.2, **kwargs: Any) -> Adapter:
        source = ScrapeSource(TargetsFile(targets), rules, ttl=cache_ttl, timeout=1.0)
        running = await serve_adapter(rules, source, cache_ttl=cache_ttl, request_timeout=3.0)
        values = running.app[VALUES_KEY]
        keda = await scaler.start(values, host="127.0.0.1", port=0, registry=values.metrics.registry,
                                  **kwargs)
        servers.append(keda)
        return Adapter(running.url, keda, values)

    yield start
    for s in servers:
        await s.stop(0)


@pytest.fixture
async def adapter(start_adapter) -> Adapter:
    return await start_adapter()


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# --- every RPC -----------------------------------------------------------------------------------------


async def test_get_metrics_is_the_http_api_value(adapter: Adapter) -> None:
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(),
                                                             metricName="vllm_requests_waiting"))
    assert len(got.metricValues) == 1
    v = got.metricValues[0]
    assert (v.metricName, v.metricValueFloat, v.metricValue) == ("vllm_requests_waiting", 5.0, 5)
    code, body = await adapter.http_value("vllm_requests_waiting", "app=vllm")
    assert (code, body["items"][0]["value"]) == (200, "5")  # 2 + 1 (two engines) + 2
    # a fraction: KEDA reads metricValueFloat (> 0); the deprecated int is the nearest integer
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("vllm_kv_cache_usage")))
    v = got.metricValues[0]
    assert v.metricValueFloat == pytest.approx((0.375 + 0.25) / 2)  # mean per pod, then over pods
    assert v.metricValue == 0
    assert v.metricName == "vllm_kv_cache_usage"  # request.metricName empty: the rule's name


async def test_grpc_and_http_share_one_cache(adapter: Adapter, vllm) -> None:
    a, _ = vllm
    before = a.scrapes
    await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))
    await adapter.http_value("vllm_requests_waiting", "app=vllm")
    await adapter.stub.IsActive(ref())
    assert a.scrapes == before + 1  # one scrape for the three answers: one code path below the wires
    hits = adapter.values.metrics.cache.labels("hit")._value.get()
    assert hits >= 2


async def test_is_active_compares_with_activation_value(adapter: Adapter, vllm) -> None:
    assert (await adapter.stub.IsActive(ref())).result is True  # 5 > 0 (default)
    assert (await adapter.stub.IsActive(ref(activationValue="5"))).result is False  # not above
    assert (await adapter.stub.IsActive(ref(activationValue="4.5"))).result is True
    a, b = vllm
    a.waiting, b.waiting = 0, 0
    await asyncio.sleep(0.3)  # past the cache TTL
    assert (await adapter.stub.IsActive(ref())).result is False  # an empty queue is inactive


async def test_selector_matching_nothing_is_inactive_and_no_value(adapter: Adapter) -> None:
    assert (await adapter.stub.IsActive(ref(selector="app=nothing"))).result is False
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(selector="app=nothing")))
    assert list(got.metricValues) == []  # as the HTTP API's items: [] (the HPA keeps its replicas)
    # every pod of the namespace without a selector, and the full selector syntax
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(selector=None)))
    assert got.metricValues[0].metricValueFloat == 5.0
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(selector="app,!tier")))
    assert got.metricValues[0].metricValueFloat == 3.0


async def test_get_metric_spec(adapter: Adapter) -> None:
    spec = await adapter.stub.GetMetricSpec(ref("VLLM_Requests_Waiting", targetValue="4"))
    assert len(spec.metricSpecs) == 1
    s = spec.metricSpecs[0]
    assert (s.metricName, s.targetSizeFloat, s.targetSize) == ("vllm_requests_waiting", 4.0, 4)
    s = (await adapter.stub.GetMetricSpec(ref("vllm_kv_cache_usage", targetValue="0.75"))).metricSpecs[0]
    assert (s.targetSizeFloat, s.targetSize) == (0.75, 1)  # the deprecated int is never 0


async def test_get_metric_spec_asks_no_source(adapter: Adapter, vllm) -> None:
    a, b = vllm
    a.mode = b.mode = "error"
    before = a.scrapes
    spec = await adapter.stub.GetMetricSpec(ref(targetValue="4"))
    assert spec.metricSpecs[0].targetSizeFloat == 4.0  # an outage does not take the HPA's metric away
    assert a.scrapes == before


async def test_stream_metric_spec_is_unimplemented(adapter: Adapter) -> None:
    err = await rpc_error(anext(adapter.stub.StreamMetricSpec(ref(targetValue="4")).__aiter__()))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED  # KEDA then polls GetMetricSpec


async def test_served_value_gauge_records_what_keda_was_told(adapter: Adapter) -> None:
    await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("vllm_kv_cache_usage")))
    async with aiohttp.ClientSession() as s, s.get(adapter.http_url + "/metrics") as r:
        text = await r.text()
    assert 'toposcale_adapter_served_value{metric="vllm_kv_cache_usage",namespace="llm"} 0.312' in text
    assert 'toposcale_adapter_keda_requests_total{code="OK",method="GetMetrics"} 1.0' in text


# --- errors --------------------------------------------------------------------------------------------


async def test_failed_source_is_unavailable_never_zero(adapter: Adapter, vllm) -> None:
    a, b = vllm
    a.mode = b.mode = "error"
    await asyncio.sleep(0.3)
    for call in (adapter.stub.IsActive(ref()),
                 adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "all 2 targets failed" in err.details() and "HTTP 500" in err.details()
    err = await rpc_error(anext(adapter.stub.StreamIsActive(ref()).__aiter__()))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # no first answer: the stream ends with the reason
    # one pod down out of two is not a failure (as on the HTTP API): b's 2, extrapolated to both pods
    b.mode = "ok"
    await asyncio.sleep(0.3)
    got = await adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))
    assert got.metricValues[0].metricValueFloat == 4.0


async def test_hung_source_is_unavailable_within_the_request_timeout(adapter: Adapter, vllm) -> None:
    a, b = vllm
    a.mode = b.mode = "hang"
    await asyncio.sleep(0.3)
    start = time.monotonic()
    err = await rpc_error(adapter.stub.IsActive(ref(), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("meta", "key"), [
    ({"metricName": ""}, "scalerMetadata.metricName"),
    ({"labelSelector": "app in (vllm"}, "scalerMetadata.labelSelector"),
    ({"labelSelector": "Bad Key=x"}, "scalerMetadata.labelSelector"),
    ({"activationValue": "many"}, "scalerMetadata.activationValue"),
    ({"activationValue": "nan"}, "scalerMetadata.activationValue"),
    ({"targetValue": "-1"}, "scalerMetadata.targetValue"),
    ({"targetValue": "inf"}, "scalerMetadata.targetValue"),
    # issue 28: beyond what KEDA can carry (int64 milli-value): was UNKNOWN, a ValueError
    ({"targetValue": "1e19"}, "scalerMetadata.targetValue"),
    ({"targetValue": "9223372036854775808"}, "scalerMetadata.targetValue"),
    ({"targetValue": "1e300"}, "scalerMetadata.targetValue"),
    # not a number to Go's strconv.ParseFloat, though Python's float() takes them
    ({"targetValue": "1_000"}, "scalerMetadata.targetValue"),
    ({"targetValue": "\u0664"}, "scalerMetadata.targetValue"),  # ARABIC-INDIC DIGIT FOUR
    ({"activationValue": " 1 "}, "scalerMetadata.activationValue"),
])
async def test_bad_metadata_is_invalid_argument_naming_the_key(adapter: Adapter, meta: dict[str, str],
                                                               key: str) -> None:
    r = ref()
    r.scalerMetadata.update(meta)
    for call in (adapter.stub.IsActive(r), adapter.stub.GetMetricSpec(r),
                 adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r))):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith(key), err.details()


async def test_missing_target_and_namespace_are_invalid_argument(adapter: Adapter) -> None:
    err = await rpc_error(adapter.stub.GetMetricSpec(ref()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scalerMetadata.targetValue is required" in err.details()
    assert (await adapter.stub.IsActive(ref())).result is True  # IsActive needs no target
    err = await rpc_error(adapter.stub.IsActive(ref(namespace="")))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "scaledObjectRef.namespace is required")
    err = await rpc_error(adapter.stub.IsActive(ref(namespace="Not_A_Namespace")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid namespace" in err.details()


async def test_unknown_metric_and_namespace_are_not_found(adapter: Adapter) -> None:
    for call in (adapter.stub.IsActive(ref("vllm_queue_depth")),
                 adapter.stub.GetMetricSpec(ref("vllm_queue_depth", targetValue="4")),
                 adapter.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("vllm_queue_depth")))):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert '"vllm_queue_depth" not found' in err.details() and "vllm_requests_waiting" in err.details()
    err = await rpc_error(adapter.stub.IsActive(ref(namespace="elsewhere")))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # no targets there, as the HTTP API's 404


# --- StreamIsActive -------------------------------------------------------------------------------------


async def test_stream_first_answer_at_once_then_changes_within_a_second(adapter: Adapter, vllm) -> None:
    a, _ = vllm
    stream = adapter.stub.StreamIsActive(ref(activationValue="10"))
    it = stream.__aiter__()
    start = time.monotonic()
    first = await asyncio.wait_for(anext(it), 2)
    assert first.result is False and time.monotonic() - start < 0.5  # 5 waiting, not above 10
    a.waiting = [10, 3]  # 15 in all: active
    changed = time.monotonic()
    msg = await asyncio.wait_for(anext(it), 3)
    pushed = time.monotonic() - changed
    assert msg.result is True
    assert pushed < 1.0, f"pushed {pushed:.2f}s after the change"
    a.waiting = [1, 0]
    changed = time.monotonic()
    msg = await asyncio.wait_for(anext(it), 3)
    assert msg.result is False and time.monotonic() - changed < 1.0
    # no change, no message
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(anext(it)), 1.2)
    stream.cancel()


async def test_stream_survives_a_source_outage_and_pushes_after_it(adapter: Adapter, vllm) -> None:
    a, b = vllm
    stream = adapter.stub.StreamIsActive(ref())
    it = stream.__aiter__()
    assert (await asyncio.wait_for(anext(it), 2)).result is True
    a.mode = b.mode = "error"
    pending = asyncio.ensure_future(anext(it))
    await asyncio.sleep(1.5)  # several failing evaluations: nothing sent, the stream stays open
    assert not pending.done()
    a.waiting, b.waiting = 0, 0
    a.mode = b.mode = "ok"
    assert (await asyncio.wait_for(pending, 3)).result is False
    stream.cancel()


async def test_stream_ends_cleanly_at_shutdown(start_adapter) -> None:
    adapter = await start_adapter()
    stream = adapter.stub.StreamIsActive(ref())
    it = stream.__aiter__()
    assert (await asyncio.wait_for(anext(it), 2)).result is True
    await adapter.keda.stop(5)
    with pytest.raises(StopAsyncIteration):  # status OK: KEDA's io.EOF, reconnect with backoff reset
        await asyncio.wait_for(anext(it), 5)
    assert await stream.code() == grpc.StatusCode.OK


# --- bounds ---------------------------------------------------------------------------------------------


async def test_concurrent_rpcs_are_bounded(start_adapter) -> None:
    adapter = await start_adapter(max_concurrent_rpcs=1)
    stream = adapter.stub.StreamIsActive(ref())
    assert (await asyncio.wait_for(anext(stream.__aiter__()), 2)).result is True  # holds the one slot
    err = await rpc_error(adapter.stub.IsActive(ref()))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stream.cancel()
    for _ in range(50):  # the slot comes back once the stream is gone
        try:
            assert (await adapter.stub.IsActive(ref())).result is True
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the slot never came back")


async def test_malformed_protobuf_is_invalid_argument(adapter: Adapter) -> None:
    # issue 28: was UNKNOWN (gRPC's own decoding); the bytes are the caller's error
    for method in ("IsActive", "GetMetricSpec", "GetMetrics"):
        call = adapter.channel.unary_unary(f"/externalscaler.ExternalScaler/{method}")
        err = await rpc_error(call(b"\x0a\xff\xff\xff\xff\x0f"))  # a length running past the end
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err)
        assert err.details().startswith("malformed "), err.details()
    stream = adapter.channel.unary_stream("/externalscaler.ExternalScaler/StreamIsActive")
    err = await rpc_error(anext(stream(b"\x0a\xff").__aiter__()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await adapter.stub.IsActive(ref())).result is True  # the server goes on


async def test_oversized_request_is_refused(adapter: Adapter) -> None:
    err = await rpc_error(adapter.stub.IsActive(ref(padding="x" * (scaler.MAX_MESSAGE_BYTES + 1))))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await adapter.stub.IsActive(ref())).result is True  # the server goes on


# --- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    p = TestPKI(tmp_path / "pki")
    ca = p.ca("toposcale-ca")
    keda_ca = p.ca("keda-clients")
    return {"ca": ca, "keda_ca": keda_ca,
            # only the Service name, as in a cluster: clients dialing 127.0.0.1 must name it
            "server": p.server(ca, "toposcale-adapter", hosts=[SERVICE_NAME]),
            "keda": p.client(keda_ca, "keda-operator"),
            "expired": p.client(keda_ca, "keda-old", expired=True),
            "stranger": p.client(ca, "stranger"), "pki": p}


def creds(pki: dict[str, Any], client: str | None = None) -> grpc.ChannelCredentials:
    cert = pki[client] if client else None
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].cert_pem,
        private_key=cert.key_path.read_bytes() if cert else None,
        certificate_chain=cert.cert_path.read_bytes() if cert else None)


async def is_active(address: str, credentials: grpc.ChannelCredentials | None,
                    server_name: str | None = SERVICE_NAME) -> bool:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.aio.secure_channel(address, credentials, options=options) if credentials is not None
               else grpc.aio.insecure_channel(address))
    async with channel:
        return (await pb_grpc.ExternalScalerStub(channel).IsActive(ref(), timeout=5)).result


async def test_tls_with_client_certificates_and_rotation(start_adapter, pki: dict[str, Any]) -> None:
    server = pki["server"]
    tls = ServingTLS(server.cert_path, server.key_path)
    adapter = await start_adapter(tls=tls, client_ca=pki["keda_ca"].cert_pem)
    address = f"127.0.0.1:{adapter.keda.port}"
    assert await is_active(address, creds(pki, "keda")) is True  # KEDA's caCert + tlsClientCert/Key
    # no cert, a cert from another CA, an expired one, plaintext
    for bad in (creds(pki), creds(pki, "stranger"), creds(pki, "expired"), None):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await is_active(address, bad)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError):  # the server's name is checked
        await is_active(address, creds(pki, "keda"), server_name="other.toposcale.svc")
    # the serving pair rotates (cert-manager): new connections get the new certificate, nothing restarts
    new_ca = pki["pki"].ca("toposcale-ca-2")
    fresh = pki["pki"].server(new_ca, "toposcale-adapter", hosts=[SERVICE_NAME], file_name="rotated")
    server.cert_path.write_bytes(fresh.cert_path.read_bytes())
    server.key_path.write_bytes(fresh.key_path.read_bytes())
    assert tls.check() is True
    new_creds = grpc.ssl_channel_credentials(
        root_certificates=new_ca.cert_pem, private_key=pki["keda"].key_path.read_bytes(),
        certificate_chain=pki["keda"].cert_path.read_bytes())
    assert await is_active(address, new_creds) is True
    with pytest.raises(grpc.aio.AioRpcError):
        await is_active(address, creds(pki, "keda"))  # the old CA no longer verifies the server


async def wait_port(proc: Child, port: int, deadline: float = 15) -> None:
    await proc.until(lambda: asyncio.to_thread(port_open, port), deadline, f"listening on {port}")


async def run(*args: str, deadline: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(str(TOPOSCALE), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), deadline)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_adapter_serves_tls_and_keda_probe_prints_what_keda_reads(
        tmp_path: Path, vllm, pki: dict[str, Any]) -> None:
    a, b = vllm
    targets = write_targets(tmp_path / "targets.yaml", [(a, "vllm-0", {"app": "vllm"}),
                                                        (b, "vllm-1", {"app": "vllm"})])
    port, grpc_port = free_port(), free_port()
    server = pki["server"]
    proc = Child([
        str(TOPOSCALE), "adapter", "--scrape-targets", str(targets), "--port", str(port),
        "--keda-grpc-port", str(grpc_port), "--cache-ttl", "0.2", *LOCAL,
        "--tls-cert-file", str(server.cert_path), "--tls-private-key-file", str(server.key_path),
        "--client-ca-file", str(pki["keda_ca"].cert_path),
    ], tmp_path / "adapter.log").start()
    try:
        await wait_port(proc, grpc_port)
        tls_args = ["--ca-file", str(pki["ca"].cert_path), "--cert-file", str(pki["keda"].cert_path),
                    "--key-file", str(pki["keda"].key_path), "--server-name", SERVICE_NAME]
        probe = ["keda-probe", "--address", f"127.0.0.1:{grpc_port}", "--metric", "vllm_requests_waiting",
                 "--selector", "app=vllm", "--namespace", NS]
        code, out, err = await run(*probe, *tls_args, "--target-value", "4")
        assert code == 0, err
        lines = dict(line.split(":", 1) for line in out.splitlines())
        assert lines["value"].split()[0] == "5"
        assert lines["active"].split()[0] == "true"
        assert lines["target"].split()[0] == "4"
        code, out, err = await run(*probe, *tls_args, "--activation-value", "5")
        assert code == 0 and "active:     false" in out, (out, err)
        # errors: one line, exit code 1
        code, out, err = await run(*probe[:-4], "--metric", "nope", "--namespace", NS, *tls_args)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and err.startswith("toposcale keda-probe: NOT_FOUND: ")
        code, out, err = await run(*probe, *tls_args[:2], *tls_args[-2:])  # no client cert
        assert code == 1 and err.startswith("toposcale keda-probe: UNAVAILABLE: ") and err.count("\n") == 1
        code, out, err = await run(*probe, *tls_args[:-2])  # 127.0.0.1 is not in the certificate
        assert code == 1 and err.startswith("toposcale keda-probe: UNAVAILABLE: ")
        code, out, err = await run(*probe, "--insecure")  # plaintext to a TLS port
        assert code == 1 and err.startswith("toposcale keda-probe: UNAVAILABLE: ")
        a.mode = b.mode = "error"
        await asyncio.sleep(0.3)
        code, out, err = await run(*probe, *tls_args)
        assert code == 1 and "UNAVAILABLE" in err and "HTTP 500" in err and err.count("\n") == 1
        # the HTTPS listener serves the same pair
        ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
        async with aiohttp.ClientSession() as s, s.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx,
                                                       server_hostname=SERVICE_NAME) as r:
            assert r.status == 200
    finally:
        await proc.astop(grace=15)
    log = proc.text().encode()
    assert proc.returncode == 0, log
    entries = [json.loads(line) for line in log.decode().splitlines() if line.startswith("{")]
    listening = [e for e in entries if e["msg"] == "keda external scaler listening"]
    assert listening and listening[0]["tls"] is True and listening[0]["client_certificates"] == "required"


async def test_cli_plaintext_only_with_insecure_allow_anonymous(tmp_path: Path, vllm) -> None:
    a, _ = vllm
    targets = write_targets(tmp_path / "targets.yaml", [(a, "vllm-0", {"app": "vllm"})])
    port, grpc_port = free_port(), free_port()
    proc = Child([
        str(TOPOSCALE), "adapter", "--scrape-targets", str(targets), "--port", str(port),
        "--keda-grpc-port", str(grpc_port), *LOCAL,
    ], tmp_path / "adapter.log").start()
    try:
        await wait_port(proc, grpc_port)
        assert await is_active(f"127.0.0.1:{grpc_port}", None) is True
        # --watch follows StreamIsActive: the first activity at once, then each change
        watch = await asyncio.create_subprocess_exec(
            str(TOPOSCALE), "keda-probe", "--address", f"127.0.0.1:{grpc_port}", "--metric",
            "vllm_requests_waiting", "--selector", "app=vllm", "--namespace", NS, "--insecure", "--watch",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert watch.stdout is not None
            seen: list[str] = []
            while not any("StreamIsActive" in line for line in seen):
                seen.append((await asyncio.wait_for(watch.stdout.readline(), 15)).decode())
            assert "active: true" in seen[-1]
            a.waiting = 0
            line = (await asyncio.wait_for(watch.stdout.readline(), 10)).decode()
            assert "active: false" in line and "StreamIsActive" in line
        finally:
            watch.terminate()
            await watch.wait()
    finally:
        await proc.astop(grace=15)
    log = proc.text().encode()
    assert proc.returncode == 0, log


async def test_cli_without_insecure_the_grpc_port_is_tls(tmp_path: Path, vllm) -> None:
    """No TLS flags and no --insecure-allow-anonymous: the self-signed --cert-dir pair serves both ports."""
    a, _ = vllm
    targets = write_targets(tmp_path / "targets.yaml", [(a, "vllm-0", {"app": "vllm"})])
    port, grpc_port = free_port(), free_port()
    cert_dir = tmp_path / "certs"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing-kubeconfig"), "HOME": str(tmp_path)}
    proc = Child([
        str(TOPOSCALE), "adapter", "--scrape-targets", str(targets), "--port", str(port),
        "--keda-grpc-port", str(grpc_port), "--cert-dir", str(cert_dir),
    ], tmp_path / "adapter.log", env=env).start()
    try:
        await wait_port(proc, grpc_port)
        with pytest.raises(grpc.aio.AioRpcError):
            await is_active(f"127.0.0.1:{grpc_port}", None)  # plaintext refused
        # the generated pair's file holds leaf then CA: the CA verifies the server
        ca = grpc.ssl_channel_credentials(root_certificates=(cert_dir / "apiserver.crt").read_bytes())
        assert await is_active(f"127.0.0.1:{grpc_port}", ca, server_name=None) is True
    finally:
        await proc.astop(grace=15)
    log = proc.text().encode()
    assert proc.returncode == 0, log
    assert b"TLS without client certificates" in log  # the operator is told what that means


def test_adapter_help_documents_the_grpc_option() -> None:
    import subprocess

    out = subprocess.run([str(TOPOSCALE), "adapter", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--keda-grpc-port N" in out and "--keda-max-concurrent-rpcs" in out
    assert "keda-probe" in out


async def test_a_taken_port_fails_the_start(adapter: Adapter) -> None:
    """gRPC sets SO_REUSEPORT by default, which would let a second adapter share the port silently."""
    with pytest.raises(OSError, match=r"--keda-grpc-port: cannot listen on 127\.0\.0\.1:"):
        await scaler.start(adapter.values, host="127.0.0.1", port=adapter.keda.port,
                           registry=CollectorRegistry())


async def test_keda_probe_with_tls_against_a_plaintext_scaler_says_use_insecure() -> None:
    # It used to print gRPC C-core's raw handshake log line, then the status, and no hint.
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        probe = ["keda-probe", "--address", f"127.0.0.1:{port}", "--metric", "m", "--namespace", NS,
                 "--timeout", "5"]
        code, out, err = await run(*probe)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("toposcale keda-probe: UNAVAILABLE: "), err
        assert err.rstrip().endswith("use --insecure)")
        code, _, err = await run(*probe, "--insecure")  # plaintext reaches it: no handshake, no hint
        assert code == 1 and "--insecure" not in err and "UNIMPLEMENTED" in err
    finally:
        await server.stop(None)
