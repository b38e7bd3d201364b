"""`--plot FILE`: the run as one timeline figure (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from .view import Story

TIER_COLORS = {
    "nvlink": "#1b9e77",
    "pcie-switch": "#7570b3",
    "host-bridge": "#66a61e",
    "numa": "#e6ab02",
    "cross-socket": "#d95f02",
    "unknown": "#666666",
}


def plot_story(story: Story, path: Path, title: str = "toposcale demo") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in story.samples]
    fig, (ax_load, ax_kv, ax_rep, ax_lanes) = plt.subplots(
        4, 1, figsize=(10, 10), sharex=True, gridspec_kw={"height_ratios": [2, 1.3, 1.6, 2]}
    )
    ax_load.plot(t, [s.rps for s in story.samples], color="#333333", label="load (requests/s)")
    ax_load.set_ylabel("requests/s")
    ax_q = ax_load.twinx()
    ax_q.fill_between(
        t,
        [s.waiting for s in story.samples],
        step="post",
        alpha=0.3,
        color="#d95f02",
        label="queue (waiting)",
    )
    ax_q.set_ylabel("requests waiting")
    lines = ax_load.get_legend_handles_labels()
    more = ax_q.get_legend_handles_labels()
    ax_load.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    ax_load.set_title(title)

    ax_kv.plot(
        t,
        [None if s.kv is None else s.kv * 100 for s in story.samples],
        color="#7570b3",
        label="KV cache (adapter, avg)",
    )
    ax_kv.plot(
        t, [s.gpu_util for s in story.samples], color="#1b9e77", alpha=0.7, label="GPU util (DCGM, avg)"
    )
    ax_kv.set_ylabel("%")
    ax_kv.set_ylim(0, 105)
    ax_kv.legend(loc="upper right", fontsize=8)

    ax_rep.step(t, [s.current for s in story.samples], where="post", color="#333333", label="current")
    ax_rep.step(
        t, [s.ready for s in story.samples], where="post", color="#999999", linestyle="--", label="ready"
    )
    ax_rep.step(
        t,
        [s.desired for s in story.samples],
        where="post",
        color="#e7298a",
        linestyle=":",
        linewidth=2,
        label="desired (HPA)",
    )
    ax_rep.set_ylabel("replicas")
    ax_rep.legend(loc="upper right", fontsize=8)
    ax_rep.yaxis.get_major_locator().set_params(integer=True)

    # One lane per replica: where it ran and the tier of its GPUs.
    end = story.samples[-1].t / 60
    gone = {pod: at / 60 for at, pod, _node in story.removals}
    seen: set[str] = set()
    for lane, p in enumerate(story.placements):
        start, stop = p.t / 60, gone.get(p.pod, end)
        color = TIER_COLORS.get(p.tier, "#666666")
        ax_lanes.barh(
            lane, stop - start, left=start, height=0.6, color=color, label=None if p.tier in seen else p.tier
        )
        seen.add(p.tier)
        ax_lanes.text(
            start,
            lane,
            f" {p.node.removeprefix('gpu-')} GPUs {','.join(map(str, p.gpus))}",
            va="center",
            fontsize=7,
        )
    ax_lanes.set_yticks(
        range(len(story.placements)), [p.pod.removeprefix("vllm-qwen-") for p in story.placements], fontsize=7
    )
    ax_lanes.set_ylabel("replica")
    ax_lanes.invert_yaxis()
    ax_lanes.set_xlabel("simulated time (minutes)")
    ax_lanes.legend(loc="upper right", fontsize=8, title="GPU tier", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
