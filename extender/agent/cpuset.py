"""CPU sets as Linux prints them (`0-51,104-155`) and as NVML hands them out (64-bit bitmask words). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def from_mask_words(words: Sequence[int], bits_per_word: int = 64) -> list[int]:
    """CPU ids set in an NVML affinity mask (`nvmlDeviceGetCpuAffinity`: word k holds CPUs 64k..64k+63)."""
    cpus = []
    for k, word in enumerate(words):
        word = int(word)
        bit = 0
        while word:
            if word & 1:
                cpus.append(k * bits_per_word + bit)
            word >>= 1
            bit += 1
    return cpus


def format_cpuset(cpus: Iterable[int]) -> str:
    """`[0,1,2,5]` -> `0-2,5`; empty input -> empty string."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²", which int() then refuses


def parse_cpuset(text: str) -> list[int]:
    """`0-2,5` -> `[0,1,2,5]`. Raises ValueError on anything that is not a cpuset list."""
    cpus: list[int] = []
    text = text.strip()
    if not text:
        return cpus
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not _digits(lo) or (sep and not _digits(hi)):
            raise ValueError(f"not a cpuset: {text!r}")
        start, end = int(lo), int(hi) if sep else int(lo)
        if end < start:
            raise ValueError(f"not a cpuset (range {part!r} runs backwards): {text!r}")
        cpus.extend(range(start, end + 1))
    return sorted(set(cpus))
