"""`toposcale extender`: the kube-scheduler extender (filter / prioritize by GPU topology)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from toposcale.core.cliargs import finite_number

# A URL path: segments of RFC 3986 pchar. The scheduler's urlPrefix is a whole URL; only its path goes here.
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?")  # fullmatch: "^...$" takes a trailing "\n"


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high} ({what})")
        return value

    return parse


_seconds = finite_number(allow_zero=True, unit="number of seconds")


def _url_prefix(text: str) -> str:
    if text == "" or (_PATH.fullmatch(text) and "//" not in text):
        return text
    hint = " (give only the path of the scheduler's urlPrefix, e.g. /toposcale)" if "://" in text else ""
    raise argparse.ArgumentTypeError(f"{text!r} is not a URL path starting with '/'{hint}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toposcale.core.logs import add_log_level_argument

    parser.add_argument(
        "--standalone", action="store_true",
        help="no Kubernetes connection: serve nodeCacheCapable: false payloads (full Node objects) only",
    )
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=_int_in(1, 65535, "a TCP port"), default=8888, help="listen port (default 8888)"
    )
    parser.add_argument(
        "--url-prefix", type=_url_prefix, default="",
        help="path prefix of every route (e.g. /toposcale), the path of the scheduler's urlPrefix",
    )
    parser.add_argument(
        "--resource", default="nvidia.com/gpu", help="extended resource the GPUs are counted in"
    )
    parser.add_argument(
        "--kubeconfig", default=None,
        help="kubeconfig path (default: in-cluster service account, else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--max-body-mb", type=_int_in(1, 4096, "MiB"), default=256,
        help="largest request body accepted, MiB (default 256)",
    )
    parser.add_argument(
        "--max-inflight", type=_int_in(1, 1024, "decisions at once"), default=4,
        help="decisions computed at once; more wait up to 2 s, then get 429 TooManyRequests with "
        "Retry-After: 1",
    )
    parser.add_argument(
        "--assume-ttl", type=_seconds, default=120.0,
        help="seconds a bound pod's GPUs count as taken before the agent's annotation shows them",
    )
    parser.add_argument(
        "--allocation-max-age", type=_seconds, default=900.0,
        help="seconds after which a node's toposcale.io/gpu-allocation (its `observed`) is stale and the "
        "node's allocation unknown: neutral score, required scopes fail now (default 900 = three of the "
        "agent's 300 s refresh intervals; 0 disables)",
    )
    parser.add_argument(
        "--request-header-timeout", type=finite_number(unit="number of seconds"), default=10.0,
        help="seconds a request may take to send its headers, from the accept for a connection's first "
        "request; then 408, connection closed (closed unanswered if nothing came) (default 10)",
    )
    parser.add_argument(
        "--max-connections", type=_int_in(1, 1_000_000, "open connections"), default=1000,
        help="open connections at most; at the cap the one quiet longest among those idle or still sending "
        "is closed for a new one, which is closed at once only when all are being answered (default 1000)",
    )
    parser.add_argument(
        "--keepalive-timeout", type=finite_number(unit="number of seconds"), default=10.0,
        help="seconds a keep-alive connection may stay idle between requests (default 10)",
    )
    add_log_level_argument(parser)


def main(args: Any) -> int:
    import asyncio

    from toposcale.core.logs import setup

    setup(args.log_level)
    return asyncio.run(_serve(args))


async def _serve(args: Any) -> int:
    import asyncio
    import logging
    import signal
    import sys

    from .server import Extender, ServerConfig
    from .state import ClusterState

    log = logging.getLogger("toposcale.extender")
    config = ServerConfig(
        host=args.host, port=args.port, url_prefix=args.url_prefix, resource=args.resource,
        max_body_bytes=args.max_body_mb * 1024 * 1024, max_inflight=args.max_inflight,
        allocation_max_age_s=args.allocation_max_age, header_timeout_s=args.request_header_timeout,
        max_connections=args.max_connections, keepalive_timeout_s=args.keepalive_timeout,
    )
    state: ClusterState | None = None
    api = None
    if not args.standalone:
        from toposcale.core.kube import api_client

        try:
            api = await api_client(args.kubeconfig)
        except Exception as exc:
            print(f"toposcale extender: no Kubernetes connection ({exc}); use --standalone to serve "
                  "full-Node payloads without one", file=sys.stderr)
            return 2
        state = ClusterState(
            args.resource, assume_ttl_s=args.assume_ttl, allocation_max_age_s=args.allocation_max_age,
            freeze_gc=True,  # see ClusterState._freeze: no ~90 ms full-collection pauses at 5,000 nodes
        )
        await state.start(api)
    extender = Extender(config, state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    try:
        # a busy port: OSError, one line from toposcale.cli after the cleanup below
        runner, _site = await extender.listen()
        log.info(
            "extender serving",
            extra={
                "port": config.port, "prefix": extender.prefix, "resource": config.resource,
                "mode": "standalone" if state is None else "watch",
            },
        )
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        if state is not None:
            await state.stop()
        if api is not None:
            await api.close()
    return 0
