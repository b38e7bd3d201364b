"""scripts/profile_serving.py where there is no GPU: `--help` works, a run refuses with one line and exit 2.

The measurement itself needs a CUDA GPU (the shipped h100-tp1 profile was measured on one); CI has none, so
what is tested here is what a user without one meets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_serving.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_works_without_a_gpu() -> None:
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--out", "--gpu-memory-utilization", "--decode-batches", "--chunk-budgets"):
        assert flag in r.stdout


def test_without_cuda_it_refuses_with_one_line() -> None:
    r = run("--out", "/nonexistent/never-written.yaml")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("profile_serving.py: ")
    assert "PyTorch" in lines[0] or "CUDA" in lines[0]
    assert r.stdout == ""


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    r = run("--decode-batches", "1,x")
    assert r.returncode == 2
    assert "expected comma-separated integers" in r.stderr
    r = run("--gpu-memory-utilization", "1.5")
    assert r.returncode == 2
    assert "--gpu-memory-utilization" in r.stderr
