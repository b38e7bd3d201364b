"""The pods a run replays: seeded arrivals and departures, or a CSV trace.

Generated workload: Poisson arrivals, exponential lifetimes, GPU counts drawn from a mix. The arrival rate is
set so the offered load (GPU-seconds asked per second over the fleet's GPUs) equals `load`; lifetimes
average `mean_duration` seconds, so `--pods` decides how many lifetimes the run covers. A pod's lifetime
starts when it is placed (a pending pod waits first, as a real one does).

Trace: CSV with the header `time,pod,gpus,duration` (seconds; any column order; rows in any order).
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

# vLLM serving Qwen2.5-7B with tensor parallel 4 dominates; some 1- and 2-GPU pods (embeddings, small models).
DEFAULT_MIX: dict[int, float] = {4: 0.70, 2: 0.15, 1: 0.15}
MAX_TRACE_BYTES = 256 << 20
MAX_PODS = 1_000_000  # a few hundred MB of pods and events; far beyond any useful comparison
TRACE_COLUMNS = ("time", "pod", "gpus", "duration")


class WorkloadError(ValueError):
    """A mix, trace or workload setting that cannot be used, with a message a person can act on."""


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    arrival: float  # seconds
    gpus: int
    duration: float  # seconds, counted from placement


def parse_mix(text: str) -> dict[int, float]:
    """`"4:0.7,2:0.15,1:0.15"` -> {4: 0.7, 2: 0.15, 1: 0.15}, normalised to sum 1."""
    mix: dict[int, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        gpus_s, sep, weight_s = part.partition(":")
        if not sep:
            raise WorkloadError(f"mix entry {part!r}: expected GPUS:WEIGHT, e.g. 4:0.7")
        try:
            gpus, weight = int(gpus_s), float(weight_s)
        except ValueError:
            raise WorkloadError(f"mix entry {part!r}: GPUS must be an integer and WEIGHT a number") from None
        if not 1 <= gpus <= 64:
            raise WorkloadError(f"mix entry {part!r}: a pod asks 1 to 64 GPUs")
        if not (weight > 0 and math.isfinite(weight)):
            raise WorkloadError(f"mix entry {part!r}: WEIGHT must be a positive number")
        if gpus in mix:
            raise WorkloadError(f"mix names {gpus}-GPU pods twice")
        mix[gpus] = weight
    if not mix:
        raise WorkloadError("mix is empty; e.g. 4:0.7,2:0.15,1:0.15")
    total = sum(mix.values())
    return {g: w / total for g, w in sorted(mix.items())}


def generate(
    pods: int,
    *,
    seed: int,
    fleet_gpus: int,
    mix: dict[int, float] | None = None,
    load: float = 0.95,
    mean_duration: float = 3600.0,
) -> list[PodSpec]:
    """`pods` pods, the same list for the same arguments."""
    if not 1 <= pods <= MAX_PODS:
        raise WorkloadError(f"pods must be 1..{MAX_PODS}, got {pods}")
    if not (0 < load <= 10 and math.isfinite(load)):
        raise WorkloadError(f"load must be in (0, 10], got {load}")
    if not (mean_duration > 0 and math.isfinite(mean_duration)):
        raise WorkloadError(f"mean duration must be a positive number of seconds, got {mean_duration}")
    if fleet_gpus <= 0:
        raise WorkloadError("the fleet has no GPUs")
    mix = mix or DEFAULT_MIX
    sizes = sorted(mix)  # the same mix draws the same pods whatever order it was written in
    weights = [mix[s] for s in sizes]
    mean_gpus = sum(s * w for s, w in zip(sizes, weights, strict=True))
    rate = load * fleet_gpus / (mean_gpus * mean_duration)  # arrivals per second
    rng = random.Random(f"toposcale-simulate-workload:{seed}")
    out: list[PodSpec] = []
    t = 0.0
    width = len(str(pods - 1))
    for i in range(pods):
        t += rng.expovariate(rate)
        gpus = rng.choices(sizes, weights)[0]
        duration = rng.expovariate(1.0 / mean_duration)
        out.append(PodSpec(name=f"pod-{i:0{width}d}", arrival=t, gpus=gpus, duration=duration))
    return out


def _number(value: str, what: str, *, positive: bool) -> float:
    try:
        x = float(value)
    except ValueError:
        raise WorkloadError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise WorkloadError(
            f"{what}: {value!r} must be a {'positive' if positive else 'non-negative'} number"
        )
    return x


def parse_trace(text: str, what: str = "trace", limit: int | None = None) -> list[PodSpec]:
    """Pods from CSV text, sorted by arrival (ties keep file order)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise WorkloadError(f"{what}: empty; expected the header {','.join(TRACE_COLUMNS)}") from None
    cols = [h.strip().lower() for h in header]
    missing = [c for c in TRACE_COLUMNS if c not in cols]
    if missing:
        raise WorkloadError(
            f"{what}: line 1: header {','.join(header)!r} lacks {', '.join(missing)}; "
            f"expected {','.join(TRACE_COLUMNS)}"
        )
    pos = {c: cols.index(c) for c in TRACE_COLUMNS}
    pods: list[PodSpec] = []
    seen: set[str] = set()
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise WorkloadError(f"{what}: line {line}: {len(row)} fields, the header has {len(cols)}")
            name = row[pos["pod"]].strip()
            if not name:
                raise WorkloadError(f"{what}: line {line}: empty pod name")
            if name in seen:
                raise WorkloadError(f"{what}: line {line}: pod {name!r} appears twice")
            seen.add(name)
            gpus_s = row[pos["gpus"]].strip()
            # ASCII digits only: str.isdigit() also accepts "²" or "٤", which int() then refuses or misreads
            if not (gpus_s.isascii() and gpus_s.isdigit()) or not 1 <= int(gpus_s) <= 64:
                raise WorkloadError(f"{what}: line {line}: gpus {gpus_s!r} must be an integer 1..64")
            pods.append(
                PodSpec(
                    name=name,
                    arrival=_number(row[pos["time"]].strip(), f"{what}: line {line}: time", positive=False),
                    gpus=int(gpus_s),
                    duration=_number(
                        row[pos["duration"]].strip(), f"{what}: line {line}: duration", positive=True
                    ),
                )
            )
            if len(pods) > MAX_PODS:
                raise WorkloadError(f"{what}: more than {MAX_PODS} pods")
    except csv.Error as exc:
        raise WorkloadError(f"{what}: line {reader.line_num}: not CSV: {exc}") from None
    if not pods:
        raise WorkloadError(f"{what}: no pods after the header")
    pods.sort(key=lambda p: p.arrival)
    return pods[:limit] if limit is not None else pods


def load_trace(path: str | Path, limit: int | None = None) -> list[PodSpec]:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise WorkloadError(f"{path}: {size} bytes, more than the {MAX_TRACE_BYTES} allowed")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_trace(text, what=str(path), limit=limit)
