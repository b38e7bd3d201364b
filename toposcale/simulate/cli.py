"""`toposcale simulate`: compare placement policies over one fleet and one workload.

toposcale simulate --fleet examples/fleets/mixed-100.yaml --pods 2000 --seed 1 [--json] [--plot out.png]
"""

from __future__ import annotations

import argparse

POLICY_NAMES = ("toposcale", "spread", "binpack", "random")  # policies.POLICIES, kept here for a fast --help
EXTRA_POLICY_NAMES = ("toposcale-spread",)
DEFAULT_PODS = 2000
ALLOCATORS = ("device-plugin", "dra-first-fit")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in POLICY_NAMES + EXTRA_POLICY_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(bad) or '(none)'}; "
            f"choose from {', '.join(POLICY_NAMES + EXTRA_POLICY_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a policy is named twice")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toposcale.core.logs import add_log_level_argument

    parser.epilog = "toposcale simulate autoscale --help: the trace-driven autoscaling benchmark (issue 26)"
    parser.add_argument("--fleet", required=True, help="fleet YAML: nodes: [{topology: FILE, count: N}, ...]")
    parser.add_argument(
        "--pods", type=_positive_int, help="pods to replay (default 2000 generated, or the whole trace)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for arrivals and tie-breaks (default 1)")
    parser.add_argument(
        "--trace", help="CSV trace (time,pod,gpus,duration in seconds) instead of generated pods"
    )
    parser.add_argument(
        "--mix", default="4:0.7,2:0.15,1:0.15", help="GPUS:WEIGHT,... of generated pods (default %(default)s)"
    )
    parser.add_argument(
        "--load", type=float, default=0.95, help="offered load: GPU demand / fleet GPUs (default 0.95)"
    )
    parser.add_argument(
        "--mean-duration", type=float, default=3600.0, help="mean pod lifetime in seconds (default 3600)"
    )
    parser.add_argument(
        "--policies",
        type=_policies,
        default=list(POLICY_NAMES),
        help="comma-separated, of: toposcale (the shipped profile: MostAllocated + extender), spread "
        "(kube-scheduler's default, LeastAllocated), binpack (MostAllocated), random, toposcale-spread "
        f"(LeastAllocated + extender) (default {','.join(POLICY_NAMES)})",
    )
    parser.add_argument(
        "--extender-weight",
        type=_positive_int,
        default=5,
        help="extender weight in the scheduler config (default %(default)s)",
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="device-plugin",
        help="who picks a pod's GPUs on its node: the NVIDIA device plugin (default) or kube-scheduler's DRA "
        "allocator (dra-first-fit: first free devices in slice order; the extender then scores that set)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", metavar="PNG", help="write a figure of tier shares and stranded GPUs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_log_level_argument(parser)


def main(args: argparse.Namespace) -> int:
    import json
    import logging
    import sys

    from toposcale.core import logs

    logs.setup(args.log_level)
    log = logging.getLogger("toposcale.simulate")

    def fail(msg: str) -> int:
        # One plain line, as argparse's own errors: not a JSON log line beside it saying the same.
        print(f"toposcale simulate: error: {msg}", file=sys.stderr)
        return 2

    from toposcale.core.cliargs import output_problem, plot_problem

    from .extender_api import ExtenderUnavailable
    from .fleet import FleetError, load_fleet
    from .workload import WorkloadError, generate, load_trace, parse_mix

    if args.plot and (problem := plot_problem() or output_problem(args.plot, "--plot")) is not None:
        return fail(problem)
    try:
        fleet = load_fleet(args.fleet)
        if args.trace:
            pods = load_trace(args.trace, limit=args.pods)
        else:
            pods = generate(
                args.pods or DEFAULT_PODS,
                seed=args.seed,
                fleet_gpus=fleet.gpus,
                mix=parse_mix(args.mix),
                load=args.load,
                mean_duration=args.mean_duration,
            )
    except (FleetError, WorkloadError) as exc:
        return fail(str(exc))
    too_big = sorted({p.gpus for p in pods if p.gpus > fleet.max_node_gpus})
    if too_big:
        log.warning(
            "some pods ask more GPUs than any node has; they stay pending",
            extra={"gpus": too_big, "max_node_gpus": fleet.max_node_gpus},
        )
    log.info(
        "simulating",
        extra={"nodes": fleet.nodes, "gpus": fleet.gpus, "pods": len(pods), "policies": args.policies},
    )

    from .compare import compare
    from .progress import ProgressBar
    from .report import legend, table, to_json

    try:
        results = compare(
            fleet,
            pods,
            args.policies,
            seed=args.seed,
            extender_weight=args.extender_weight,
            allocator=args.allocator,
            progress=None if args.no_progress else (lambda name: ProgressBar(name)),
        )
    except ExtenderUnavailable as exc:
        return fail(str(exc))
    if args.plot:
        from .plot import plot

        try:
            plot(
                results,
                args.plot,
                title=f"{args.fleet}: {fleet.nodes} nodes, {fleet.gpus} GPUs, {len(pods)} pods",
            )
        except OSError as exc:
            return fail(f"cannot write {args.plot}: {exc.strerror or exc}")
    if args.json:
        print(json.dumps(to_json(results)))
    else:
        source = f"trace {args.trace}" if args.trace else f"seed {args.seed}, load {args.load}"
        print(f"fleet {args.fleet}: {fleet.nodes} nodes, {fleet.gpus} GPUs; {len(pods)} pods ({source})")
        if args.allocator == "dra-first-fit":
            print(
                "allocator dra-first-fit: kube-scheduler's DRA allocator picks the GPUs (first free in slice "
                "order); spread, binpack, random: DRA alone; toposcale: the extender scoring DRA's set"
            )
        print(table(results))
        print(legend())
    return 0
