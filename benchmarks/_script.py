"""`python benchmarks/bench_x.py` runs exactly `python -m benchmarks.bench_x` (the checkout on PYTHONPATH), so
a benchmark imports `lab` and its sibling modules as packages, with no sys.path edits of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def as_module(file: str) -> None:
    """Replace this process by `python -m benchmarks.<stem> <same arguments>`; never returns."""
    path = Path(file).resolve()
    root = str(path.parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", f"benchmarks.{path.stem}", *sys.argv[1:]]
    os.execve(sys.executable, argv, {**os.environ, "PYTHONPATH": pythonpath})
