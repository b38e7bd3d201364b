"""The GPU boxes both scheduler benchmarks place pods on: the real topologies in tests/fixtures/topologies in
turn (the 1-GPU ones left out), 30% of GPUs taken at random, published as the agent's two annotations."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "topologies"


@dataclass(frozen=True)
class Box:
    i: int
    name: str
    gpus: int
    free: int
    annotations: dict[str, str]  # toposcale.io/gpu-topology and toposcale.io/gpu-allocation


def boxes(size: int, seed: int, prefix: str, gpu_id: str = "GPU-{name}-{j}") -> Iterator[Box]:
    """`size` boxes named `<prefix>-00000`..., GPU ids from `gpu_id` (format fields name, j)."""
    from toposcale.extender.topology.annotations import (
        ALLOCATION_ANNOTATION,
        TOPOLOGY_ANNOTATION,
        Allocation,
        allocation_to_doc,
        dumps,
        now_rfc3339,
        topology_to_doc,
    )
    from toposcale.extender.topology.topo_text import parse_topo_text

    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(FIXTURES.glob("*.txt")) if "1gpu" not in p.name]
    for i in range(size):
        name = f"{prefix}-{i:05d}"
        text = texts[i % len(texts)]
        n = len(parse_topo_text(text))
        topo = parse_topo_text(text, ids=[gpu_id.format(name=name, j=j) for j in range(n)])
        held = frozenset(g.id for g in topo.gpus if rng.random() < 0.3)
        alloc = Allocation(held, frozenset(), now_rfc3339())
        yield Box(i, name, n, n - len(held), {
            TOPOLOGY_ANNOTATION: dumps(topology_to_doc(topo)),
            ALLOCATION_ANNOTATION: dumps(allocation_to_doc(alloc)),
        })
