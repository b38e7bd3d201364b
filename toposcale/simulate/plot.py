"""`--plot out.png`: tier shares per policy, best-tier share over time, stranded GPUs over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from toposcale.extender.topology.model import Tier

from .metrics import PolicyResult, Sample

TIER_COLOURS = {
    Tier.NVLINK: "#1b7837",
    Tier.PCIE_SWITCH: "#7fbf7b",
    Tier.HOST_BRIDGE: "#d9f0d3",
    Tier.NUMA: "#f1b6da",
    Tier.CROSS_SOCKET: "#c51b7d",
    Tier.UNKNOWN: "#bdbdbd",
}
WINDOW = 12  # samples per point of the windowed best-tier share (a twentieth of the run)


def windowed_best_share(series: Sequence[Sample], window: int = WINDOW) -> tuple[list[float], list[float]]:
    """(hours, %) of multi-GPU pods placed in each trailing window that got their node's best tier."""
    xs, ys = [], []
    for i in range(window, len(series)):
        a, b = series[i - window], series[i]
        if b.multi > a.multi:
            xs.append(b.t / 3600)
            ys.append(100 * (b.best - a.best) / (b.multi - a.multi))
    return xs, ys


def plot(results: Sequence[PolicyResult], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.4), gridspec_kw={"width_ratios": [1, 1.3, 1.3]})
    names = [r.policy for r in results]
    bottoms = [0.0] * len(results)
    for tier in Tier:
        vals = [100 * (r.tier_share(tier) or 0.0) for r in results]
        if not any(vals):
            continue
        label = "sys" if tier == Tier.CROSS_SOCKET else tier.label  # a SYS link; sockets are measured apart
        ax1.bar(names, vals, bottom=bottoms, label=label, color=TIER_COLOURS[tier], edgecolor="white")
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    for i, r in enumerate(results):
        if r.multi == 0:
            ax1.text(i, 2, "no multi-GPU\npods placed", ha="center", fontsize=8)
    ax1.set_ylabel("% of placed multi-GPU pods")
    ax1.set_ylim(0, 100)
    ax1.set_title("GPU set tier (weakest link in the set)")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)

    for r in results:
        xs, ys = windowed_best_share(r.series)
        share = r.best_tier_share
        label = f"{r.policy} ({100 * share:.1f}% overall)" if share is not None else r.policy
        ax2.plot(xs, ys, label=label, lw=1.4)
    ax2.set_xlabel("hours since the first arrival")
    ax2.set_ylabel("% of multi-GPU pods placed in the window")
    ax2.set_title("Pods given the best set their node offers")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)

    for r in results:
        xs = [s.t / 3600 for s in r.series]
        ax3.plot(xs, [s.stranded for s in r.series], label=f"{r.policy} (mean {r.stranded_mean:.1f})", lw=1.4)
    ax3.set_xlabel("hours since the first arrival")
    ax3.set_ylabel("stranded GPUs (free, unusable by a 4-GPU pod)")
    ax3.set_title("Stranded GPUs over time")
    ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
