"""Predict which GPUs the NVIDIA device plugin hands a pod: go-gpuallocator's best-effort policy.

The scheduler picks a node; the kubelet then asks the device plugin (`GetPreferredAllocation`) which of the
node's free GPUs to give. For whole GPUs the NVIDIA plugin runs go-gpuallocator's best-effort policy
(gpuallocator/besteffort_policy.go), reproduced here:

- pair score: cross-socket SYS 10, NODE 20, PHB 30, PXB 40, PIX 50, same board 60, plus 100 per NVLink;
- set score: the sum of its pair scores;
- it splits *all* free GPUs into sets of the requested size (the remainder, if any, forms one short "padded"
  set), keeps the split with the highest total, and returns the highest-scoring set of that split.

Two facts decide how exact a prediction can be:

- The kubelet passes the free device IDs as `available.UnsortedList()` (Go map order), and the policy keeps
  the *first* best split and the *first* best set. So among equally good answers the pick is arbitrary. We
  therefore return every set the plugin may return (`candidates`): S is one exactly when some best split
  contains S and no set of that split scores higher than S (any such split can come first for some order).
- `nvidia-smi topo -m` prints `NV<n>` instead of the PCIe code for NVLinked pairs, so the PCIe part of their
  score is estimated: NODE (20) when both GPUs share a NUMA node (or, NUMA unknown, the same CPU affinity),
  else SYS (10). go-gpuallocator itself does not count NVSwitch links as NVLink (their remote end is the
  switch); counting `NV<n>` anyway adds the same constant to every split of a uniform NVSwitch box, so the
  predicted choice is the same as the plugin's.

A padded set is never returned (the Go code would hand back a nil device); when only such a split wins, the
best full sets of the best splits are returned instead. Beyond `EXACT_MAX_GPUS` free GPUs the exact search
is too large for a request path: sets grown greedily from each free GPU are scored and the best returned
(documented approximation).

API (pure, no I/O; sets are bitmasks over `topo.gpus` indices, bit i = gpus[i]):

    pair_score(topo, i, j) -> int
    set_score(topo, mask) -> int
    candidates(topo, free_mask, k) -> tuple[int, ...]   # sets the plugin may return, ascending
    mask_of(indices) / indices_of(mask)

Results are memoized per (topology fingerprint, free mask, k), bounded in size.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from .model import Topology, nvlink_count

__all__ = [
    "EXACT_MAX_GPUS",
    "PCIE_PAIR_SCORES",
    "Wiring",
    "candidates",
    "indices_of",
    "mask_of",
    "pair_score",
    "set_score",
    "wiring",
]

PCIE_PAIR_SCORES = {"SYS": 10, "NODE": 20, "PHB": 30, "PXB": 40, "PIX": 50}
NVLINK_POINTS = 100
EXACT_MAX_GPUS = 12
_MEMO_LIMIT = 200_000
_WIRINGS_LIMIT = 4096
_NEG = -(1 << 60)


def mask_of(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m


def indices_of(mask: int) -> tuple[int, ...]:
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return tuple(out)


def socket_keys(topo: Topology) -> tuple[object, ...]:
    """Per GPU, what says which socket it hangs off: its NUMA node, else its CPU affinity, else None."""
    keys: list[object] = []
    for g in topo.gpus:
        if g.numa >= 0:
            keys.append(("numa", g.numa))
        elif g.cpus:
            keys.append(("cpus", g.cpus))
        else:
            keys.append(None)
    return tuple(keys)


class Wiring:
    """Per-fingerprint precomputation and memo tables (shared by all nodes with the same wiring)."""

    __slots__ = ("_cand", "_f", "_set", "keys", "memo", "n", "pairs")

    def __init__(self, topo: Topology) -> None:
        self.n = len(topo)
        self.keys = socket_keys(topo)
        n = self.n
        self.pairs = [[0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i != j:
                    self.pairs[i][j] = self._pair(topo.links[i][j], i, j)
        self._set: dict[int, int] = {}
        self._f: dict[tuple[int, int, int], int] = {}
        self._cand: dict[tuple[int, int], tuple[int, ...]] = {}
        self.memo: dict[object, object] = {}  # for scoring.py, same lifetime as the wiring

    def _pair(self, code: str, i: int, j: int) -> int:
        if code in PCIE_PAIR_SCORES:
            return PCIE_PAIR_SCORES[code]
        links = nvlink_count(code)
        same = self.keys[i] is not None and self.keys[i] == self.keys[j]
        return (PCIE_PAIR_SCORES["NODE"] if same else PCIE_PAIR_SCORES["SYS"]) + NVLINK_POINTS * links

    def set_score(self, mask: int) -> int:
        s = self._set.get(mask)
        if s is None:
            if mask & (mask - 1) == 0:
                s = 0
            else:
                h = mask.bit_length() - 1
                rest = mask & ~(1 << h)
                row = self.pairs[h]
                s = self.set_score(rest) + sum(row[j] for j in indices_of(rest))
            if len(self._set) > _MEMO_LIMIT:
                self._set.clear()
            self._set[mask] = s
        return s

    def _best(self, mask: int, k: int, r: int, cap: int) -> int:
        """Best total over splits of `mask` into k-sets plus one r-set (r may be 0), every set <= cap."""
        if mask == 0:
            return 0
        key = (mask, k * 64 + r, cap)
        hit = self._f.get(key)
        if hit is not None:
            return hit
        count = mask.bit_count()
        best = _NEG
        if count == r:
            s = self.set_score(mask)
            best = s if s <= cap else _NEG
        else:
            low = mask & -mask
            others = indices_of(mask & ~low)
            # The lowest GPU is either in a full k-set or in the short r-set (when one is still to place).
            for size, next_r in ((k, r), (r, 0)):
                if size == 0 or size > count:
                    continue
                for combo in combinations(others, size - 1):
                    sub = mask_of(combo) | low
                    s = self.set_score(sub)
                    if s > cap:
                        continue
                    rest = self._best(mask & ~sub, k, next_r, cap)
                    if rest > _NEG and s + rest > best:
                        best = s + rest
        if len(self._f) > _MEMO_LIMIT:
            self._f.clear()
        self._f[key] = best
        return best

    def candidates(self, free: int, k: int) -> tuple[int, ...]:
        key = (free, k)
        hit = self._cand.get(key)
        if hit is not None:
            return hit
        count = free.bit_count()
        if k <= 0 or k > count:
            out: tuple[int, ...] = ()
        elif k == count:
            out = (free,)
        elif k == 1:
            out = tuple(1 << i for i in indices_of(free))
        elif count > EXACT_MAX_GPUS:
            out = self._greedy(free, k)
        else:
            out = self._exact(free, k)
        if len(self._cand) > _MEMO_LIMIT:
            self._cand.clear()
        self._cand[key] = out
        return out

    def _exact(self, free: int, k: int) -> tuple[int, ...]:
        r = free.bit_count() % k
        unbounded = 1 << 60
        top = self._best(free, k, r, unbounded)
        found = []
        for combo in combinations(indices_of(free), k):
            s_mask = mask_of(combo)
            s = self.set_score(s_mask)
            rest = self._best(free & ~s_mask, k, r, s)
            if rest > _NEG and s + rest == top:
                found.append(s_mask)
        if not found:
            # Only splits whose short padded set outscores every full set win; the Go code would return the
            # padded set. Fall back to the best full sets of the best splits.
            for combo in combinations(indices_of(free), k):
                s_mask = mask_of(combo)
                rest = self._best(free & ~s_mask, k, r, unbounded)
                if rest > _NEG and self.set_score(s_mask) + rest == top:
                    found.append(s_mask)
            if found:
                hi = max(self.set_score(m) for m in found)
                found = [m for m in found if self.set_score(m) == hi]
        return tuple(sorted(found))

    def grow(self, start: int, pool: int, k: int) -> int:
        """A k-set grown from GPU `start` inside `pool`, adding the GPU with the highest summed pair score
        to the set each time (ties: lowest index). Polynomial: used where exact search is too large."""
        chosen = [start]
        left = [i for i in indices_of(pool) if i != start]
        while len(chosen) < k and left:
            best_j, best_s = left[0], -1
            for j in left:
                row = self.pairs[j]
                sc = sum(row[c] for c in chosen)
                if sc > best_s:
                    best_j, best_s = j, sc
            chosen.append(best_j)
            left.remove(best_j)
        return mask_of(chosen)

    def _greedy(self, free: int, k: int) -> tuple[int, ...]:
        best = _NEG
        found: set[int] = set()
        for start in indices_of(free):
            m = self.grow(start, free, k)
            sc = self.set_score(m)
            if sc > best:
                best, found = sc, {m}
            elif sc == best:
                found.add(m)
        return tuple(sorted(found))


_wirings: dict[str, Wiring] = {}


def wiring(topo: Topology) -> Wiring:
    """The shared precomputation for this topology's wiring (one per fingerprint, bounded)."""
    w = _wirings.get(topo.fingerprint)
    if w is None:
        if len(_wirings) >= _WIRINGS_LIMIT:
            _wirings.clear()
        w = _wirings[topo.fingerprint] = Wiring(topo)
    return w


def pair_score(topo: Topology, i: int, j: int) -> int:
    return wiring(topo).pairs[i][j]


def set_score(topo: Topology, mask: int) -> int:
    return wiring(topo).set_score(mask)


def candidates(topo: Topology, free_mask: int, k: int) -> tuple[int, ...]:
    """Every k-set of free GPUs the device plugin may hand out (ascending masks; empty when k > free)."""
    return wiring(topo).candidates(free_mask, k)
