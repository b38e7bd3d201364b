"""`toposcale keda-probe`: ask a KEDA external scaler what KEDA would read, without grpcurl.

    toposcale keda-probe --address 127.0.0.1:6000 --metric vllm_requests_waiting --selector app=vllm \\
        --namespace llm --insecure

sends the ScaledObjectRef a `type: external` trigger with that metadata would send, calls GetMetrics and
IsActive (and GetMetricSpec with --target-value) through the generated stubs, and prints the value and the
activity. `--watch` then follows StreamIsActive (what `external-push` reads) and prints each change. Any
failure is exit code 1 and one line naming the gRPC status and the server's reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HELP = "print the value and activity KEDA would read from a toposcale external scaler"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, metavar="HOST:PORT",
                        help="the scaler (toposcale adapter --keda-grpc-port), as a trigger's scalerAddress")
    parser.add_argument("--metric", required=True, help="scalerMetadata.metricName (a toposcale rule)")
    parser.add_argument("--namespace", required=True, help="the ScaledObject's namespace")
    parser.add_argument("--selector", default="", help="scalerMetadata.labelSelector, e.g. app=vllm")
    parser.add_argument("--activation-value", default=None, metavar="V",
                        help="scalerMetadata.activationValue (the scaler's default: 0)")
    parser.add_argument("--target-value", default=None, metavar="V",
                        help="scalerMetadata.targetValue: also call GetMetricSpec and print the target")
    parser.add_argument("--name", default="keda-probe", help="ScaledObjectRef.name (default keda-probe)")
    tls = parser.add_argument_group("connection")
    tls.add_argument("--insecure", action="store_true",
                     help="plaintext gRPC (the adapter with --insecure-allow-anonymous and no TLS flags)")
    tls.add_argument("--ca-file", help="CA bundle to verify the adapter's certificate (KEDA's caCert); "
                                       "default: the system roots")
    tls.add_argument("--cert-file", help="client certificate (KEDA's tlsClientCert), for --client-ca-file")
    tls.add_argument("--key-file", help="its private key (KEDA's tlsClientKey)")
    tls.add_argument("--server-name", help="name to verify in the adapter's certificate, when --address "
                                           "is an IP or another name (e.g. toposcale-adapter.toposcale.svc)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    parser.add_argument("--watch", action="store_true",
                        help="then follow StreamIsActive and print each activity change (Ctrl-C ends it)")


def _metadata(args: argparse.Namespace) -> dict[str, str]:
    meta = {"metricName": args.metric, "scalerAddress": args.address}
    if args.selector:
        meta["labelSelector"] = args.selector
    if args.activation_value is not None:
        meta["activationValue"] = args.activation_value
    if args.target_value is not None:
        meta["targetValue"] = args.target_value
    return meta


def channel(args: argparse.Namespace) -> Any:
    import grpc

    if args.insecure:
        if args.ca_file or args.cert_file or args.key_file:
            raise ValueError("--insecure is plaintext: it cannot go with --ca-file/--cert-file/--key-file")
        return grpc.insecure_channel(args.address)
    if bool(args.cert_file) != bool(args.key_file):
        raise ValueError("--cert-file and --key-file go together")

    def read(path: str | None, flag: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{flag}: cannot read {path}: {exc.strerror}") from None

    creds = grpc.ssl_channel_credentials(root_certificates=read(args.ca_file, "--ca-file"),
                                         private_key=read(args.key_file, "--key-file"),
                                         certificate_chain=read(args.cert_file, "--cert-file"))
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, creds, options=options)


def _num(value: float) -> str:
    return f"{value:g}"


def probe(args: argparse.Namespace, out: Any = sys.stdout) -> None:
    from . import externalscaler_pb2 as pb
    from . import externalscaler_pb2_grpc as pb_grpc

    ref = pb.ScaledObjectRef(name=args.name, namespace=args.namespace, scalerMetadata=_metadata(args))
    with channel(args) as ch:
        stub = pb_grpc.ExternalScalerStub(ch)
        lines = [f"metric:     {args.metric}", f"namespace:  {args.namespace}",
                 f"selector:   {args.selector or '(every pod in the namespace)'}"]
        if args.target_value is not None:
            spec = stub.GetMetricSpec(ref, timeout=args.timeout)
            for s in spec.metricSpecs:
                lines.append(f"target:     {_num(s.targetSizeFloat)}  (GetMetricSpec {s.metricName})")
        got = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=args.metric),
                              timeout=args.timeout)
        if got.metricValues:
            for v in got.metricValues:
                lines.append(f"value:      {_num(v.metricValueFloat)}  (GetMetrics {v.metricName})")
        else:
            lines.append("value:      none  (no pod matched: KEDA gives the HPA no value, replicas stay)")
        active = stub.IsActive(ref, timeout=args.timeout).result
        threshold = args.activation_value if args.activation_value is not None else "0"
        lines.append(f"active:     {str(active).lower()}  (IsActive: value > activationValue {threshold})")
        print("\n".join(lines), file=out, flush=True)
        if args.watch:
            # no deadline: the stream stays open until the server ends it or Ctrl-C
            for msg in stub.StreamIsActive(ref):
                stamp = time.strftime("%H:%M:%S")
                print(f"{stamp}  active: {str(msg.result).lower()}  (StreamIsActive)", file=out, flush=True)


def tls_hint(details: str, insecure: bool) -> str:
    """What to do about a failed TLS handshake, or "". A plaintext server answers the ClientHello with bytes
    that are no TLS record: BoringSSL's WRONG_VERSION_NUMBER."""
    if not insecure and "WRONG_VERSION_NUMBER" in details:
        return " (the server answered in plaintext: for an adapter without TLS flags, use --insecure)"
    return ""


def main(args: argparse.Namespace) -> int:
    import os

    # gRPC's C core logs a failed handshake itself, as a raw line before ours; its reason is in the status.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc

    try:
        probe(args)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = " ".join(str(exc.details() if hasattr(exc, "details") else exc).split())
        name = code.name if code is not None else "ERROR"
        print(f"toposcale keda-probe: {name}: {details}{tls_hint(details, args.insecure)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"toposcale keda-probe: {exc}", file=sys.stderr)
        return 1
    return 0
