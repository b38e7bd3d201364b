"""The adapter's modules import one another without a circle: the value service (values.py) under
the three wires (api.py, custom.py, keda/scaler.py), the documents (wire/) under those, the sources under the
value service. Every import counts, those inside functions and under TYPE_CHECKING too: a circle hidden in a
function is still one a reader has to untangle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "adapter"
PACKAGE = "toposcale.adapter"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ADAPTER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ADAPTER.rglob("*.py")) if "_pb2" not in p.name}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The adapter modules `name` imports (a package's own modules count as its package's too)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the module itself and every package above it within the adapter (their __init__ runs first)
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known and candidate != name and candidate != PACKAGE:
                    found.add(candidate)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_adapter_has_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_checker_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_wires_share_the_value_service() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    for wire in ("api", "custom", "keda.scaler"):
        assert f"{PACKAGE}.values" in graph[f"{PACKAGE}.{wire}"], wire
    assert not graph[f"{PACKAGE}.values"] & {f"{PACKAGE}.api", f"{PACKAGE}.custom", f"{PACKAGE}.keda.scaler"}
