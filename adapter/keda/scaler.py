"""KEDA's `externalscaler.ExternalScaler` gRPC service, served beside the HTTP API by `toposcale adapter
--keda-grpc-port N`.

Every value comes from `values.MetricValues.compute`, what the external.metrics HTTP handler calls: the same
rules, source, TTL cache with request coalescing, in-flight bound and deadline, so a KEDA ScaledObject and an
HPA asking for the same metric and selector share one source query. Only the wire differs:

    scalerMetadata  metricName       a rule name (case-insensitive, as the HTTP API)
                    labelSelector    Kubernetes selector syntax; empty or absent: every pod in the namespace
                    targetValue      GetMetricSpec's targetSizeFloat (required there; > 0)
                    activationValue  IsActive is value > activationValue (default 0)
    ScaledObjectRef.namespace        the namespace (KEDA sends the ScaledObject's)

Errors are gRPC statuses mapped from the HTTP answers' codes: 503 (source failed, timed out, stale, NaN) is
UNAVAILABLE with the reason, never a value of 0; 400 and bad metadata are INVALID_ARGUMENT naming the key;
404 (unknown metric, namespace without pods/targets) NOT_FOUND; 429 RESOURCE_EXHAUSTED.

A selector matching no pod is not an error on the HTTP API (`items: []`); here it is "inactive" for
IsActive (nothing is waiting anywhere: that is what lets a ScaledObject rest at zero replicas, where no vLLM
pod exists) and an empty `metricValues` list for GetMetrics (KEDA then gives the HPA no value, which keeps
its replicas, exactly what `items: []` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..errors import AdapterError, BadRequest, NotFound, SourceUnavailable
from ..quantity import served_value
from ..selectors import SelectorError, parse_selector
from ..values import MetricValues
from . import externalscaler_pb2 as pb
from . import externalscaler_pb2_grpc as pb_grpc

logger = logging.getLogger("toposcale.adapter.keda")

SERVICE = "externalscaler.ExternalScaler"
STREAM_INTERVAL = 0.5  # seconds between StreamIsActive evaluations
# A ScaledObjectRef is a name, a namespace and the trigger's metadata (KEDA sends all of it, scalerAddress
# included): a few hundred bytes. 64 KiB, as the HTTP API's request bodies, bounds what one call may make the
# adapter parse; answers are a handful of numbers.
MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_CONCURRENT_RPCS = 1024
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# errors that may pass within a StreamIsActive (see `StreamIsActive`); the others end the stream
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class InvalidMetadata(BadRequest):
    """A scalerMetadata key (or the namespace) is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """A ScaledObjectRef's parsed metadata."""

    namespace: str
    metric: str
    selector: str | None
    target: float | None
    activation: float


# A decimal number as Go's strconv.ParseFloat reads one (what a Go scaler would accept): ASCII digits only,
# no digit separators, no surrounding blanks (Python's float() also takes "1_000", " 4 " and "٤").
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# The largest target KEDA can carry: it builds the HPA's target as a milli-quantity, int64(value * 1000).
MAX_TARGET = (2**63 - 1) / 1000


def _number(meta: Mapping[str, str], key: str, *, positive: bool) -> float | None:
    text = meta.get(key)
    if text is None or not text.strip():
        return None
    if not _DECIMAL.fullmatch(text):
        raise InvalidMetadata(f"scalerMetadata.{key}: {text[:80]!r} is not a number (e.g. 4 or 0.5)")
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_TARGET:
        raise InvalidMetadata(f"scalerMetadata.{key}: {text[:80]!r} is out of range (at most "
                              f"{MAX_TARGET:.0f}: KEDA carries it as an int64 milli-value)")
    if positive and value <= 0:
        raise InvalidMetadata(f"scalerMetadata.{key}: must be greater than 0, not {text[:80]!r}")
    return value


