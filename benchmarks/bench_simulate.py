"""Benchmark: the default comparison of `toposcale simulate`, 1,000 nodes and 20,000 pods, one process.

    .venv/bin/python benchmarks/bench_simulate.py [--fleet F] [--pods N] [--seed S] [--plot PNG]

Prints the comparison table, then one line per policy with its wall time and decisions/s, and ratios against
the `spread` policy (kube-scheduler's default) measured in the same run: speed, pods left pending, stranded
GPUs, share of multi-GPU pods as well connected as their node allows, share crossing sockets. The issue's
budget is the whole run (all four policies) in under a minute on one core; the last line states the total.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python benchmarks/bench_x.py`: the same as `python -m`
    import _script

    _script.as_module(__file__)

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--fleet", default=str(ROOT / "examples" / "fleets" / "mixed-1000.yaml"))
    ap.add_argument("--pods", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plot", help="also write the figure here")
    args = ap.parse_args()

    from toposcale.simulate.extender_api import device_choice
    from toposcale.simulate.fleet import load_fleet
    from toposcale.simulate.policies import POLICIES, make_policy
    from toposcale.simulate.replay import replay
    from toposcale.simulate.report import legend, table
    from toposcale.simulate.workload import generate

    t0 = time.perf_counter()
    fleet = load_fleet(args.fleet)
    pods = generate(args.pods, seed=args.seed, fleet_gpus=fleet.gpus)
    setup_s = time.perf_counter() - t0
    results, walls = [], []
    for name in POLICIES:
        t = time.perf_counter()
        results.append(replay(fleet, pods, make_policy(name), seed=args.seed, allocate=device_choice))
        walls.append(time.perf_counter() - t)
    total = time.perf_counter() - t0

    rel = Path(args.fleet).resolve()
    rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
    print(f"fleet {rel}: {fleet.nodes} nodes, {fleet.gpus} GPUs; {len(pods)} pods, seed {args.seed}\n")
    print(table(results, markdown=True))
    print()
    print(legend())
    print()
    base = results[POLICIES.index("spread")]
    bwall = walls[POLICIES.index("spread")]

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None:
            return "n/a"
        if b == 0:
            return "=" if a == 0 else "inf"
        return f"{a / b:.2f}x"

    print(
        "| policy | wall s | decisions/s | speed vs spread | pending vs spread | stranded vs spread "
        "| best-tier vs spread | cross-socket vs spread |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r, w in zip(results, walls, strict=True):
        print(
            f"| {r.policy} | {w:.2f} | {r.decisions_per_s or 0:,.0f} | {ratio(bwall, w)} "
            f"| {r.pending} vs {base.pending} | {ratio(r.stranded_mean, base.stranded_mean)} "
            f"| {ratio(r.best_tier_share, base.best_tier_share)} "
            f"| {ratio(r.cross_socket_share, base.cross_socket_share)} |"
        )
    print(
        f"\ntotal {total:.1f} s for {len(POLICIES)} policies (setup {setup_s:.1f} s), "
        f"budget {BUDGET_S:.0f} s on one core: {'within' if total < BUDGET_S else 'OVER'}"
    )
    if args.plot:
        from toposcale.simulate.plot import plot

        plot(results, args.plot, title=f"{rel}: {fleet.nodes} nodes, {fleet.gpus} GPUs, {len(pods)} pods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
