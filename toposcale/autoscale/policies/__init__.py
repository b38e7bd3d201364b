"""The autoscaling policies the benchmark compares, one module each, each citing where its recipe comes from.

`make(name, ctx)` builds one; `NAMES` lists them in the report's order; `DEFAULT` is what runs unless
`--policies` says otherwise: all but the nowcast, whose grid of nine runs would double the run's time
(asked for by name, or by `benchmarks/bench_autoscale.py --nowcast`).
"""

from __future__ import annotations

from .base import PolicyContext

NAMES = (
    "seed-gpu-util",
    "seed-gpu-memory",
    "toposcale-example",
    "llm-d-saturation",
    "llm-d-slo",
    "dynamo-throughput",
    "clairvoyant",
    "nowcast",
    "toposcale",
)
DEFAULT = tuple(n for n in NAMES if n != "nowcast")


def make(name: str, ctx: PolicyContext):  # type: ignore[no-untyped-def]
    """A fresh policy (its own controller state) for one run."""
    from . import dynamo, llmd, seed, toposcale_example, toposcale_policy

    if name == "seed-gpu-util":
        return seed.gpu_util(ctx)
    if name == "seed-gpu-memory":
        return seed.gpu_memory(ctx)
    if name == "toposcale-example":
        return toposcale_example.make(ctx)
    if name == "llm-d-saturation":
        return llmd.saturation(ctx)
    if name == "llm-d-slo":
        return llmd.slo(ctx)
    if name == "dynamo-throughput":
        return dynamo.throughput(ctx)
    if name == "toposcale":
        return toposcale_policy.make(ctx)
    if name in ("clairvoyant", "nowcast"):
        raise ValueError(f"{name} is built by toposcale.autoscale.bench (it needs the trace)")
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(NAMES)}")
