"""Serving profiles: measured (or derived) step times of one vLLM replica, and how to read them.

A profile (`profiles/<name>.yaml`, format `toposcale.io/serving-profile/v1`, written by
`scripts/profile_serving.py`) holds prefill seconds by prompt tokens, chunked-prefill step seconds by chunk
budget and prior context, decode step seconds by batch size and mean context, the KV-cache capacity in tokens,
`max_num_seqs` and the chunked-prefill token budget. Pure: `parse_profile` takes the YAML text.

Between measured points times are interpolated log-log (time ~ a * x^k on each segment: exact for the power
laws of a roofline, linear-in-x cost and quadratic attention alike); past the last point they are extrapolated
linearly in x from the last segment (the cost per extra token stays what it last was); below the first point
they stay at the first point's value (a step never costs less than reading the weights once).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from toposcale.yamltext import load_yaml

KIND = "toposcale.io/serving-profile/v1"
STATUSES = ("measured", "derived", "placeholder")


class ProfileError(ValueError):
    """The profile file is not a valid serving profile; the message names the field."""


def _interp_1d(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Log-log between points, clamped below the first, linear in x past the last (module docstring)."""
    if x <= xs[0]:
        return ys[0]
    n = len(xs)
    if x >= xs[-1]:
        if n == 1:
            return ys[0] * x / xs[0]
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + max(slope, 0.0) * (x - xs[-1])
    i = bisect.bisect_right(xs, x) - 1
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    u = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + u * (math.log(y1) - math.log(y0)))


