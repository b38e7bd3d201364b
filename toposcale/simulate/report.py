"""A run's results as the table on stdout and as the `--json` document: every figure the table prints, so a
comparison (NVLink share, `4-GPU miss@`, utilization) can be scripted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toposcale.extender.topology.model import Tier

from .metrics import PolicyResult

# The table's tier columns (nvlink, pcie-sw, host-br, numa, sys) as JSON keys: each tier's share of placed
# multi-GPU pods.
TIER_KEYS = {
    Tier.NVLINK: "nvlink_share",
    Tier.PCIE_SWITCH: "pcie_switch_share",
    Tier.HOST_BRIDGE: "host_bridge_share",
    Tier.NUMA: "numa_share",
    Tier.CROSS_SOCKET: "sys_share",
}
JSON_KEYS = (
    "placed",
    "pending",
    *TIER_KEYS.values(),
    "single_numa_share",
    "best_tier_share",
    "cross_socket_share",
    "first_4gpu_miss_load",
    "utilization_mean",
    "stranded_gpus_mean",
    "decisions_per_s",
)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def to_json(results: Sequence[PolicyResult]) -> dict[str, Any]:
    """`{"policies": {name: {...}}}` with the keys of JSON_KEYS, in that order. A share over zero multi-GPU
    pods is null (undefined), never 0; `first_4gpu_miss_load` (the table's `4-GPU miss@`: the share of fleet
    GPUs allocated when a 4-GPU pod first found no node) is null when none ever missed."""
    return {
        "policies": {
            r.policy: {
                "placed": r.placed,
                "pending": r.pending,
                **{key: _r(r.tier_share(tier)) for tier, key in TIER_KEYS.items()},
                "single_numa_share": _r(r.single_numa_share),
                "best_tier_share": _r(r.best_tier_share),
                "cross_socket_share": _r(r.cross_socket_share),
                "first_4gpu_miss_load": _r(r.first_4gpu_miss_load),
                "utilization_mean": _r(r.utilization_mean),
                "stranded_gpus_mean": round(r.stranded_mean, 3),
                "decisions_per_s": _r(r.decisions_per_s, 1),
            }
            for r in results
        }
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


COLUMNS = (
    ("policy", "policy"),
    ("placed", "placed"),
    ("pending", "pending"),
    ("nvlink", "NVLink domain"),
    ("pcie-sw", "one PCIe switch (PIX/PXB)"),
    ("host-br", "one host bridge (PHB)"),
    ("numa", "one NUMA node (NODE)"),
    ("sys", "weakest link SYS (the SMP interconnect)"),
    ("1-NUMA", "all GPUs on one NUMA node (layout unknown: no SYS pair)"),
    ("x-socket", "GPUs on 2+ NUMA nodes (layout unknown: a SYS pair); never also 1-NUMA"),
    ("best", "as well connected as the empty node allows"),
    ("4-GPU miss@", "fleet GPUs allocated when a 4-GPU pod first found no node"),
    ("util", "mean share of fleet GPUs allocated"),
    ("stranded", "mean GPUs free but unusable by a 4-GPU pod"),
    ("dec/s", "placement decisions per second"),
)


def rows(results: Sequence[PolicyResult]) -> list[list[str]]:
    out = []
    for r in results:
        out.append(
            [
                r.policy,
                str(r.placed),
                str(r.pending),
                _pct(r.tier_share(Tier.NVLINK)),
                _pct(r.tier_share(Tier.PCIE_SWITCH)),
                _pct(r.tier_share(Tier.HOST_BRIDGE)),
                _pct(r.tier_share(Tier.NUMA)),
                _pct(r.tier_share(Tier.CROSS_SOCKET)),
                _pct(r.single_numa_share),
                _pct(r.cross_socket_share),
                _pct(r.best_tier_share),
                "never" if r.first_4gpu_miss_load is None else _pct(r.first_4gpu_miss_load),
                _pct(r.utilization_mean),
                f"{r.stranded_mean:.1f}",
                "n/a" if r.decisions_per_s is None else f"{r.decisions_per_s:,.0f}",
            ]
        )
    return out


def table(results: Sequence[PolicyResult], *, markdown: bool = False) -> str:
    head = [c for c, _ in COLUMNS]
    body = rows(results)
    if markdown:
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(lines)


def legend() -> str:
    return "\n".join(f"  {c:<12} {desc}" for c, desc in COLUMNS[3:]) + (
        "\n  tier, NUMA and socket shares are over placed pods of 2+ GPUs"
    )