def parse_trigger(ref: pb.ScaledObjectRef, *, need_target: bool = False) -> Trigger:
    """Raises InvalidMetadata naming the key. Unknown keys are ignored: KEDA passes the whole trigger
    metadata (scalerAddress, enableTLS, ...)."""
    meta = ref.scalerMetadata
    metric = meta.get("metricName", "").strip()
    if not metric:
        raise InvalidMetadata("scalerMetadata.metricName is required (a toposcale rule, e.g. "
                              "vllm_requests_waiting)")
    selector = meta.get("labelSelector")
    try:
        parse_selector(selector)  # here for the key's name in the message; compute() parses it again
    except SelectorError as exc:
        raise InvalidMetadata(f"scalerMetadata.labelSelector: {exc}") from None
    target = _number(meta, "targetValue", positive=True)
    activation = _number(meta, "activationValue", positive=False)
    if need_target and target is None:  # after the checks of what is there: a bad value is named first
        raise InvalidMetadata("scalerMetadata.targetValue is required (the value per replica, e.g. 4)")
    if not ref.namespace:
        raise InvalidMetadata("scaledObjectRef.namespace is required")
    return Trigger(ref.namespace, metric, selector, target, 0.0 if activation is None else activation)


class KedaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("toposcale_adapter_keda_requests_total",
                                "KEDA external scaler calls by method and gRPC status code",
                                ["method", "code"], registry=registry)
        self.streams = Gauge("toposcale_adapter_keda_streams", "StreamIsActive streams open",
                             registry=registry)


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    """The servicer over the value service the HTTP APIs ask (`values.MetricValues`)."""

    def __init__(self, values: MetricValues, metrics: KedaMetrics, *,
                 stream_interval: float = STREAM_INTERVAL, stopping: asyncio.Event | None = None) -> None:
        self.values = values
        self.metrics = metrics
        self.stream_interval = stream_interval
        # set at shutdown: open streams end with OK, which KEDA reads as io.EOF and reconnects after 2 s
        # with its backoff reset (an aborted stream would grow KEDA's retry delay instead)
        self.stopping = stopping or asyncio.Event()

    async def value(self, trigger: Trigger) -> tuple[str, float | None, float]:
        """(rule name, value, timestamp): the items' sum (one item per answer today; the HPA would add them
        up too) and their newest sample's time; value None when the selector matched nothing. NaN or
        infinite is a failed source, as on the HTTP API."""
        rule, values = await self.values.compute(trigger.namespace, trigger.metric, trigger.selector)
        if not values:
            return rule.name, None, 0.0
        total = math.fsum(v.value for v in values)
        if not math.isfinite(total):
            raise SourceUnavailable(f"{rule.name}: the source gave {total!r}, which is no value")
        return rule.name, total, max(v.timestamp for v in values)

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
        if isinstance(exc, AdapterError):
            code = _CODES.get(exc.code, grpc.StatusCode.INTERNAL)
            message = str(exc)
            level = logging.WARNING if code in _TRANSIENT else logging.INFO
            logger.log(level, "keda call failed", extra={"method": method, "code": code.name,
                                                          "error": message[:500]})
        else:
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
            logger.error("keda call failed unexpectedly", exc_info=exc, extra={"method": method})
        self.metrics.requests.labels(method, code.name).inc()
        await context.abort(code, message)

    async def decode(self, raw: bytes, request_type: Any, method: str, context: grpc.aio.ServicerContext
                     ) -> Any:
        try:
            return request_type.FromString(raw)
        except DecodeError as exc:
            await self._abort(context, method, InvalidMetadata(
                f"malformed {request_type.DESCRIPTOR.name} (protobuf): {str(exc)[:200]}"))
            raise  # not reached: abort raises

    def _ok(self, method: str) -> None:
        self.metrics.requests.labels(method, grpc.StatusCode.OK.name).inc()

    async def IsActive(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
                       ) -> pb.IsActiveResponse:
        try:
            trigger = parse_trigger(request)
            _, value, _ = await self.value(trigger)
        except Exception as exc:
            await self._abort(context, "IsActive", exc)
            raise  # not reached: abort raises
        self._ok("IsActive")
        return pb.IsActiveResponse(result=value is not None and value > trigger.activation)

    async def StreamIsActive(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[pb.IsActiveResponse]:
        """The activity now, then again whenever it changes (evaluated every `stream_interval` through the
        cache, so a change shows within interval + --cache-ttl + one scrape).

        A failure before the first answer ends the stream with its status. Later, UNAVAILABLE and
        RESOURCE_EXHAUSTED do not end it: nothing is sent (the activity last pushed stands, which keeps the
        replicas), the failure is logged, evaluation goes on and the next change is pushed as soon as the
        source answers. Ending the stream would instead put KEDA into its reconnect backoff, which doubles up
        to a minute and is only reset by a cleanly closed stream; IsActive and GetMetrics, which KEDA also
        polls, still report the failure. Bad metadata or an unknown metric ends the stream at any time."""
        method = "StreamIsActive"
        try:
            trigger = parse_trigger(request)
        except Exception as exc:
            await self._abort(context, method, exc)
            raise
        last: bool | None = None
        failing = False
        self.metrics.streams.inc()
        try:
            while not self.stopping.is_set():
                try:
                    _, value, _ = await self.value(trigger)
                except Exception as exc:
                    code = _CODES.get(getattr(exc, "code", 500), grpc.StatusCode.INTERNAL)
                    if last is None or code not in _TRANSIENT:
                        await self._abort(context, method, exc)
                    if not failing:
                        failing = True
                        logger.warning("keda stream: source failing, keeping the last activity pushed",
                                       extra={"namespace": trigger.namespace, "metric": trigger.metric,
                                              "active": last, "error": str(exc)[:500]})
                else:
                    if failing:
                        failing = False
                        logger.info("keda stream: source answering again",
                                    extra={"namespace": trigger.namespace, "metric": trigger.metric})
                    active = value is not None and value > trigger.activation
                    if active != last:
                        last = active
                        yield pb.IsActiveResponse(result=active)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.stream_interval)
        finally:
            self.metrics.streams.dec()
        self._ok(method)

    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
                            ) -> pb.GetMetricSpecResponse:
        """Asks no source (KEDA calls it when it builds the HPA; a source outage must not drop the HPA's
        metric): checks the metadata and that the rule exists."""
        try:
            trigger = parse_trigger(request, need_target=True)
            rule = self.values.rule(trigger.metric)
            if rule is None:
                raise NotFound(f'metric "{trigger.metric[:100]}" not found (this adapter serves: '
                               f"{', '.join(sorted(self.values.rules))})")
        except Exception as exc:
            await self._abort(context, "GetMetricSpec", exc)
            raise
        assert trigger.target is not None
        self._ok("GetMetricSpec")
        return pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(
            metricName=rule.name, targetSizeFloat=trigger.target,
            # KEDA releases before the float fields read only this one; KEDA takes it when the float is 0.
            # Rounded, never 0 (a zero target has no meaning for the HPA).
            targetSize=max(1, round(trigger.target)))])

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetMetricsResponse:
        try:
            trigger = parse_trigger(request.scaledObjectRef)
            name, value, timestamp = await self.value(trigger)
        except Exception as exc:
            await self._abort(context, "GetMetrics", exc)
            raise
        self._ok("GetMetrics")
        if value is None:
            return pb.GetMetricsResponse()
        # What the HPA computes with: KEDA turns the float into a milli-Quantity, int64(value*1000), as the
        # HTTP API does, so the served-value gauge records the same number for both wires.
        self.values.metrics.served.record(name, trigger.namespace, float(served_value(value)), timestamp)
        # KEDA reads metricValue only when metricValueFloat is not > 0 (then both are 0 here) and older KEDA
        # releases only that field: rounded to the nearest integer.
        return pb.GetMetricsResponse(metricValues=[pb.MetricValue(
            metricName=request.metricName or name, metricValueFloat=value,
            metricValue=_int64(round(value)))])

    async def StreamMetricSpec(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[pb.GetMetricSpecResponse]:
        # Targets come from the ScaledObject's own metadata, so there is never a change to push: KEDA reads
        # Unimplemented as "poll GetMetricSpec" and stops asking.
        self.metrics.requests.labels("StreamMetricSpec", grpc.StatusCode.UNIMPLEMENTED.name).inc()
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "StreamMetricSpec: targets come from the trigger metadata; use GetMetricSpec")
        yield pb.GetMetricSpecResponse()  # pragma: no cover (makes this a stream handler)


