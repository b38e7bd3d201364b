"""`toposcale adapter`: the external.metrics.k8s.io/v1beta1 server for the HPA (and, with
`--keda-grpc-port`, KEDA's external scaler gRPC service, adapter/keda).

Sources (pick one): `--prometheus-url URL` queries Prometheus; `--scrape-targets FILE` scrapes a static
list of
endpoints (no cluster needed); with neither, pods are found through the Kubernetes API and scraped directly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from toposcale.core.cliargs import finite_number
from toposcale.core.logs import add_log_level_argument

logger = logging.getLogger("toposcale.adapter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--prometheus-url", help="query this Prometheus (or Thanos/Mimir query endpoint)")
    src.add_argument(
        "--scrape-targets",
        metavar="FILE",
        help="scrape the endpoints listed in FILE (YAML list of {url, labels: {namespace, pod, ...}})",
    )
    src.add_argument(
        "--kubeconfig",
        help="the Kubernetes API to find pods with: in scrape mode the pods scraped, with --prometheus-url "
        "the pods expected (default: in-cluster)",
    )
    parser.add_argument(
        "--rules", metavar="FILE", help="metric rules YAML replacing the built-in default rules"
    )
    parser.add_argument("--port", type=_port, default=6443,
                        help="listen port; 0 picks a free one, logged as `adapter listening` (default 6443)")
    parser.add_argument("--bind-address", default=None,
                        help="listen address, '' or 0.0.0.0 for all interfaces (default: all interfaces; "
                             "127.0.0.1 with --insecure-allow-anonymous)")
    parser.add_argument("--cache-ttl", type=finite_number(allow_zero=True, unit="number of seconds"),
                        default=2.0, help="seconds a value is reused, 0 for none (default 2)")
    parser.add_argument("--request-timeout", type=finite_number(unit="number of seconds"), default=10.0,
                        help="seconds per metric request")
    parser.add_argument("--max-inflight", type=_positive_int, default=1024,
                        help="metric requests answered at once (at least 1)")
    parser.add_argument(
        "--served-value-namespaces",
        type=int,
        default=100,
        metavar="N",
        help="keep /metrics' toposcale_adapter_served_value series for the N most recently served "
        "namespaces (bounds the series a client can create; default 100)",
    )
    keda = parser.add_argument_group(
        "KEDA external scaler",
        "Serve KEDA's externalscaler.ExternalScaler gRPC service (a ScaledObject trigger `type: external` or "
        "`external-push` with scalerAddress: <service>:<port>) beside the HTTP API, from the same rules, "
        "source and cache. Trigger metadata: metricName (a rule), labelSelector, targetValue, "
        "activationValue (default 0; active while the value is above it); the namespace is the "
        "ScaledObject's. TLS with the --tls-cert-file/--tls-private-key-file pair (or the --cert-dir one), "
        "client certificates required when --client-ca-file is given; plaintext only with "
        "--insecure-allow-anonymous and no TLS flags. `toposcale keda-probe` prints what KEDA would read.",
    )
    keda.add_argument("--keda-grpc-port", type=int, default=None, metavar="N",
                      help="listen port of the KEDA external scaler (default: not served)")
    keda.add_argument("--keda-max-concurrent-rpcs", type=int, default=1024, metavar="N",
                      help="gRPC calls in progress at once, open StreamIsActive streams included; more get "
                           "RESOURCE_EXHAUSTED (default 1024)")
    prom = parser.add_argument_group("Prometheus source")
    prom.add_argument("--prometheus-timeout", type=float, default=5.0, help="seconds per query (default 5)")
    prom.add_argument("--prometheus-workers", type=int, default=8, help="threads querying Prometheus")
    prom.add_argument("--prometheus-max-response-bytes", type=int, default=8 * 1024 * 1024,
                      help="largest query answer read (decompressed); a larger one is a 503 "
                           "(default 8388608 = 8 MiB)")
    prom.add_argument("--prometheus-bearer-token-file", help="send 'Authorization: Bearer <file content>'")
    prom.add_argument("--prometheus-ca-file", help="CA bundle to verify Prometheus' TLS certificate")
    prom.add_argument("--prometheus-insecure-skip-verify", action="store_true", help="do not verify TLS")
    prom.add_argument(
        "--prometheus-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header, e.g. 'X-Scope-OrgID: tenant-1' (repeatable)",
    )
    scrape = parser.add_argument_group("direct scrape source")
    scrape.add_argument("--scrape-timeout", type=float, default=3.0, help="seconds per target (default 3)")
    scrape.add_argument("--scrape-max-body-bytes", type=int, default=8 * 1024 * 1024,
                        help="largest /metrics answer read from a target; a larger one fails that target "
                             "(default 8388608 = 8 MiB)")
    scrape.add_argument("--scrape-concurrency", type=int, default=64, help="scrapes in flight at once")
    scrape.add_argument("--scrape-sample-limit", type=int, default=10_000, metavar="N",
                        help="most samples of the rules' series kept from one target's scrape; more fail "
                             "that target, as Prometheus' sample_limit (default 10000: with at most 25 "
                             "histogram snapshots per target, the memory one target can hold)")
    parser.add_argument(
        "--min-answered-share", type=_share, default=0.5, metavar="S",
        help="for rules without their own min_answered_share: below this share (0..1) of the expected "
             "targets answering (pods, GPU exporters; in Prometheus mode where `up` tells), a metric is a "
             "503 naming the failed ones (default 0.5)",
    )
    victims = parser.add_argument_group(
        "scale-down victim choice (off by default)",
        "Keep controller.kubernetes.io/pod-deletion-cost on the serving pods so that a scale-down deletes "
        "the pod with the fewest requests in flight whose GPUs, freed, give most back (adapter/victims.py). "
        "Needs RBAC patch on pods in that namespace.",
    )
    victims.add_argument("--pod-deletion-cost", action="append", default=[], metavar="NAMESPACE/SELECTOR",
                         help="rank and annotate these pods, e.g. llm/app=vllm-qwen (repeatable)")
    victims.add_argument("--pod-deletion-cost-interval", type=finite_number(unit="number of seconds"),
                         default=15.0, help="seconds between rankings (default 15)")
    victims.add_argument("--pod-deletion-cost-patches-per-minute", type=finite_number(unit="number"),
                         default=30.0, help="pod patches per minute at most, bursts of 10 (default 30)")
    ext = parser.add_argument_group(
        "extender client",
        "toposcale extender's /placeable caps vllm_desired_replicas at what can be placed "
        "(adapter/placement.py); its /freeing ranks scale-down victims (--pod-deletion-cost)",
    )
    ext.add_argument("--extender-url", help="toposcale extender's base URL, e.g. http://toposcale-extender:8888")
    ext.add_argument("--extender-ca-file", help="CA bundle to verify the extender's TLS certificate")
    ext.add_argument("--extender-bearer-token-file", help="send 'Authorization: Bearer <file content>'")
    ext.add_argument("--extender-insecure-skip-verify", action="store_true", help="do not verify TLS")
    from .security import options as security_options  # light: flags only, no cryptography import

    security_options.add_arguments(parser)
    add_log_level_argument(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:  # 0 would answer every metric request 429, a server that never serves
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0..65535 (0: any free one)")
    return value


LOOPBACK = "127.0.0.1"


def listen_address(bind_address: str | None, insecure: bool) -> tuple[str | None, str | None]:
    """(host to bind, None for every interface; a warning to log or None). Without authentication nothing
    may answer the network unless asked for: --insecure-allow-anonymous binds loopback unless --bind-address
    says otherwise."""
    if bind_address is None:
        if insecure:
            return LOOPBACK, (f"--insecure-allow-anonymous: listening on {LOOPBACK} only; pass "
                              "--bind-address 0.0.0.0 to serve unauthenticated requests to the network")
        return None, None
    host = bind_address or None
    if insecure and host not in (LOOPBACK, "::1", "localhost"):
        return host, (f"--insecure-allow-anonymous with --bind-address {bind_address!r}: anyone who reaches "
                      f"{host or 'any interface'} can read every metric, unauthenticated")
    return host, None


def _share(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a share from 0 to 1")
    return value


def parse_headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--prometheus-header {v!r}: expected 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return headers


async def build_source(args: argparse.Namespace, rules: Any, metrics: Any) -> Any:
    from .sources.pods import KubePods, TargetsFile
    from .sources.prometheus import PrometheusSource
    from .sources.scrape import ScrapeSource

    if args.prometheus_url and args.scrape_targets:
        raise ValueError("use either --prometheus-url or --scrape-targets, not both")
    if args.prometheus_url:
        pods = None
        if args.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"):
            # In a cluster (or told where one is): the pods that exist now are the expected ones, not every
            # `up` series Prometheus still holds (a deleted pod's outlives it by two scrape intervals).
            from toposcale.core import kube

            pods = KubePods(await kube.api_client(args.kubeconfig), ttl=max(args.cache_ttl, 1.0))
        return PrometheusSource(
            args.prometheus_url,
            timeout=args.prometheus_timeout,
            workers=args.prometheus_workers,
            max_response_bytes=args.prometheus_max_response_bytes,
            bearer_token_file=args.prometheus_bearer_token_file,
            ca_file=args.prometheus_ca_file,
            insecure_skip_verify=args.prometheus_insecure_skip_verify,
            headers=parse_headers(args.prometheus_header),
            on_error=metrics.source_error,
            on_coverage=metrics.served.record_coverage,
            min_answered_share=args.min_answered_share,
            pods=pods,
        )
    if args.scrape_targets:
        finder: Any = TargetsFile(args.scrape_targets)  # re-read when it changes
    else:
        from toposcale.core import kube

        finder = KubePods(await kube.api_client(args.kubeconfig), ttl=max(args.cache_ttl, 1.0))
    return ScrapeSource(
        finder,
        rules,
        ttl=args.cache_ttl,
        timeout=args.scrape_timeout,
        max_body_bytes=args.scrape_max_body_bytes,
        concurrency=args.scrape_concurrency,
        sample_limit=args.scrape_sample_limit,
        on_error=metrics.source_error,
        on_coverage=metrics.served.record_coverage,
        min_answered_share=args.min_answered_share,
    )


async def _run(args: argparse.Namespace) -> int:
    from .api import VALUES_KEY
    from .metrics import AdapterMetrics
    from .rules import load_rules
    from .security.options import build_security
    from .server import build_app, serve

    rules = load_rules(args.rules)
    if args.served_value_namespaces < 1:
        raise ValueError(f"--served-value-namespaces {args.served_value_namespaces}: must be at least 1")
    metrics = AdapterMetrics(served_namespaces=args.served_value_namespaces)
    # TLS, delegated authentication/authorization (or --insecure-allow-anonymous), before anything is served
    security = await build_security(args, metrics.registry)
    host, warning = listen_address(args.bind_address, args.insecure_allow_anonymous)
    if warning:
        logger.warning(warning)
    try:
        source = await build_source(args, rules, metrics)
        app = build_app(
            rules,
            source,
            cache_ttl=args.cache_ttl,
            request_timeout=args.request_timeout,
            max_inflight=args.max_inflight,
            metrics=metrics,
            middlewares=[security.middleware],
            max_header_bytes=args.max_request_header_bytes,
        )
        logger.info(
            "adapter starting",
            extra={
                "source": source.kind,
                "metrics": [r.name for r in rules.rules],
                "rules": args.rules or "built-in",
            },
        )
        on_stop = []
        if args.extender_url and app[VALUES_KEY].desired is not None:
            from toposcale.core import kube

            from .placement import Placement

            app[VALUES_KEY].desired.placement = Placement(
                await kube.api_client(args.kubeconfig), _extender_client(args), metrics.registry
            )
        if args.pod_deletion_cost:
            on_stop.append(await _start_victims(args, rules, source))
        if args.keda_grpc_port is not None:
            on_stop.append(await _start_keda(args, host, app[VALUES_KEY], security, metrics))
        try:
            await serve(app, host=host, port=args.port,
                        ssl_context=security.ssl_context, limits=security.limits, on_cut=security.on_cut,
                        on_stop=on_stop)
        except OSError:  # the HTTPS port could not be bound: serve() never ran the hooks
            for hook in on_stop:
                await hook()
            raise
    finally:
        await security.close()
    return 0


def _extender_client(args: argparse.Namespace) -> Any:
    """The client of `toposcale extender` (/placeable, /freeing): the Prometheus client's TLS options."""
    from .victims_keeper import ExtenderClient

    return ExtenderClient(
        args.extender_url, ca_file=args.extender_ca_file, bearer_token_file=args.extender_bearer_token_file,
        insecure_skip_verify=args.extender_insecure_skip_verify,
    )


