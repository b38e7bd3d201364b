"""The kit (toposcale/core) is the floor: it imports nothing of toposcale above it (topology, the services,
the apps), and `toposcale.core.ports` with its packages stays standard-library-only, because
scripts/kube.sh's lab imports it with the system python3, where no dependency is installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "toposcale" / "core"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("toposcale.core" if node.level else node.module or "")
    return names


def test_the_kit_imports_nothing_above_it() -> None:
    for path in sorted(CORE.glob("*.py")):
        above = {n for n in _imported(path) if n.split(".")[0] == "toposcale" and not
                 (n == "toposcale.core" or n.startswith("toposcale.core."))}
        assert not above, f"{path.relative_to(ROOT)} imports {sorted(above)}"


def test_ports_imports_with_the_standard_library_only() -> None:
    # -S: no site-packages, so any third-party import fails; -I: isolated from PYTHONPATH and the user site
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from toposcale.core.ports import free_port; free_port()")
    subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)], check=True, timeout=60)
