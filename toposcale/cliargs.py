"""argparse value types shared by the subcommands: a bad value is an argparse error (exit 2), not a
traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def finite_number(*, allow_zero: bool = False, unit: str = "number") -> Callable[[str], float]:
    """A finite float above 0 (or >= 0 with `allow_zero`): `nan` or `inf` as a duration would never end."""
    bound = "0 or above" if allow_zero else "above 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {unit}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite {unit} {bound}")
        return value

    return parse