async def _start_victims(args: argparse.Namespace, rules: Any, source: Any) -> Any:
    """Start the pod-deletion-cost keeper (adapter/victims_keeper.py); returns its stop hook."""
    from toposcale.core import kube

    from . import victims_keeper as vk

    targets = [vk.Target.parse(t) for t in args.pod_deletion_cost]
    extender = _extender_client(args) if args.extender_url else None
    keeper = vk.DeletionCostKeeper(
        await kube.api_client(args.kubeconfig), source, rules.by_name(), targets, extender=extender,
        interval=args.pod_deletion_cost_interval, per_minute=args.pod_deletion_cost_patches_per_minute,
    )
    return await vk.start(keeper)


async def _start_keda(args: argparse.Namespace, host: str | None, values: Any, security: Any,
                      metrics: Any) -> Any:
    """Start the KEDA gRPC server; returns its stop coroutine function (run before the source closes)."""
    from .keda import scaler

    if args.keda_grpc_port == args.port:
        raise ValueError(f"--keda-grpc-port {args.keda_grpc_port}: already --port")
    client_ca = None
    if args.client_ca_file:
        client_ca = _read_client_ca(args.client_ca_file)
        if security.tls is None:
            logger.warning("--client-ca-file ignored on the KEDA gRPC port: it is plaintext "
                           "(--insecure-allow-anonymous without TLS flags)")
            client_ca = None
    elif security.tls is not None:
        logger.warning("KEDA gRPC port: TLS without client certificates (no --client-ca-file): any client "
                       "that reaches the port can read metric values; give KEDA a client certificate "
                       "(TriggerAuthentication tlsClientCert/tlsClientKey) and pass --client-ca-file")
    server = await scaler.start(values, host=host, port=args.keda_grpc_port,
                                tls=security.tls, client_ca=client_ca, registry=metrics.registry,
                                max_concurrent_rpcs=args.keda_max_concurrent_rpcs)
    return server.stop


def _read_client_ca(path: str) -> bytes:
    """--client-ca-file for the gRPC port, checked as the HTTPS listener checks it (a PEM CA bundle)."""
    from pathlib import Path

    from .security.clientcert import CABundle

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--client-ca-file: cannot read {path}: {exc.strerror}") from None
    return CABundle.from_pem(data, f"--client-ca-file {path}").pem


def main(args: argparse.Namespace) -> int:
    from kubernetes_asyncio.config import ConfigException

    from toposcale.core import logs

    from .rules import RulesError

    logs.setup(args.log_level)
    try:
        return asyncio.run(_run(args))
    except (RulesError, ValueError, ConfigException, RuntimeError) as exc:
        print(f"toposcale adapter: {exc}", file=sys.stderr)  # one line, not a JSON log line beside it
        return 2
    except OSError as exc:
        print(f"toposcale adapter: {exc}", file=sys.stderr)  # one line, not a JSON log line beside it
        return 1
