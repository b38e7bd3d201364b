"""argparse value types shared by the subcommands: a bad value is an argparse error (exit 2), not a
traceback."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path


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


def output_problem(path: str | os.PathLike[str], flag: str) -> str | None:
    """Why `path` (an output file a run writes at its end) cannot be written, or None. Checked before the run
    starts: a figure path with a missing folder must not cost a 95-second run and then a traceback."""
    p = Path(path)
    if p.is_dir():
        return f"{flag} {path}: is a folder, expected a file name"
    folder = p.resolve().parent
    if not folder.is_dir():
        return f"cannot write {path} ({flag}): {folder} is not a folder"
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return f"cannot write {path} ({flag}): permission denied"
    return None


def plot_problem(flag: str = "--plot") -> str | None:
    """Why a figure cannot be drawn here, or None. matplotlib (with numpy, Pillow and fontTools, about
    130 MB) is the `plot` extra, not a dependency: the services and the container image never draw."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"{flag} needs matplotlib, which is not installed: pip install 'toposcale[plot]'"
    return None
