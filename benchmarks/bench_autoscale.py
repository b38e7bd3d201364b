"""Benchmark: every autoscaling policy over the three shipped traces, the issue 26 table, in one command.

    .venv/bin/python benchmarks/bench_autoscale.py [--profile h100-tp1] [--seeds 5] [--jobs N] [--json FILE]
                                                   [--nowcast] [--plot PNG]

For each profile (default: h100-tp1 and rtx4090d-tp4): the per-trace tables of `toposcale simulate
autoscale` (mean over the seeds), then the goal check per trace: toposcale's attainment against the target
(99 % of the requests that can meet the SLO at all), its GPU-hours against the clairvoyant's (goal <= 1.15x),
and every baseline at least as good on both (attainment >= and GPU-hours <=). The last line states the wall
time against the budget (all policies x 3 traces x 5 seeds in 10 minutes per profile on 2 cores).
`--nowcast` adds the nowcast yardstick (toposcale/autoscale/nowcast.py: a grid of nine runs per seed, about
twice the time; the budget is for the eight policies without it) and says per trace whether a reactive
policy with perfect measurement can meet the goal at all.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python benchmarks/bench_x.py`: the same as `python -m`
    import _script

    _script.as_module(__file__)

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 600.0


def goal_lines(rep: dict) -> list[str]:
    from toposcale.autoscale.bench import GOAL_RATIO

    pol = rep["policies"]
    t = pol.get("toposcale")
    if t is None:
        return []
    target = rep["attainment_target"]
    met = t["slo_attainment"] >= target - 1e-9 and t["gpu_hours_vs_clairvoyant"] <= GOAL_RATIO
    better = [
        n
        for n, s in pol.items()
        if n not in ("toposcale", "clairvoyant", "nowcast")  # yardsticks, not baselines
        and s["slo_attainment"] >= t["slo_attainment"]
        and s["gpu_hours"] <= t["gpu_hours"]
    ]
    return [
        f"goal {rep['trace']} / {rep['profile']}: toposcale {t['slo_attainment']:.2%} "
        f"(target {target:.2%}) at "
        f"{t['gpu_hours_vs_clairvoyant']:.2f}x clairvoyant GPU-hours (goal <= {GOAL_RATIO}x): "
        f"{'MET' if met else 'NOT MET'}; baselines at least as good on both: {', '.join(better) or 'none'}"
        + (
            f"; a reactive policy with perfect measurement (nowcast) "
            f"{'can' if rep['nowcast']['goal_reachable'] else 'cannot'} meet it"
            if "nowcast" in rep
            else ""
        )
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--profile", action="append", help="repeat for several (default: both shipped)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: the CPU count)")
    ap.add_argument("--json", metavar="FILE", help="also write all reports here")
    ap.add_argument("--nowcast", action="store_true", help="add the nowcast yardstick (twice the time)")
    ap.add_argument(
        "--plot", metavar="PNG", help="draw each trace's policies against the goal (the plot extra)"
    )
    args = ap.parse_args()

    from toposcale.autoscale.bench import BenchConfig
    from toposcale.autoscale.cli import run_reports, table
    from toposcale.autoscale.policies import DEFAULT, NAMES
    from toposcale.autoscale.traces import SHIPPED, load_trace
    from toposcale.serving.profile import load_profile

    traces = [load_trace(n) for n in SHIPPED]
    all_reports = []
    total = time.monotonic()
    for name in args.profile or ["h100-tp1", "rtx4090d-tp4"]:
        profile = load_profile(name)
        started = time.monotonic()
        names = list(NAMES if args.nowcast else DEFAULT)
        reports, _ = run_reports(
            traces, profile, BenchConfig(), names, list(range(1, args.seeds + 1)), None, args.jobs
        )
        took = time.monotonic() - started
        for rep in reports:
            print(table(rep))
        for rep in reports:
            print("\n".join(goal_lines(rep)))
        print(
            f"\n{profile.name}: {len(names)} policies x {len(traces)} traces x {args.seeds} seeds "
            f"in {took:.0f} s "
            f"(budget {BUDGET_S:.0f} s) on {platform.machine()}, {platform.python_implementation()} "
            f"{platform.python_version()}\n"
        )
        all_reports += reports
    if args.json:
        Path(args.json).write_text(json.dumps(all_reports, indent=1))
    if args.plot:
        from toposcale.autoscale.bench import GOAL_RATIO
        from toposcale.autoscale.plot import plot_frontier

        plot_frontier(all_reports, GOAL_RATIO, args.plot)
        print(f"plot: {args.plot}")
    print(f"total {time.monotonic() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
