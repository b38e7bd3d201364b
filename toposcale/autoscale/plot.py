"""`--plot`: a panel per trace and policy: replicas wanted and ready, the queue, TTFT p90 against the SLO."""

from __future__ import annotations

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
