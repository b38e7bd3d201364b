"""`toposcale agent`: discover this node's GPU topology and allocation, publish them on the Node.

`--once --output -` prints both annotation documents and exits (no Kubernetes needed): what a person runs on a
GPU box to see what the scheduler will see.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from toposcale.core.cliargs import finite_number

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toposcale.core.logs import add_log_level_argument  # light: no logging setup

    p.add_argument("--once", action="store_true", help="discover once, print or write the documents, exit")
    p.add_argument("--output", metavar="FILE", default="-",
                   help="with --once: where to write the JSON ('-' = stdout)")
    p.add_argument("--from-topo-file", metavar="FILE",
                   help="read the topology from `nvidia-smi topo -m` text instead of NVML")
    p.add_argument("--from-capture", metavar="FILE",
                   help="replay an NVML capture (scripts/nvml_probe.py) instead of asking the driver")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="the Node to annotate (default: $NODE_NAME)")
    p.add_argument("--resource", default="nvidia.com/gpu", help="extended resource name of the GPUs")
    p.add_argument("--device-id-strategy", choices=["uuid", "index"], default="uuid",
                   help="how the NVIDIA device plugin names GPUs (its deviceIDStrategy)")
    p.add_argument("--pod-resources-socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help="kubelet pod-resources gRPC socket")
    p.add_argument("--kubelet-timeout", type=float, default=2.0, metavar="S",
                   help="deadline of each kubelet call; slower counts as allocation unknown")
    p.add_argument("--discovery-timeout", type=finite_number(unit="number of seconds"), default=30.0,
                   metavar="S",
                   help="deadline of one NVML discovery, --once included; a hung driver call is abandoned")
    p.add_argument("--port", type=int, default=9410, help="/healthz and /metrics port")
    p.add_argument("--host", default="0.0.0.0", help="address to serve /healthz and /metrics on")
    p.add_argument("--interval", type=float, default=15.0, metavar="S", help="seconds between observations")
    p.add_argument("--min-publish-interval", type=float, default=10.0, metavar="S",
                   help="at most one Node patch per this many seconds, however often the content changes")
    p.add_argument("--refresh-interval", type=float, default=300.0, metavar="S",
                   help="re-patch unchanged annotations this often, so `observed` shows the agent is alive")
    p.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster service account, else "
                   "$KUBECONFIG or ~/.kube/config)")
    add_log_level_argument(p)


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    from toposcale.core import logs

    logs.setup(args.log_level)
    log = logging.getLogger("toposcale.agent")
    if args.once:
        return asyncio.run(_once(args, log))
    if not args.node_name:
        print("toposcale agent: no node name: pass --node-name or set NODE_NAME (the downward API's "
              "spec.nodeName)", file=sys.stderr)
        return 2
    from .service import AgentService, ServiceConfig

    cfg = ServiceConfig(
        node_name=args.node_name,
        resource=args.resource,
        id_strategy=args.device_id_strategy,
        topo_file=args.from_topo_file,
        capture=args.from_capture,
        socket=args.pod_resources_socket,
        kubelet_timeout=args.kubelet_timeout,
        discovery_timeout=args.discovery_timeout,
        interval=args.interval,
        min_publish_interval=args.min_publish_interval,
        refresh_interval=args.refresh_interval,
        host=args.host,
        port=args.port,
        kubeconfig=args.kubeconfig,
    )
    return asyncio.run(AgentService(cfg).run_forever())


async def _once(args: argparse.Namespace, log: Any) -> int:
    import asyncio
    import json
    import sys

    from toposcale.core.cliargs import output_problem

    from .observe import ObserveError, documents, observe_allocation, observe_topology_within

    if args.output != "-" and (problem := output_problem(args.output, "--output")) is not None:
        print(f"toposcale agent: {problem}", file=sys.stderr)  # one line, not a JSON log line beside it
        return 2  # before discovery, which may wait on NVML for --discovery-timeout
    try:
        # The service's deadline: a hung NVML call ends the run with an error instead of hanging it.
        topo = await observe_topology_within(
            args.discovery_timeout, topo_file=args.from_topo_file, capture=args.from_capture,
            resource=args.resource, id_strategy=args.device_id_strategy,
        )
    except ObserveError as exc:
        log.error("topology discovery failed", extra={"error": str(exc)})
        return 1
    if args.from_topo_file:
        # A topology read from text is not this node's kubelet's view: nothing is known to be allocated.
        alloc = observe_allocation(topo, None)
    else:
        from .podresources.client import PodResourcesClient

        client = PodResourcesClient(args.pod_resources_socket, timeout=args.kubelet_timeout)
        try:
            from .draalloc import OnceLog, resolve

            # No apiserver here: DRA devices the kubelet names are mapped by their gpu-<minor> names.
            snap = await resolve(topo.topology, await client.snapshot(args.resource), args.node_name or "",
                                 OnceLog())
            alloc = observe_allocation(topo, snap)
        finally:
            await client.close()
    try:
        docs = documents(topo, alloc)
    except ObserveError as exc:
        log.error("refusing to print invalid documents", extra={"error": str(exc)})
        return 1
    text = json.dumps(docs, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from pathlib import Path

        try:
            await asyncio.to_thread(Path(args.output).write_text, text)
        except OSError as exc:
            log.error("cannot write output", extra={"path": args.output, "error": exc.strerror})
            return 1
    return 0
