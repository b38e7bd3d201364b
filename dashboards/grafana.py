"""Grafana dashboard JSON builders: panels, targets, template variables, import metadata.

Pure functions over plain dicts (no I/O), so the generator and the tests build exactly the same documents.
The JSON follows what Grafana writes for "Export -> Export for sharing externally": `__inputs` with a
`DS_PROMETHEUS` datasource input, `__requires` listing Grafana, the Prometheus datasource and each panel type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The last schema version of Grafana's v1 dashboard API (grafana/grafana apps/dashboard/pkg/migration/
# schemaversion: "Schema version 42 is the final version for the v1 dashboard API"). Older Grafana versions
# load a newer schemaVersion unchanged: their migrator only runs steps above the stored version.
SCHEMA_VERSION = 42
GRAFANA_VERSION = "11.0.0"  # oldest Grafana whose panel options these dashboards use (status-history, stat)

DS_INPUT = "DS_PROMETHEUS"
# Every panel and variable points at the `datasource` variable; its default is the import-time input, so
# "Dashboards > Import" asks for a Prometheus once and a user can still switch datasource later.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

PANEL_NAMES = {
    "timeseries": "Time series",
    "stat": "Stat",
    "table": "Table",
    "status-history": "Status history",
    "bargauge": "Bar gauge",
    "text": "Text",
}


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False  # format "table": one row per series, for table panels

    def to_json(self, ref_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
            "refId": ref_id,
        }
        if self.table:
            out["format"] = "table"
        return out


@dataclass
class Panel:
    """A panel before layout: the grid position and id are assigned by `layout`."""

    type: str
    title: str
    targets: Sequence[Target]
    description: str = ""
    unit: str = "short"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    stack: bool = False
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),)
    options: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "unit": self.unit,
            "color": {"mode": "palette-classic" if self.type == "timeseries" else "thresholds"},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": color, "value": value} for value, color in self.thresholds],
            },
            "mappings": [],
        }
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.type == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 20 if self.stack else 10,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if self.stack else "none"},
            }
        panel: dict[str, Any] = {
            "id": panel_id,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": _default_options(self.type) | self.options,
            "targets": [t.to_json(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }
        if self.transformations:
            panel["transformations"] = self.transformations
        return panel


def _default_options(panel_type: str) -> dict[str, Any]:
    if panel_type == "timeseries":
        return {
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if panel_type == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    if panel_type == "status-history":
        return {
            "showValue": "never",
            "rowHeight": 0.9,
            "colWidth": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        }
    if panel_type == "table":
        return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
    if panel_type == "bargauge":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        }
    return {}


@dataclass(frozen=True)
class Row:
    title: str
    panels: Sequence[Panel]
    collapsed: bool = False


def layout(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Assign ids and grid positions: each row header spans the width, its panels flow left to right."""
    out: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows:
        out.append({
            "id": next_id, "type": "row", "title": row.title, "collapsed": row.collapsed,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": [],
        })
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                y += line_height
                x, line_height = 0, 0
            out.append(panel.to_json(next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


@dataclass(frozen=True)
class Variable:
    """A query template variable: `label_values(<metric selector>, <label>)`."""

    name: str
    label: str
    metric: str  # a selector; may reference earlier variables: 'up{namespace=~"$namespace"}'
    label_name: str
    multi: bool = True
    include_all: bool = True

    @property
    def query(self) -> str:
        return f"label_values({self.metric}, {self.label_name})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": self.query,
            "query": {"qryType": 1, "query": self.query,
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,  # on time range change: pods come and go with autoscaling
            "regex": "",
            "sort": 1,
            "multi": self.multi,
            "includeAll": self.include_all,
            "allValue": ".*" if self.include_all else None,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if self.include_all else {},
            "options": [],
            "hide": 0,
            "skipUrlSync": False,
        }


@dataclass(frozen=True)
class CustomVariable:
    """A fixed list of values (a number a query compares against), single-select."""

    name: str
    label: str
    values: Sequence[str]
    default: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": "custom",
            "query": ",".join(self.values),
            "current": {"selected": True, "text": self.default, "value": self.default},
            "options": [{"selected": v == self.default, "text": v, "value": v} for v in self.values],
            "multi": False,
            "includeAll": False,
            "hide": 0,
            "skipUrlSync": False,
        }


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "${" + DS_INPUT + "}", "value": "${" + DS_INPUT + "}"},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def dashboard(
    *, uid: str, title: str, description: str, tags: Sequence[str],
    variables: Sequence[Variable | CustomVariable],
    rows: Sequence[Row], links: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    panels = layout(rows)
    panel_types = sorted({p["type"] for p in panels if p["type"] != "row"})
    return {
        "__inputs": [{
            "name": DS_INPUT,
            "label": "Prometheus",
            "description": "Prometheus scraping vLLM, the DCGM exporter, kube-state-metrics and toposcale",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": t, "name": PANEL_NAMES[t], "version": ""} for t in panel_types),
        ],
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # shared crosshair: line up a queue spike with the scale-out it caused
        "id": None,
        "links": list(links),
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(tags),
        "templating": {"list": [datasource_variable(), *(v.to_json() for v in variables)]},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def dashboard_links(tag: str = "toposcale") -> list[dict[str, Any]]:
    """A drop-down to the other toposcale dashboards, carrying the time range and variables over."""
    return [{
        "title": "toposcale", "type": "dashboards", "tags": [tag], "asDropdown": True,
        "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
        "tooltip": "", "url": "",
    }]
