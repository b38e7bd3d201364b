"""`--plot out.png`: tier shares per policy (left) and stranded GPUs over time (right)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from toposcale.extender.topology.model import Tier

from .metrics import PolicyResult

TIER_COLOURS = {
    Tier.NVLINK: "#1b7837",
    Tier.PCIE_SWITCH: "#7fbf7b",
    Tier.HOST_BRIDGE: "#d9f0d3",
    Tier.NUMA: "#f1b6da",
    Tier.CROSS_SOCKET: "#c51b7d",
    Tier.UNKNOWN: "#bdbdbd",
}


def plot(results: Sequence[PolicyResult], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1, 1.5]})
    names = [r.policy for r in results]
    bottoms = [0.0] * len(results)
    for tier in Tier:
        vals = [100 * (r.tier_share(tier) or 0.0) for r in results]
        if not any(vals):
            continue
        ax1.bar(names, vals, bottom=bottoms, label=tier.label, color=TIER_COLOURS[tier], edgecolor="white")
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    for i, r in enumerate(results):
        if r.multi == 0:
            ax1.text(i, 2, "no multi-GPU\npods placed", ha="center", fontsize=8)
    ax1.set_ylabel("% of placed multi-GPU pods")
    ax1.set_ylim(0, 100)
    ax1.set_title("GPU set tier (worst link within the set)")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)

    for r in results:
        xs = [t / 3600 for t, _, _ in r.series]
        ax2.plot(xs, [s for _, s, _ in r.series], label=f"{r.policy} (mean {r.stranded_mean:.1f})", lw=1.4)
    ax2.set_xlabel("hours since the first arrival")
    ax2.set_ylabel("stranded GPUs (free, unusable by a 4-GPU pod)")
    ax2.set_title("Stranded GPUs over time")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
