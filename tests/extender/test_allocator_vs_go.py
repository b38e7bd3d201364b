"""Differential test: toposcale's device-plugin prediction against NVIDIA's real go-gpuallocator code.

`allocator.candidates(topo, free, k)` claims to be every set the NVIDIA device plugin may hand a pod (the
kubelet passes the free IDs in Go map order, and the best-effort policy keeps the first best answer). Here
the **real** policy answers: `tests/gpuallocator` (built by `scripts/gpuallocator.sh bin`, go-gpuallocator at
the version the current device plugin pins, see its README) builds its devices through go-gpuallocator's NVML
option from go-nvml's mock package, so NVIDIA's code also derives the links from what NVML answers.

Topologies: every `tests/fixtures/topologies/*.txt` (parsed by the product's parser) and every NVML capture
under `tests/fixtures/nvml` (the agent's discovery over the capture on our side; the capture's own NVML
answers on the Go side). For the text fixtures NVML is made to answer as toposcale models the machine:
the legend code as the common-ancestor level (nvmlGpuTopologyLevel_t), NV<n> as n active links whose remote
PCI bus ID is the peer GPU's, with the PCIe level under them that allocator.py assumes (NODE within a socket,
else SYS); on the NVSwitch boxes the links end at a switch, as NVML reports them there, so go-gpuallocator
counts none.

Queries: on each topology every free set and request size (a seeded sample of free sets on boxes too large for
that), in every device order when at most ALL_ORDERS_MAX_FREE GPUs are free, else in ORDERS seeded random
orders; all in one run of the Go program. The test fails when any Go answer is not among toposcale's
candidates, or when, every order tried, a candidate is one the Go code never returned; it prints how often the
Go answer depended on device order. Report-only rows show the NVLinked fixtures with other PCIe levels under
their NVLinks than toposcale's estimate (topo -m hides them), to size what that estimate risks.
If the Go program cannot be built the test fails with the reason; it is never skipped.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
from toposcale.extender.agent.discovery import discover
from toposcale.extender.agent.replay import ReplayBackend, load_capture
from toposcale.extender.topology.allocator import candidates, indices_of, mask_of, pair_score
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.topo_text import parse_topo_text

from lab.peers.gpuallocator import (
    GO_MOD,
    NVSWITCH_FIXTURES,
    SEED,
    go_binary,
    nvml_of_capture,
    nvml_of_model,
    run_go,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

ORDERS = 6  # random device orders per (free set, size)
ALL_ORDERS_MAX_FREE = 5  # up to this many free GPUs every device order is tried, and candidates must be exact
EXHAUSTIVE_MAX_GPUS = 8  # up to this many GPUs every free set is tried; above, SAMPLED_FREE_SETS of them
SAMPLED_FREE_SETS = 1500

# Reported only: other PCIe levels under the NVLinked pairs, the same for all of them or drawn per pair.
WHAT_IF_NV_PCIE = ("PIX", "PHB", "SYS", "random")

# besteffort_policy.go calculateGPUPairScore, by the P2PLinkType names the Go program prints.
GO_LINK_SCORE = {
    "P2PLinkCrossCPU": 10, "P2PLinkSameCPU": 20, "P2PLinkHostBridge": 30, "P2PLinkMultiSwitch": 40,
    "P2PLinkSingleSwitch": 50, "P2PLinkSameBoard": 60,
}
_COUNTS = ["Single", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten", "Eleven",
           "Twelve", "Thirteen", "Fourteen", "Fifteen", "Sixteen", "Seventeen", "Eighteen"]
GO_LINK_SCORE |= {f"{w}NVLINKLink{'' if n == 1 else 's'}": 100 * n for n, w in enumerate(_COUNTS, 1)}


@dataclass
class Box:
    """One topology: toposcale's model of it, and what its NVML answers (the Go program's input)."""

    name: str
    topo: Topology
    nvml: dict[str, Any]
    go_index: list[int]  # Go device index -> index in topo.gpus
    asserted: bool = True  # False: a what-if wiring, reported only
    cases: list[tuple[int, int]] = field(default_factory=list)  # (free mask, k)


def boxes() -> list[Box]:
    out = []
    for path in sorted((FIXTURES / "topologies").glob("*.txt")):
        topo = parse_topo_text(path.read_text())
        nvml = nvml_of_model(path.stem, topo, switched=path.stem in NVSWITCH_FIXTURES)
        out.append(Box(path.stem, topo, nvml, list(range(len(topo)))))
        direct_nv = any(c.startswith("NV") for row in topo.links for c in row)
        if direct_nv and path.stem not in NVSWITCH_FIXTURES:
            # What if the PCIe level under the NVLinks (which topo -m hides) is not toposcale's estimate?
            for level in WHAT_IF_NV_PCIE:
                name = f"{path.stem} [NV over {level}]"
                nvml = nvml_of_model(name, topo, switched=False, nv_pcie=level)
                out.append(Box(name, topo, nvml, list(range(len(topo))), asserted=False))
    for path in sorted((FIXTURES / "nvml").glob("*/*.json")):
        if path.name not in ("nvml_capture.json", "nvml_probe.json"):
            continue
        cap = load_capture(path)
        topo = discover(ReplayBackend(cap)).topology
        name = f"nvml:{path.parent.name}"
        nvml = nvml_of_capture(name, cap)
        by_uuid = {g.uuid: i for i, g in enumerate(topo.gpus)}
        out.append(Box(name, topo, nvml, [by_uuid[g["uuid"]] for g in nvml["gpus"]]))
    return out


def pinned_version(module: str) -> str:
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(\S+)", GO_MOD.read_text(), re.M)
    assert m, f"{module} is not in {GO_MOD}"
    return m.group(1)


@dataclass
class Outcome:
    cases: int = 0
    queries: int = 0
    order_dependent: int = 0  # cases whose Go answers differed between device orders
    all_orders: int = 0  # cases tried in every device order
    all_orders_dependent: int = 0  # of those, the cases whose Go answer depended on the order
    exact: int = 0  # cases where toposcale predicted exactly one set
    predicted: int = 0  # candidate sets, summed over cases
    seen: int = 0  # distinct Go answers, summed over cases
    padded: int = 0  # Go answers holding a nil (padding) device
    misses: list[str] = field(default_factory=list)  # Go answers toposcale did not predict
    extra: list[str] = field(default_factory=list)  # all orders tried: sets predicted that Go never returned


def test_candidates_contain_what_the_real_go_gpuallocator_returns(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    binary = go_binary()  # first: a build failure is the failure to report
    built = time.monotonic()
    rng = random.Random(SEED)
    all_boxes = boxes()
    queries: list[dict[str, Any]] = []
    where: list[tuple[int, int]] = []  # per query: (box, case)
    for b_i, box in enumerate(all_boxes):
        n = len(box.topo)
        full = (1 << n) - 1
        if n <= EXHAUSTIVE_MAX_GPUS:
            frees = list(range(1, full + 1))
        else:
            frees = sorted({rng.randrange(1, full + 1) for _ in range(SAMPLED_FREE_SETS)})
        to_go = {t: g for g, t in enumerate(box.go_index)}
        for free in frees:
            members = [to_go[i] for i in indices_of(free)]
            for k in range(1, len(members) + 1):
                box.cases.append((free, k))
                c_i = len(box.cases) - 1
                if len(members) <= ALL_ORDERS_MAX_FREE:
                    orders = [list(p) for p in permutations(members)]
                else:
                    orders = [rng.sample(members, len(members)) for _ in range(ORDERS)]
                for order in orders:
                    queries.append({"topology": b_i, "available": order, "size": k})
                    where.append((b_i, c_i))
    out = run_go(binary, {"topologies": [b.nvml for b in all_boxes], "queries": queries})
    ran = time.monotonic()

    # The program is the version the README and go.mod name.
    for module in ("github.com/NVIDIA/go-gpuallocator", "github.com/NVIDIA/go-nvml"):
        assert out["versions"].get(module) == pinned_version(module), (module, out["versions"])

    # NVIDIA's link derivation gives toposcale's pair scores, up to one constant per box: go-gpuallocator
    # does not count NVSwitch links (their remote end is the switch), toposcale counts NV<n> on every pair.
    offsets: dict[str, set[int]] = {}
    problems: list[str] = []
    for box, derived in zip(all_boxes, out["topologies"], strict=True):
        if not box.asserted:
            continue
        n = len(box.topo)
        diffs = set()
        for gi in range(n):
            for gj in range(n):
                if gi != gj:
                    go = sum(GO_LINK_SCORE[t] for t in derived["links"][gi][gj])
                    diffs.add(pair_score(box.topo, box.go_index[gi], box.go_index[gj]) - go)
        offsets[box.name] = diffs
        uniform = box.name in NVSWITCH_FIXTURES or box.name.startswith("nvml:")
        if len(diffs) > 1 or (not uniform and not diffs <= {0}):
            problems.append(f"{box.name}: toposcale's pair scores minus go-gpuallocator's: {sorted(diffs)}")

    answers: dict[tuple[int, int], set[tuple[int, ...]]] = defaultdict(set)
    outcomes = {b.name: Outcome() for b in all_boxes}
    for (b_i, c_i), got in zip(where, out["answers"], strict=True):
        box = all_boxes[b_i]
        o = outcomes[box.name]
        o.queries += 1
        if -1 in got:
            o.padded += 1
            answers[(b_i, c_i)].add(("padded",))  # type: ignore[arg-type]
            continue
        answers[(b_i, c_i)].add(tuple(sorted(box.go_index[g] for g in got)))
    for (b_i, c_i), seen in answers.items():
        box = all_boxes[b_i]
        free, k = box.cases[c_i]
        o = outcomes[box.name]
        predicted = set(candidates(box.topo, free, k))
        o.cases += 1
        o.predicted += len(predicted)
        o.seen += len(seen)
        o.exact += len(predicted) == 1
        o.order_dependent += len(seen) > 1
        where_ = f"{box.name}: free {indices_of(free)} k={k}"
        if free.bit_count() <= ALL_ORDERS_MAX_FREE:
            o.all_orders += 1
            o.all_orders_dependent += len(seen) > 1
            # Every order tried: what the plugin can return is known, and toposcale must predict exactly it.
            if not set(map(indices_of, predicted)) <= seen and ("padded",) not in seen:
                o.extra.append(f"{where_}: over all orders Go gave {sorted(seen)}, "
                                f"toposcale predicted {[indices_of(m) for m in sorted(predicted)]}")
        for s in seen:
            if s == ("padded",):
                if not predicted:
                    o.misses.append(f"{where_}: Go padded, toposcale predicted nothing")
                continue
            if mask_of(s) not in predicted or len(s) != k:
                o.misses.append(f"{where_}: Go gave {s}, toposcale predicted "
                                f"{[indices_of(m) for m in sorted(predicted)]}")

    total = Outcome()
    head = (f"{'topology':46} {'cases':>6} {'queries':>7} {'order-dep':>9} {'all-orders':>10} {'exact':>6} "
            f"{'cand/case':>9} {'go/case':>7} {'padded':>6} {'missed':>6} {'extra':>5}  offset")
    lines = [
        f"go-gpuallocator {out['versions'].get('github.com/NVIDIA/go-gpuallocator')} "
        f"(go-nvml {out['versions'].get('github.com/NVIDIA/go-nvml')}, {out['versions'].get('go')}) vs "
        f"allocator.candidates: {len(queries)} queries in one Go run ({ran - built:.1f} s; build or cache "
        f"lookup {built - started:.1f} s); every order when at most {ALL_ORDERS_MAX_FREE} GPUs are free, "
        f"else {ORDERS} random orders (seed {SEED})",
        head,
    ]

    def row(name: str, o: Outcome, offset: str) -> str:
        dep = f"{o.all_orders_dependent}/{o.all_orders}"
        return (f"{name:46} {o.cases:6} {o.queries:7} {o.order_dependent / o.cases:9.1%} {dep:>10} "
                f"{o.exact / o.cases:6.1%} {o.predicted / o.cases:9.2f} {o.seen / o.cases:7.2f} {o.padded:6} "
                f"{len(o.misses):6} {len(o.extra):5}  {offset}")

    for box in all_boxes:
        if not box.asserted:
            continue
        o = outcomes[box.name]
        for f in ("cases", "queries", "order_dependent", "all_orders", "all_orders_dependent", "exact",
                  "predicted", "seen", "padded"):
            setattr(total, f, getattr(total, f) + getattr(o, f))
        total.misses += o.misses
        total.extra += o.extra
        lines.append(row(box.name, o, str(sorted(offsets[box.name]))))
    lines.append(row("all", total, ""))
    lines.append("not asserted: the same fixtures if the PCIe level under their NVLinked pairs (hidden by "
                 "topo -m) were not toposcale's estimate (NODE within a socket, else SYS)")
    for box in all_boxes:
        if not box.asserted:
            o = outcomes[box.name]
            lines.append(row(box.name, o, ""))
            lines += [f"    e.g. {m}" for m in (o.misses[:1] + o.extra[:1])]
    lines.append(
        "cases: (free set, size) pairs; order-dep: cases whose Go answer changed with the device order; "
        "all-orders: of the cases tried in every order, those whose answer depended on it; exact: toposcale "
        "predicted one set; cand/case, go/case: sets predicted, distinct Go answers seen; padded: Go answers "
        "holding a nil device; missed: Go answers toposcale did not predict; extra: cases tried in every "
        "order where toposcale predicted a set Go never returned; offset: toposcale's pair score minus "
        "go-gpuallocator's"
    )
    report = "\n".join(lines)
    with capsys.disabled():
        print("\n" + report)
    assert not problems, "\n".join(problems)
    assert not total.misses, f"{len(total.misses)} Go answers not predicted:\n" + "\n".join(total.misses[:30])
    assert not total.extra, f"{len(total.extra)} predictions Go never made:\n" + "\n".join(total.extra[:30])
    assert total.order_dependent > 0  # the orders did vary the Go answer somewhere: the sampling is not idle
    assert total.cases >= 5000
