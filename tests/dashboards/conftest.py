"""Shared pieces of the dashboard tests: the committed dashboards and their PromQL, variables substituted.

The tests read the committed JSON files (what users import and what deploy/ ships), not the builders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))

# Grafana's built-in interval macros: a window a few scrapes wide, as Grafana's $__rate_interval would be.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@dataclass(frozen=True)
class Query:
    dashboard: str  # uid
    where: str  # panel title + refId, or "variable <name>"
    expr: str  # as written in the dashboard, with $variables


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def label_values_args(query: str) -> tuple[str, str]:
    """Split Grafana's `label_values(<selector>, <label>)` into selector and label."""
    m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
    assert m, f"not a label_values() query: {query}"
    return m.group(1), m.group(2)


def queries(dash: dict[str, Any]) -> list[Query]:
    out = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            out.append(Query(dash["uid"], f"{panel['title']!r} {target['refId']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            selector, _ = label_values_args(var["query"]["query"])
            out.append(Query(dash["uid"], f"variable {var['name']}", selector))
    return out


def query_variables(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dash["templating"]["list"] if v["type"] == "query"]


def grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus datasource escapes a single selected value before `=~` interpolation."""
    return re.sub(r"([\\^$*+?.()|\[\]{}])", r"\\\\\1", value)


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables: each named one with its (escaped) value, a custom (fixed-list) variable with
    its default, any other with `.*` (the "All" option)."""
    values = {**CUSTOM_DEFAULTS, **(values or {})}
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return grafana_regex_escape(values[name]) if name in values else ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


ALL_DASHBOARDS = {path.stem: load(path) for path in DASHBOARD_FILES}
CUSTOM_DEFAULTS = {v["name"]: v["current"]["value"] for d in ALL_DASHBOARDS.values()
                   for v in d["templating"]["list"] if v["type"] == "custom"}
ALL_QUERIES = [q for dash in ALL_DASHBOARDS.values() for q in queries(dash)]


@pytest.fixture(params=sorted(ALL_DASHBOARDS), ids=sorted(ALL_DASHBOARDS))
def dash(request: pytest.FixtureRequest) -> dict[str, Any]:
    return ALL_DASHBOARDS[request.param]
