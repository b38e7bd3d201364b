"""`toposcale simulate autoscale`: replay LLM serving traces through a simulated vLLM Deployment under each
autoscaling policy and report SLO attainment against GPU-hours.

toposcale simulate autoscale [--trace FILE|NAME ...] [--profile h100-tp1] [--policies a,b] [--seeds 5]
    [--fleet FILE [--node-provision 300] [--node-kind NAME]] [--json] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, NoReturn

from .fleet import VARIANTS as FLEET_VARIANTS
from .policies import DEFAULT, NAMES
from .traces import SHIPPED

PROG = "toposcale simulate autoscale"
POLICY_NAMES = (*NAMES, *FLEET_VARIANTS)  # the variants run only with --fleet (toposcale.autoscale.fleet)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line a person can act on, exit 2 (usage), as the other subcommands' own checks.
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(bad) or '(none)'}; choose from {', '.join(POLICY_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a policy is named twice")
    return [n for n in POLICY_NAMES if n in names]


def _number(low: float, *, above: bool, integer: bool = False) -> Any:
    def parse(text: str) -> float | int:
        try:
            v: float | int = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if integer else ' number'}"
            ) from None
        if not math.isfinite(v) or v < low or (above and v == low):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'above' if above else 'at least'} {low:g}")
        return v

    return parse


def _rate_scale(text: str) -> float | None:
    if text == "auto":
        return None
    return float(_number(0.0, above=True)(text))


def build_parser() -> argparse.ArgumentParser:
    from toposcale.cli import HelpFormatter

    p = _Parser(
        prog=PROG,
        description=__doc__.splitlines()[0].strip(),
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--trace",
        action="append",
        metavar="FILE|NAME",
        help=f"a trace file (CSV TIMESTAMP,ContextTokens,GeneratedTokens or JSON Lines timestamp, "
        f"input_length, output_length; format detected) or a shipped one: {', '.join(SHIPPED)}; "
        "repeat for several (default: the three shipped)",
    )
    p.add_argument(
        "--profile",
        default="h100-tp1",
        help="serving profile: h100-tp1, rtx4090d-tp4, or a profile .yaml file",
    )
    p.add_argument(
        "--policies",
        type=_policies,
        default=None,
        help=f"comma-separated, from {', '.join(POLICY_NAMES)} (default: all but nowcast, a grid of nine "
        "runs; the last two with --fleet)",
    )
    p.add_argument(
        "--seeds",
        type=_number(1, above=False, integer=True),
        default=5,
        help="seeded replays per trace, reported as their mean (seeds 1..N)",
    )
    p.add_argument(
        "--rate-scale",
        type=_rate_scale,
        default=None,
        metavar="X|auto",
        help="request rate multiplier, by replaying X copies of the trace shifted by up to 2 "
        "minutes (the hour keeps its length); auto (default): the busiest minute needs "
        "about 6 replicas of the profile",
    )
    p.add_argument(
        "--cold-start",
        type=_number(0, above=False),
        default=90.0,
        metavar="S",
        help="seconds from a replica's start (GPUs held) to Ready",
    )
    p.add_argument(
        "--ttft-slo",
        type=_number(0, above=True),
        default=2.0,
        metavar="S",
        help="time-to-first-token target, seconds",
    )
    p.add_argument(
        "--tpot-slo",
        type=_number(0, above=True),
        default=0.1,
        metavar="S",
        help="mean time-per-output-token target, seconds",
    )
    p.add_argument(
        "--max-replicas",
        type=_number(1, above=False, integer=True),
        default=12,
        help="HPA maxReplicas, and the replicas the nodes have room for",
    )
    p.add_argument(
        "--grace",
        type=_number(0, above=False),
        default=30.0,
        metavar="S",
        help="terminationGracePeriodSeconds of a draining replica",
    )
    p.add_argument(
        "--router",
        choices=("least", "round-robin"),
        default="least",
        help="least outstanding requests (a least-request Service or inference gateway), or round-robin",
    )
    p.add_argument(
        "--jobs",
        type=_number(1, above=False, integer=True),
        default=None,
        help="worker processes (default: the CPU count)",
    )
    p.add_argument(
        "--fleet",
        metavar="FILE",
        help="finite nodes from a fleet file (examples/fleets, real topologies) instead of room for "
        "--max-replicas: replicas are placed as the extender and device plugin would, a node autoscaler "
        "adds nodes, toposcale is capped at what can be placed and picks its scale-down victims; adds "
        "nodes added and best-tier share to the report, and the variants "
        f"{', '.join(FLEET_VARIANTS)} to the default policies",
    )
    p.add_argument(
        "--node-provision",
        type=_number(0, above=False),
        default=300.0,
        metavar="S",
        help="with --fleet: seconds from a node autoscaler ordering a node to its arrival",
    )
    p.add_argument(
        "--node-kind", metavar="NAME", help="with --fleet: the node type added (default: the fleet's first)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", metavar="PNG", help="timeline figure per policy (first seed; the plot extra)")
    return p


def add_arguments(parser: argparse.ArgumentParser) -> None:  # pragma: no cover - dispatched by toposcale.cli
    raise NotImplementedError


def _job(args: tuple[Any, ...]) -> Any:
    from .bench import run_seed

    base, profile, cfg, policies, seed, scale, keep = args
    return base.name, run_seed(base, profile, cfg, policies, seed, scale, keep)


def main(argv: list[str]) -> int:
    from toposcale.core.cliargs import output_problem, plot_problem
    from toposcale.serving.profile import ProfileError, load_profile

    from .bench import BenchConfig
    from .traces import TraceError, load_trace

    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2

    if args.plot is not None:
        problem = output_problem(args.plot, "--plot") or plot_problem()
        if problem:
            return fail(problem)
    try:
        profile = load_profile(args.profile)
        traces = [load_trace(t) for t in (args.trace or list(SHIPPED))]
    except (ProfileError, TraceError) as exc:
        return fail(str(exc))
    fleet = None
    variants = [n for n in args.policies or () if n in FLEET_VARIANTS]
    if args.fleet is None and variants:
        return fail(f"{', '.join(variants)} run only with --fleet")
    if args.fleet is not None:
        from toposcale.simulate.fleet import FleetError, load_fleet

        from .fleet import FleetSpec

        try:
            fleet = FleetSpec.from_fleet(load_fleet(args.fleet), args.node_provision, args.node_kind)
        except (FleetError, ValueError) as exc:
            return fail(str(exc))
    if args.policies is None:  # default: all but the nowcast (with --fleet, the variants too)
        args.policies = [*DEFAULT, *(FLEET_VARIANTS if fleet is not None else ())]
    cfg = BenchConfig(
        fleet=fleet,
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        cold_start_s=args.cold_start,
        grace_s=args.grace,
        max_replicas=args.max_replicas,
        router=args.router,
    )
    seeds = list(range(1, args.seeds + 1))
    reports, timelines = run_reports(
        traces, profile, cfg, args.policies, seeds, args.rate_scale, args.jobs, bool(args.plot)
    )
    if args.json:
        doc: Any = reports[0] if len(reports) == 1 else reports
        print(json.dumps(doc, indent=1, default=_jsonable))
    else:
        for rep in reports:
            print(table(rep))
    if args.plot:
        from .plot import plot_timelines

        plot_timelines(timelines, cfg.ttft_slo_s, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def run_reports(
    traces: list[Any],
    profile: Any,
    cfg: Any,
    policies: list[str],
    seeds: list[int],
    rate_scale: float | None,
    jobs_wanted: int | None,
    keep_timelines: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (trace, seed) as a job over worker processes; the reports in trace order, and the first seed's
    timelines per trace when asked. Progress on stderr."""
    from .bench import default_scale, report

    workers = max(1, min(jobs_wanted or os.cpu_count() or 1, len(traces) * len(seeds)))
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers)
    # Each trace's auto rate scale is a clairvoyant search of its own: in the pool too, not one by one.
    scale_args = [(t, profile, cfg, rate_scale) for t in traces]
    found = (
        pool.starmap(default_scale, scale_args)
        if pool is not None
        else [default_scale(*a) for a in scale_args]
    )
    scales = {t.name: sc for t, sc in zip(traces, found, strict=True)}
    jobs = [
        (t, profile, cfg, policies, s, scales[t.name], keep_timelines and s == seeds[0])
        for t in traces
        for s in seeds
    ]
    started = time.monotonic()
    print(
        f"{PROG}: {len(traces)} trace(s) x {len(seeds)} seed(s) x {len(policies)} policies on "
        f"{workers} process(es), profile {profile.name} ({profile.status})",
        file=sys.stderr,
        flush=True,
    )
    results: dict[str, list[Any]] = {t.name: [] for t in traces}
    done = map(_job, jobs) if pool is None else pool.imap_unordered(_job, jobs)
    for i, (name, res) in enumerate(done, 1):
        results[name].append(res)
        print(
            f"  [{i}/{len(jobs)}] {name} seed {res.seed} done ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    reports = []
    for t in traces:
        rs = sorted(results[t.name], key=lambda r: r.seed)
        reports.append(report(t, profile, cfg, scales[t.name], rs))
    first = {t.name: next(r for r in results[t.name] if r.seed == seeds[0]).timelines for t in traces}
    print(f"{PROG}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return reports, first


def _jsonable(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


COLUMNS = (
    ("policy", "", "{}"),
    ("SLO att.", "slo_attainment", "{:.2%}"),
    ("TTFT p50", "ttft_p50_s", "{:.2f}"),
    ("p90", "ttft_p90_s", "{:.2f}"),
    ("p99", "ttft_p99_s", "{:.1f}"),
    ("TPOT p90", "tpot_p90_s", "{:.3f}"),
    ("GPU-h", "gpu_hours", "{:.2f}"),
    ("vs clairv.", "gpu_hours_vs_clairvoyant", "{:.2f}x"),
    ("ups", "scale_ups", "{:.0f}"),
    ("downs", "scale_downs", "{:.0f}"),
    ("peak Pending", "peak_pending", "{:.0f}"),
    ("aborted", "aborted", "{:.0f}"),
)


FLEET_COLUMNS = (
    ("Pending repl-min", "pending_replica_minutes", "{:.1f}"),
    ("nodes added", "nodes_added", "{:.1f}"),
    ("best tier", "best_tier_share", "{:.1%}"),
)


def table(rep: dict[str, Any]) -> str:
    """A Markdown table of one trace's report."""
    head = (
        f"trace {rep['trace']}, profile {rep['profile']} ({rep['profile_status']}), "
        f"rate x{rep['rate_scale']:g}, {len(rep['seeds'])} seed(s), SLO TTFT <= {rep['slo']['ttft_s']:g} s "
        f"and TPOT <= {rep['slo']['tpot_s']:g} s; attainable at all: {rep['slo_ceiling']:.2%} "
        f"(target {rep['attainment_target']:.2%})"
    )
    columns = COLUMNS
    if any("nodes_added" in s for s in rep["policies"].values()):  # --fleet: placement columns
        columns = (*COLUMNS, *FLEET_COLUMNS)
    rows = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for name, s in rep["policies"].items():
        cells = [name]
        for _title, key, fmt in columns[1:]:
            v = s.get(key, math.nan)
            cells.append("n/a" if not math.isfinite(v) else fmt.format(v))
        rows.append("| " + " | ".join(cells) + " |")
    tail = ""
    if "nowcast" in rep:  # the yardstick's chosen setting (toposcale/autoscale/nowcast.py)
        from .bench import GOAL_RATIO

        nc = rep["nowcast"]
        tail = (
            f"\nnowcast (knows each minute's need when it starts, not later): {nc['setting']}; the goal "
            f"(target at <= {GOAL_RATIO}x clairvoyant GPU-hours) is "
            f"reachable by {len(nc['meeting_goal']) or 'none'} of its {len(nc['grid'])} settings\n"
        )
    return head + "\n\n" + "\n".join(rows) + "\n" + tail