@dataclass(frozen=True, slots=True)
class _Row:
    """One row of a 2-D table with its missing (null) cells dropped."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def at(self, x: float) -> float:
        return _interp_1d(self.xs, self.ys, x)


@dataclass(frozen=True)
class Profile:
    name: str
    status: str
    model: str
    gpus_per_replica: int
    tensor_parallel: int
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    prefill_tokens: tuple[float, ...]
    prefill_s: tuple[float, ...]
    chunk_budget: tuple[float, ...]
    chunk_prior: tuple[float, ...]
    chunk_s: tuple[tuple[float, ...], ...]  # rows: budget, columns: prior context
    decode_batch: tuple[float, ...]
    decode_context: tuple[float, ...]
    decode_s: tuple[tuple[float | None, ...], ...]  # rows: batch, columns: context
    source: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    header: str = ""  # the file's comment header, kept so a derived profile can cite its parent
    _decode_rows: tuple[_Row, ...] = field(init=False, repr=False)
    _chunk_cols: tuple[_Row, ...] = field(init=False, repr=False)  # per prior context: time by budget
    _cache: dict[tuple[int, int], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = []
        for r in self.decode_s:
            pts = [(c, s) for c, s in zip(self.decode_context, r, strict=True) if s is not None]
            rows.append(_Row(tuple(p[0] for p in pts), tuple(p[1] for p in pts)))
        object.__setattr__(self, "_decode_rows", tuple(rows))
        cols = []
        for j in range(len(self.chunk_prior)):
            cols.append(_Row(self.chunk_budget, tuple(row[j] for row in self.chunk_s)))
        object.__setattr__(self, "_chunk_cols", tuple(cols))
        object.__setattr__(self, "_cache", {})

    def __deepcopy__(self, memo: dict[int, object]) -> Profile:
        return self  # immutable (the cache only remembers answers): replicas copied for a what-if share it

    # ---- step times --------------------------------------------------------------------------------------
    @property
    def floor_s(self) -> float:
        """One pass over the weights: what a mixed step shares once between its decode and prefill parts.
        The profile's own check (`decode_b1_floor_s`, the weight bytes over measured HBM bandwidth) when
        present, else the batch-1 decode step at the shortest context."""
        v = self.checks.get("decode_b1_floor_s")
        if isinstance(v, int | float) and v > 0:
            return float(min(v, self.decode_time(1, self.decode_context[0])))
        return self.decode_time(1, self.decode_context[0])

    def prefill_time(self, tokens: float) -> float:
        """Seconds to prefill one prompt of `tokens` in one pass (batch 1)."""
        return _interp_1d(self.prefill_tokens, self.prefill_s, max(tokens, 1.0))

    def decode_time(self, batch: float, context: float) -> float:
        """Seconds of one decode step for `batch` sequences at mean context `context` tokens. Cached on
        (batch, context rounded to 64 tokens): the simulator asks for the same points many times."""
        if batch <= 0:
            return 0.0
        key = (int(batch), int(context) >> 6)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ctx = max(float(context), 1.0)
        per_batch = [row.at(ctx) for row in self._decode_rows]
        v = _interp_1d(self.decode_batch, tuple(per_batch), float(batch))
        if len(self._cache) < 200_000:
            self._cache[key] = v
        return v

    def chunk_time(self, tokens: float, prior: float) -> float:
        """Seconds of one step that prefills `tokens` new tokens whose earlier `prior` tokens are cached.
        Within the measured budgets: the chunked-prefill table (log-log in the budget, linear in the prior
        context). Below the smallest budget: the one-pass prefill time of `tokens` plus the prior context's
        extra cost at the smallest budget, scaled by tokens / that budget (attention to the prior context
        is proportional to the new tokens)."""
        if tokens <= 0:
            return 0.0
        prior = max(prior, 0.0)
        b0 = self.chunk_budget[0]

        def at_prior(t: float) -> float:
            vals = [col.at(t) for col in self._chunk_cols]
            return _interp_linear(self.chunk_prior, tuple(vals), prior)

        if tokens >= b0:
            return at_prior(tokens)
        extra = at_prior(b0) - self._chunk_cols[0].at(b0)
        return self.prefill_time(tokens) + max(extra, 0.0) * tokens / b0

    def step_time(self, batch: float, context: float, chunk: float = 0.0, prior: float = 0.0) -> float:
        """One engine step as vLLM V1 schedules it: `batch` decoding sequences at mean context `context`
        and a prefill chunk of `chunk` tokens after `prior` cached ones. A mixed step costs the decode step
        plus the chunk step minus one weights pass (both would read the weights; the mixed step reads them
        once)."""
        d = self.decode_time(batch, context) if batch > 0 else 0.0
        c = self.chunk_time(chunk, prior) if chunk > 0 else 0.0
        if d and c:
            return max(d, c, d + c - self.floor_s)
        return d + c


def _interp_linear(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + max(slope, 0.0) * (x - xs[-1])
    i = bisect.bisect_right(xs, x) - 1
    u = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + u * (ys[i + 1] - ys[i])


# ---- parsing --------------------------------------------------------------------------------------------
def _need(doc: dict[str, Any], key: str, where: str = "") -> Any:
    if not isinstance(doc, dict) or key not in doc:
        raise ProfileError(f"missing field {where}{key}")
    return doc[key]


def _pos_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ProfileError(f"{name}: expected a positive integer, got {v!r}")
    return v


def _axis(v: Any, name: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise ProfileError(f"{name}: expected a non-empty list of numbers")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x <= 0:
            raise ProfileError(f"{name}: {x!r} is not a positive number")
        out.append(float(x))
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ProfileError(f"{name}: must be strictly increasing")
    return tuple(out)


def _seconds(v: Any, name: str, n: int, *, nulls: bool = False) -> tuple[Any, ...]:
    if not isinstance(v, list) or len(v) != n:
        raise ProfileError(f"{name}: expected a list of {n} values")
    out: list[float | None] = []
    for x in v:
        if x is None and nulls:
            out.append(None)
            continue
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x <= 0:
            raise ProfileError(f"{name}: {x!r} is not a positive number of seconds")
        out.append(float(x))
    return tuple(out)


def _table(v: Any, name: str, rows: int, cols: int, *, nulls: bool = False) -> tuple[tuple[Any, ...], ...]:
    if not isinstance(v, list) or len(v) != rows:
        raise ProfileError(f"{name}: expected {rows} rows")
    return tuple(_seconds(r, f"{name}[{i}]", cols, nulls=nulls) for i, r in enumerate(v))


def parse_profile(text: str, origin: str = "profile") -> Profile:
    """A `Profile` from the YAML text, or ProfileError naming what is wrong."""
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{origin}: not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"{origin}: expected a mapping at the top")
    try:
        if doc.get("kind") != KIND:
            raise ProfileError(f"kind must be {KIND}, got {doc.get('kind')!r}")
        status = _need(doc, "status")
        if status not in STATUSES:
            raise ProfileError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        kv = _need(doc, "kv_cache")
        pre = _need(doc, "prefill")
        ch = _need(doc, "chunked_prefill")
        de = _need(doc, "decode")
        ptok = _axis(_need(pre, "tokens", "prefill."), "prefill.tokens")
        budget = _axis(_need(ch, "budget", "chunked_prefill."), "chunked_prefill.budget")
        prior_raw = _need(ch, "prior_context", "chunked_prefill.")
        if (
            not isinstance(prior_raw, list)
            or not prior_raw
            or any(isinstance(x, bool) or not isinstance(x, int | float) or x < 0 for x in prior_raw)
        ):
            raise ProfileError("chunked_prefill.prior_context: expected a list of numbers >= 0")
        prior = tuple(float(x) for x in prior_raw)
        if any(b <= a for a, b in itertools.pairwise(prior)):
            raise ProfileError("chunked_prefill.prior_context: must be strictly increasing")
        batch = _axis(_need(de, "batch", "decode."), "decode.batch")
        ctx = _axis(_need(de, "context", "decode."), "decode.context")
        dsec = _table(_need(de, "seconds", "decode."), "decode.seconds", len(batch), len(ctx), nulls=True)
        for i, row in enumerate(dsec):
            if all(v is None for v in row):
                raise ProfileError(f"decode.seconds[{i}]: every cell is null")
        p = Profile(
            name=str(_need(doc, "name")),
            status=status,
            model=str(_need(doc, "model")),
            gpus_per_replica=_pos_int(_need(doc, "gpus_per_replica"), "gpus_per_replica"),
            tensor_parallel=_pos_int(_need(doc, "tensor_parallel"), "tensor_parallel"),
            kv_bytes_per_token=_pos_int(
                _need(kv, "bytes_per_token", "kv_cache."), "kv_cache.bytes_per_token"
            ),
            kv_capacity_tokens=_pos_int(
                _need(kv, "capacity_tokens", "kv_cache."), "kv_cache.capacity_tokens"
            ),
            max_num_seqs=_pos_int(_need(doc, "max_num_seqs"), "max_num_seqs"),
            max_num_batched_tokens=_pos_int(_need(doc, "max_num_batched_tokens"), "max_num_batched_tokens"),
            prefill_tokens=ptok,
            prefill_s=_seconds(_need(pre, "seconds", "prefill."), "prefill.seconds", len(ptok)),
            chunk_budget=budget,
            chunk_prior=prior,
            chunk_s=_table(
                _need(ch, "seconds", "chunked_prefill."), "chunked_prefill.seconds", len(budget), len(prior)
            ),
            decode_batch=batch,
            decode_context=ctx,
            decode_s=dsec,
            source=dict(doc.get("source") or {}),
            checks=dict(doc.get("checks") or {}),
            header="\n".join(line for line in text.splitlines() if line.startswith("#")),
        )
    except ProfileError as exc:
        raise ProfileError(f"{origin}: {exc}") from None
    return p


def shipped_names() -> list[str]:
    """The profiles in the package (`toposcale/serving/profiles/*.yaml`)."""
    folder = resources.files(__package__).joinpath("profiles")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`h100-tp1`) or a profile file by path; ProfileError otherwise."""
    s = str(name_or_path)
    if s in shipped_names():
        text = resources.files(__package__).joinpath("profiles", f"{s}.yaml").read_text(encoding="utf-8")
        return parse_profile(text, f"profile {s}")
    path = Path(s)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"profile {s}: {exc.strerror or exc}") from None
        return parse_profile(text, f"profile {s}")
    raise ProfileError(
        f"unknown profile {s!r}; shipped: {', '.join(shipped_names())}, or a path to a .yaml file"
    )