def _int64(value: int) -> int:
    return max(-(2**63), min(2**63 - 1, value))


class _CertReload:
    """Serving pair for gRPC from the HTTP listener's `ServingTLS`, following its reloads: gRPC asks
    `fetch()` at each new TLS handshake; it hands out the files again only once ServingTLS has checked and
    applied them (same digest), so a half-written pair is never served here either."""

    def __init__(self, tls: Any, client_ca: bytes | None) -> None:
        self.tls = tls
        self.client_ca = client_ca
        self.digest: bytes | None = None

    def config(self) -> Any:
        cert, key = Path(self.tls.cert_file).read_bytes(), Path(self.tls.key_file).read_bytes()
        digest = hashlib.sha256(cert + b"\0" + key).digest()
        if digest != self.tls.loaded.digest:
            return None  # the files moved on since ServingTLS checked them: wait for its next check
        self.digest = digest
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=self.client_ca)

    def fetch(self) -> Any:
        if self.tls.loaded is None or self.tls.loaded.digest == self.digest:
            return None  # unchanged: gRPC keeps the current configuration
        try:
            return self.config()
        except OSError as exc:
            logger.warning("keda scaler: serving certificate unreadable, keeping the current one",
                           extra={"error": str(exc)})
            return None


def server_credentials(tls: Any, client_ca: bytes | None) -> grpc.ServerCredentials:
    """TLS with the HTTPS listener's certificate (reloaded with it); with `client_ca`, a client certificate
    signed by it is required (KEDA's tlsClientCert/tlsClientKey)."""
    reload = _CertReload(tls, client_ca)
    initial = reload.config()
    if initial is None:  # ServingTLS has just been built from these files: only a concurrent write gets here
        raise ValueError(f"serving certificate {tls.cert_file} changed while starting; try again")
    return grpc.dynamic_ssl_server_credentials(initial, reload.fetch,
                                               require_client_authentication=client_ca is not None)


