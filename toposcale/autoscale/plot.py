"""`--plot`: a panel per trace and policy: replicas wanted and ready, the queue, TTFT p90 against the SLO."""

from __future__ import annotations

import math
from pathlib import Path

from .cluster import TimelinePoint


def plot_timelines(
    timelines: dict[str, dict[str, list[TimelinePoint]]], ttft_slo_s: float, path: str | Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(timelines)
    policies = list(next(iter(timelines.values())))
    fig, axes = plt.subplots(
        len(policies),
        len(traces),
        figsize=(max(8.0, 5.5 * len(traces)), 1.9 * len(policies) + 0.6),
        squeeze=False,
        sharex="col",
    )
    for j, tr in enumerate(traces):
        for i, pol in enumerate(policies):
            ax = axes[i][j]
            pts = timelines[tr][pol]
            t = [p.t / 60 for p in pts]
            ax.step(t, [p.spec for p in pts], where="post", color="tab:blue", lw=1, ls="--", label="wanted")
            ax.step(t, [p.ready for p in pts], where="post", color="tab:blue", lw=1.4, label="ready")
            ax.set_ylabel(pol, fontsize=8)
            q = ax.twinx()
            q.fill_between(t, [p.waiting for p in pts], step="post", color="tab:gray", alpha=0.25, lw=0)
            q.set_yticks([])
            lat = ax.twinx()
            lat.plot(
                t,
                [p.ttft_p90_s if p.ttft_p90_s is not None else float("nan") for p in pts],
                color="tab:red",
                lw=0.9,
                label="TTFT p90",
            )
            lat.axhline(ttft_slo_s, color="tab:red", ls=":", lw=0.8)
            lat.set_yscale("log")
            lat.tick_params(labelsize=7, colors="tab:red")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(tr, fontsize=9)
            if i == len(policies) - 1:
                ax.set_xlabel("minutes", fontsize=8)
    fig.suptitle(
        "replicas wanted (dashed) and ready (blue), queue (grey),\n"
        "TTFT p90 (red, log scale) against the SLO (dotted)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_frontier(reports: list[dict], goal_ratio: float, path: str | Path) -> None:
    """A panel per (trace, profile): each policy as a point (GPU-hours against the clairvoyant's, SLO
    attainment), the nowcast grid's settings as grey points, and the goal (the target at <= goal_ratio) as
    the shaded box a policy must land in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(reports))
    rows = -(-len(reports) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for k, rep in enumerate(reports):
        ax = axes[k // cols][k % cols]
        target = rep["attainment_target"]
        pts = [
            (s["gpu_hours_vs_clairvoyant"], s["slo_attainment"], n)
            for n, s in rep["policies"].items()
            if math.isfinite(s["gpu_hours_vs_clairvoyant"])
        ]
        grid = rep.get("nowcast", {}).get("grid", {})
        # zoomed on the goal: a point far below it is drawn on the bottom edge (a down triangle, its value
        # in the label)
        lo = max(0.0, target - 0.12)
        hi_x = max([goal_ratio + 0.3, *(x for x, _, _ in pts)])
        ax.fill_between([0, goal_ratio], target, 1.0, color="tab:green", alpha=0.15, lw=0, label="goal")
        ax.axhline(target, color="tab:green", ls=":", lw=0.8)
        ax.axvline(goal_ratio, color="tab:green", ls=":", lw=0.8)
        if grid:
            ax.scatter(
                [g["gpu_hours_vs_clairvoyant"] for g in grid.values()],
                [max(lo + 0.002, g["slo_attainment"]) for g in grid.values()],
                s=14,
                color="tab:gray",
                alpha=0.6,
                label="nowcast settings",
            )
        for x, a, n in pts:
            color = {"toposcale": "tab:red", "clairvoyant": "black", "nowcast": "tab:gray"}.get(n, "tab:blue")
            below = a < lo
            y = lo + 0.002 if below else a
            ax.scatter(
                [x],
                [y],
                s=30 if n == "toposcale" else 18,
                color=color,
                zorder=3,
                marker="v" if below else "o",
            )
            label = f"{n} ({a:.0%})" if below else n
            ax.annotate(label, (x, y), fontsize=6.5, xytext=(3, 2), textcoords="offset points", color=color)
        ax.set_xlim(0, hi_x * 1.05)
        ax.set_ylim(lo, 1.005)
        ax.set_title(f"{rep['trace']} / {rep['profile']}", fontsize=9)
        ax.set_xlabel("GPU-hours / clairvoyant's", fontsize=8)
        ax.set_ylabel("SLO attainment", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(reports), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(
        f"each policy (toposcale red), the nowcast grid (grey) and the goal: the target at <= {goal_ratio}x",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
