"""The wheel ships the product and only the product: every package under toposcale/, adapter/ and extender/
is listed in pyproject (it lists packages explicitly), the laboratory (lab/), tests/ and benchmarks/ are not,
and no product module imports them."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTS = {
    "toposcale": ROOT / "toposcale",
    "toposcale.adapter": ROOT / "adapter",
    "toposcale.extender": ROOT / "extender",
}
NEVER_SHIPPED = ("lab", "tests", "benchmarks", "scripts", "dashboards")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(_setuptools()["packages"])
    found = set()
    for name, base in ROOTS.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_the_lab_tests_and_benchmarks_are_not_shipped() -> None:
    st = _setuptools()
    assert all(p == "toposcale" or p.startswith("toposcale.") for p in st["packages"]), st["packages"]
    assert set(st["package-dir"]) == set(ROOTS), st["package-dir"]
    shipped_dirs = {Path(d).parts[0] for d in st["package-dir"].values()}
    assert not shipped_dirs & set(NEVER_SHIPPED), shipped_dirs
    assert (ROOT / "lab" / "__init__.py").is_file(), "the laboratory is lab/ (lab/README.md)"


def _imported_tops(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_product_never_imports_the_lab_or_the_tests() -> None:
    bad = []
    for base in ROOTS.values():
        for path in sorted(base.rglob("*.py")):
            hit = _imported_tops(path) & set(NEVER_SHIPPED)
            if hit:
                bad.append(f"{path.relative_to(ROOT)}: {sorted(hit)}")
    assert bad == [], "the product imports what is not shipped:\n" + "\n".join(bad)


def test_the_demo_ships_copies_of_the_fixture_captures() -> None:
    """tests/fixtures/topologies is the one home of the topology captures; the demo's package data are
    verbatim copies of some of them."""
    shipped = sorted((ROOT / "toposcale" / "demo" / "topologies").glob("*.txt"))
    assert shipped
    for path in shipped:
        home = ROOT / "tests" / "fixtures" / "topologies" / path.name
        assert home.is_file() and home.read_bytes() == path.read_bytes(), path.name
