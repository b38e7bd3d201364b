"""Request traces: arrival time, prompt tokens, output tokens (pure parsing; file reading at the edges).

Two formats, detected from the content, not the file name:
- CSV with a header naming a time column (`TIMESTAMP`: wall-clock `2023-11-16 18:15:46.6805900`, or seconds)
  and the token columns `ContextTokens`, `GeneratedTokens` (the Azure LLM inference traces 2023);
- JSON Lines with `timestamp` (milliseconds from the start), `input_length`, `output_length` (Mooncake).
Times become seconds from the first request. A bad line is a TraceError naming the file and the line.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SHIPPED = {
    "azure-code": "azure-llm-2023-code.csv",
    "azure-conv": "azure-llm-2023-conv.csv",
    "mooncake-conv": "mooncake-conversation.jsonl",
}


class TraceError(ValueError):
    """The trace cannot be read; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    t: tuple[float, ...]  # seconds from the first request, sorted
    prompt: tuple[int, ...]
    output: tuple[int, ...]

    @property
    def span_s(self) -> float:
        return self.t[-1] if self.t else 0.0

    def __len__(self) -> int:
        return len(self.t)


def _int(v: object, what: str, where: str) -> int:
    try:
        f = float(str(v))
    except ValueError:
        raise TraceError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(f) or f < 0 or f != int(f):
        raise TraceError(f"{where}: {what} {v!r} must be a whole number >= 0")
    return int(f)


def _time(v: str, where: str) -> float:
    try:
        f = float(v)
        if math.isfinite(f):
            return f
    except ValueError:
        pass
    s = v.strip()
    if "." in s:  # Python's %f takes at most 6 fractional digits; Azure writes 7
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return dt.datetime.strptime(s, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    raise TraceError(f"{where}: timestamp {v!r} is neither seconds nor YYYY-MM-DD HH:MM:SS[.fff]")


def _finish(name: str, rows: list[tuple[float, int, int]]) -> Trace:
    if not rows:
        raise TraceError(f"{name}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return Trace(name, tuple(r[0] - t0 for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def parse_trace(text: str, name: str = "trace") -> Trace:
    """A Trace from the text of a CSV or JSON Lines trace (format detected)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise TraceError(f"{name}: empty")
    if first.lstrip().startswith("{"):
        return _jsonl(text, name)
    return _csv(text, name)


def _jsonl(text: str, name: str) -> Trace:
    rows: list[tuple[float, int, int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(d, dict):
            raise TraceError(f"{where}: expected an object")
        for k in ("timestamp", "input_length", "output_length"):
            if k not in d:
                raise TraceError(f"{where}: missing {k!r} (expected timestamp, input_length, output_length)")
        ts = d["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
            raise TraceError(f"{where}: timestamp {ts!r} must be milliseconds >= 0")
        rows.append(
            (
                ts / 1000.0,
                _int(d["input_length"], "input_length", where),
                _int(d["output_length"], "output_length", where),
            )
        )
    return _finish(name, rows)


def _csv(text: str, name: str) -> Trace:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    cols = {h.lower(): i for i, h in enumerate(header)}
    tcol = next((cols[k] for k in ("timestamp", "time", "arrival") if k in cols), None)
    pcol = next((cols[k] for k in ("contexttokens", "prompt_tokens", "input_length") if k in cols), None)
    ocol = next((cols[k] for k in ("generatedtokens", "output_tokens", "output_length") if k in cols), None)
    if tcol is None or pcol is None or ocol is None:
        raise TraceError(
            f"{name} line 1: header {','.join(header)!r}: expected TIMESTAMP,ContextTokens,GeneratedTokens "
            "(or a JSON Lines trace with timestamp, input_length, output_length)"
        )
    rows: list[tuple[float, int, int]] = []
    for n, rec in enumerate(reader, 2):
        if not rec or not any(c.strip() for c in rec):
            continue
        where = f"{name} line {n}"
        if len(rec) < len(header):
            raise TraceError(f"{where}: {len(rec)} fields, the header has {len(header)}")
        rows.append(
            (
                _time(rec[tcol], where),
                _int(rec[pcol], "prompt tokens", where),
                _int(rec[ocol], "output tokens", where),
            )
        )
    return _finish(name, rows)


def load_trace(name_or_path: str) -> Trace:
    """A shipped trace by short name (`azure-conv`, `azure-code`, `mooncake-conv`) or file name, or a file."""
    fname = SHIPPED.get(name_or_path, name_or_path)
    if fname in SHIPPED.values():
        text = resources.files(__package__).joinpath("traces", fname).read_text(encoding="utf-8")
        return parse_trace(text, name_or_path)
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"{name_or_path}: no such file (shipped traces: {', '.join(SHIPPED)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{name_or_path}: cannot read: {exc}") from None
    return parse_trace(text, path.name)


def replay(trace: Trace, rate_scale: float, seed: int, max_shift_s: float = 120.0) -> Trace:
    """The trace at `rate_scale` times its request rate, by replaying copies of it: floor(x) whole copies
    and one more thinned to the fraction left (each request kept with that probability). Copy 0 is the trace
    itself; every other copy is shifted by a seeded offset in [0, max_shift_s) and wrapped at the end, so
    the trace's minute-scale shape (bursts, the hour's trend) stays and only second-scale detail mixes.
    The timeline keeps its length: cold starts and windows keep their meaning."""
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError("rate_scale must be a finite number above 0")
    rng = random.Random(seed)
    span = max(trace.span_s, 1e-9)
    whole, frac = int(rate_scale), rate_scale - int(rate_scale)
    rows: list[tuple[float, int, int]] = []
    copies = whole + (1 if frac > 1e-9 else 0)
    for c in range(copies):
        shift = 0.0 if c == 0 else rng.uniform(0.0, max_shift_s)
        keep = 1.0 if c < whole else frac
        for t, p, o in zip(trace.t, trace.prompt, trace.output, strict=True):
            if keep < 1.0 and rng.random() >= keep:
                continue
            rows.append(((t + shift) % (span + 1e-9), p, o))
    rows.sort(key=lambda r: r[0])
    return Trace(
        f"{trace.name} x{rate_scale:g}",
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
    )