def listen_address(host: str | None, port: int) -> str:
    if not host:
        return f"[::]:{port}"  # every interface, IPv4 and IPv6 (as --bind-address' default)
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class KedaServer:
    server: grpc.aio.Server
    port: int
    scaler: ExternalScaler

    async def stop(self, grace: float = 5.0) -> None:
        self.scaler.stopping.set()  # streams end cleanly first (see ExternalScaler.stopping)
        await self.server.stop(grace)


def _register(scaler: ExternalScaler, server: grpc.aio.Server) -> None:
    """The generated add_ExternalScalerServicer_to_server, except that requests arrive as bytes and are
    decoded here: gRPC's own decoding answers malformed protobuf with UNKNOWN, where it is the caller's
    error, INVALID_ARGUMENT."""

    def unary(method: str, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        handler = getattr(scaler, method)

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await handler(await scaler.decode(raw, request_type, method, context), context)

        return grpc.unary_unary_rpc_method_handler(call, response_serializer=response_type.SerializeToString)

    def stream(method: str, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        handler = getattr(scaler, method)

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request = await scaler.decode(raw, request_type, method, context)
            async for item in handler(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(call, response_serializer=response_type.SerializeToString)

    handlers = {
        "IsActive": unary("IsActive", pb.ScaledObjectRef, pb.IsActiveResponse),
        "StreamIsActive": stream("StreamIsActive", pb.ScaledObjectRef, pb.IsActiveResponse),
        "GetMetricSpec": unary("GetMetricSpec", pb.ScaledObjectRef, pb.GetMetricSpecResponse),
        "GetMetrics": unary("GetMetrics", pb.GetMetricsRequest, pb.GetMetricsResponse),
    }
    service = "externalscaler.ExternalScaler"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


async def start(values: MetricValues, *, host: str | None, port: int, tls: Any = None,
                client_ca: bytes | None = None, registry: CollectorRegistry,
                max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
                stream_interval: float = STREAM_INTERVAL) -> KedaServer:
    """Start the gRPC server on the running loop. `tls` None: plaintext (only --insecure-allow-anonymous
    without TLS flags gets here). Raises OSError when the port cannot be bound."""
    if max_concurrent_rpcs < 1:
        raise ValueError(f"--keda-max-concurrent-rpcs {max_concurrent_rpcs}: must be at least 1")
    server = grpc.aio.server(
        # beyond it gRPC answers RESOURCE_EXHAUSTED at once; open streams count, one per external-push trigger
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", 16 * 1024),
            # a KEDA that went away without closing its connection: found within ~80 s, its streams end
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.so_reuseport", 0),  # a second adapter on the same port is an error, not a shared port
        ],
    )
    scaler = ExternalScaler(values, KedaMetrics(registry), stream_interval=stream_interval)
    _register(scaler, server)
    address = listen_address(host, port)
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials(tls, client_ca))
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"--keda-grpc-port: cannot listen on {address}: {exc}") from None
    if not bound:
        raise OSError(f"--keda-grpc-port: cannot listen on {address}")
    await server.start()
    logger.info("keda external scaler listening", extra={
        "address": host or "all interfaces", "port": bound, "tls": tls is not None,
        "client_certificates": "required" if (tls is not None and client_ca) else "not checked"})
    return KedaServer(server, bound, scaler)
