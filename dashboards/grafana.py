"""The house style of the toposcale dashboards on Grafana's own typed builders (grafana-foundation-sdk).

Each helper returns an SDK builder already set up the way all three dashboards look (legend, tooltip, colour
mode, thresholds, datasource); the dashboard modules chain further SDK calls where a panel differs. Pure (no
I/O), so the generator and the tests build exactly the same documents.

Written here by hand, and dashboards/README.md says why: the import metadata of Grafana's "Export for sharing
externally" (`__inputs` with a `DS_PROMETHEUS` datasource input, `__requires`, `__elements`, `"id": null`),
which wraps a dashboard rather than being part of its schema; unsetting the `placement` the SDK forces on
links and annotations; panel ids, numbered after the SDK's layout. Rows stay expanded: panels go to the
dashboard after their row (the SDK's `Row.with_panel` would collapse the row).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

# The v1 dashboard modules warn on import "Prefer using dashboardv2.Dashboard instead". v2 is a Grafana 12
# resource that Grafana 11 cannot import; these dashboards stay v1 (schemaVersion 42) on purpose, so the
# warning is silenced here, for these imports only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statushistory, table, timeseries
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as builders
    from grafana_foundation_sdk.cog.builder import Builder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as models
    from grafana_foundation_sdk.models import prometheus as prom_models

# The SDK's default: the last schema version of Grafana's v1 dashboard API ("Schema version 42 is the final
# version for the v1 dashboard API"). Older Grafana versions load a newer schemaVersion unchanged: their
# migrator only runs steps above the stored version.
SCHEMA_VERSION: int = models.Dashboard().schema_version
GRAFANA_VERSION = "11.0.0"  # oldest Grafana whose panel options these dashboards use (status-history, stat)

DS_INPUT = "DS_PROMETHEUS"
# Every panel and variable points at the `datasource` variable; its default is the import-time input, so
# "Dashboards > Import" asks for a Prometheus once and a user can still switch datasource later.
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

# `__requires` names each panel plugin as Grafana's exporter does
PANEL_NAMES = {
    "timeseries": "Time series",
    "stat": "Stat",
    "table": "Table",
    "status-history": "Status history",
    "bargauge": "Bar gauge",
}

Steps = Sequence[tuple[float | None, str]]  # (lower bound, colour); the first bound is None (-Infinity)
GREEN: Steps = ((None, "green"),)


def query(expr: str, legend: str = "", *, instant: bool = False, table_format: bool = False
          ) -> prometheus.Dataquery:
    """One PromQL target; its refId is set when a panel helper adds it (A, B, ... in order)."""
    target = (prometheus.Dataquery().datasource(DATASOURCE).editor_mode(prom_models.QueryEditorMode.CODE)
              .expr(expr).legend_format(legend or "__auto"))
    if instant:  # the builder sets `range` and `instant` together
        target.instant()
    else:
        target.range()
    if table_format:  # one row per series, for table panels
        target.format(prom_models.PromQueryFormat.TABLE)
    return target


def thresholds(steps: Steps) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(
        [models.Threshold(value=value, color=color) for value, color in steps])


P = TypeVar("P", timeseries.Panel, stat.Panel, table.Panel, statushistory.Panel, bargauge.Panel)


def _common(
    panel: P, title: str, targets: Sequence[prometheus.Dataquery], *, description: str, unit: str,
    width: int, height: int, min_value: float | None, max_value: float | None, decimals: int | None,
    steps: Steps, color: models.FieldColorModeId,
) -> P:
    panel.title(title).description(description).datasource(DATASOURCE).span(width).height(height)
    for i, target in enumerate(targets):
        panel.with_target(target.ref_id(chr(ord("A") + i)))
    panel.unit(unit).color_scheme(builders.FieldColor().mode(color)).thresholds(thresholds(steps)).mappings([])
    if min_value is not None:
        panel.min(min_value)
    if max_value is not None:
        panel.max(max_value)
    if decimals is not None:
        panel.decimals(decimals)
    return panel


def legend(mode: common.LegendDisplayMode, placement: common.LegendPlacement, calcs: Sequence[str] = ()
           ) -> common_builders.VizLegendOptions:
    return (common_builders.VizLegendOptions().display_mode(mode).placement(placement).show_legend(True)
            .calcs(list(calcs)))


def tooltip(mode: common.TooltipDisplayMode, sort: common.SortOrder) -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(mode).sort(sort)


def last_value() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries_panel(
    title: str, targets: Sequence[prometheus.Dataquery], *, description: str = "", unit: str = "short",
    width: int = 12, height: int = 8, min: float | None = None, max: float | None = None,
    decimals: int | None = None, stack: bool = False, steps: Steps = GREEN,
) -> timeseries.Panel:
    """Lines with a table legend on the right (last, max) and a shared tooltip sorted high to low."""
    panel = _common(timeseries.Panel(), title, targets, description=description, unit=unit, width=width,
                    height=height, min_value=min, max_value=max, decimals=decimals, steps=steps,
                    color=models.FieldColorModeId.PALETTE_CLASSIC)
    return (panel.draw_style(common.GraphDrawStyle.LINE).line_width(1).fill_opacity(20 if stack else 10)
            .show_points(common.VisibilityMode.NEVER).span_nulls(False)
            .stacking(common_builders.StackingConfig().group("A")
                      .mode(common.StackingMode.NORMAL if stack else common.StackingMode.NONE))
            .legend(legend(common.LegendDisplayMode.TABLE, common.LegendPlacement.RIGHT,
                           ["lastNotNull", "max"]))
            .tooltip(tooltip(common.TooltipDisplayMode.MULTI, common.SortOrder.DESCENDING)))


def stat_panel(
    title: str, targets: Sequence[prometheus.Dataquery], *, description: str = "", unit: str = "short",
    width: int = 4, height: int = 4, min: float | None = None, max: float | None = None,
    decimals: int | None = None, steps: Steps = GREEN,
) -> stat.Panel:
    """The last value, coloured by the thresholds, over a sparkline."""
    panel = _common(stat.Panel(), title, targets, description=description, unit=unit, width=width,
                    height=height, min_value=min, max_value=max, decimals=decimals, steps=steps,
                    color=models.FieldColorModeId.THRESHOLDS)
    return (panel.reduce_options(last_value()).color_mode(common.BigValueColorMode.VALUE)
            .graph_mode(common.BigValueGraphMode.AREA).text_mode(common.BigValueTextMode.AUTO)
            .justify_mode(common.BigValueJustifyMode.AUTO).orientation(common.VizOrientation.AUTO))


def table_panel(
    title: str, targets: Sequence[prometheus.Dataquery], *, description: str = "", unit: str = "short",
    width: int = 12, height: int = 8,
) -> table.Panel:
    panel = _common(table.Panel(), title, targets, description=description, unit=unit, width=width,
                    height=height, min_value=None, max_value=None, decimals=None, steps=GREEN,
                    color=models.FieldColorModeId.THRESHOLDS)
    return (panel.show_header(True).cell_height(common.TableCellHeight.SM)
            .footer(common_builders.TableFooterOptions().show(False).reducer(["sum"])))


def status_history_panel(
    title: str, targets: Sequence[prometheus.Dataquery], *, description: str = "", unit: str = "short",
    width: int = 24, height: int = 10, min: float | None = None, max: float | None = None,
    steps: Steps = GREEN,
) -> statushistory.Panel:
    """One coloured row per series: the thresholds are the colour scale."""
    panel = _common(statushistory.Panel(), title, targets, description=description, unit=unit, width=width,
                    height=height, min_value=min, max_value=max, decimals=None, steps=steps,
                    color=models.FieldColorModeId.THRESHOLDS)
    return (panel.show_value(common.VisibilityMode.NEVER).row_height(0.9).col_width(0.9)
            .legend(legend(common.LegendDisplayMode.LIST, common.LegendPlacement.BOTTOM))
            .tooltip(tooltip(common.TooltipDisplayMode.SINGLE, common.SortOrder.NONE)))


def bargauge_panel(
    title: str, targets: Sequence[prometheus.Dataquery], *, description: str = "", unit: str = "short",
    width: int = 12, height: int = 8, min: float | None = None, decimals: int | None = None,
    steps: Steps = GREEN,
) -> bargauge.Panel:
    """Horizontal bars, one per series, of its last value."""
    panel = _common(bargauge.Panel(), title, targets, description=description, unit=unit, width=width,
                    height=height, min_value=min, max_value=None, decimals=decimals, steps=steps,
                    color=models.FieldColorModeId.THRESHOLDS)
    return (panel.reduce_options(last_value()).orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT).show_unfilled(True))


def query_variable(name: str, label: str, selector: str, label_name: str) -> builders.QueryVariable:
    """`label_values(<selector>, <label>)`, multi-select with "All" (`.*`); the selector may reference
    earlier variables: 'up{namespace=~"$namespace"}'."""
    expr = f"label_values({selector}, {label_name})"
    return (builders.QueryVariable(name).label(label).datasource(DATASOURCE).definition(expr)
            .query({"qryType": 1, "query": expr, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)  # pods come and go with autoscaling
            .regex("").sort(models.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*")
            .current(models.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .options([]).hide(models.VariableHide.DONT_HIDE))


def custom_variable(name: str, label: str, values: Sequence[str], default: str) -> builders.CustomVariable:
    """A fixed list of values (a number a query compares against), single-select."""
    return (builders.CustomVariable(name).label(label).values(",".join(values))
            .current(models.VariableOption(selected=True, text=default, value=default))
            .options([models.VariableOption(selected=v == default, text=v, value=v) for v in values])
            .multi(False).include_all(False).hide(models.VariableHide.DONT_HIDE))


def datasource_variable() -> builders.DatasourceVariable:
    ds_input = "${" + DS_INPUT + "}"  # replaced by the datasource picked at import
    return (builders.DatasourceVariable("datasource").label("Data source").type("prometheus").regex("")
            .current(models.VariableOption(selected=False, text=ds_input, value=ds_input))
            .multi(False).include_all(False).hide(models.VariableHide.DONT_HIDE))


def dashboard_links(tag: str = "toposcale") -> list[builders.DashboardLink]:
    """A drop-down to the other toposcale dashboards, carrying the time range and variables over."""
    link = (builders.DashboardLink("toposcale").type(models.DashboardLinkType.DASHBOARDS).tags([tag])
            .as_dropdown(True).include_vars(True).keep_time(True).icon("external link").target_blank(False)
            .tooltip("").url(""))
    # The SDK sets every link's optional `placement` to its one allowed value, "inControlsMenu", which moves
    # the link from the dashboard's top bar into the controls menu (Grafana 12); the builder cannot unset it.
    link.build().placement = None  # type: ignore[assignment]
    return [link]


@dataclass(frozen=True)
class Row:
    """An expanded row: a full-width header, then its panels flowing left to right below it."""

    title: str
    panels: Sequence[Builder[models.Panel]]


def dashboard(
    *, uid: str, title: str, description: str, tags: Sequence[str],
    variables: Sequence[Builder[models.VariableModel]], rows: Sequence[Row],
    links: Sequence[builders.DashboardLink] = (),
) -> dict[str, Any]:
    """The dashboard as Grafana's "Export for sharing externally" writes it."""
    built_in = (builders.AnnotationQuery().built_in(1).datasource(common.DataSourceRef(
        type_val="grafana", uid="-- Grafana --")).enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
        .name("Annotations & Alerts").type("dashboard"))
    built_in.build().placement = None  # type: ignore[assignment]  # as for links: the SDK's only value
    # shared crosshair: line up a queue spike with the scale-out it caused
    board = (builders.Dashboard(title).uid(uid).description(description).tags(list(tags)).editable()
             .tooltip(models.DashboardCursorSync.CROSSHAIR)
             .time("now-3h", "now").timepicker(builders.TimePicker()).timezone("").week_start("")
             .fiscal_year_start_month(0).refresh("30s").version(1).annotation(built_in)
             .links(list(links)).with_variable(datasource_variable()))
    for variable in variables:
        board.with_variable(variable)
    # Rows are added to the dashboard, and their panels after them, not into Row.with_panel: that would
    # collapse the row. The SDK's layout then puts each row below the last and flows panels into the grid;
    # it starts a new line once one reaches 24 columns, not before a panel that does not fit, so a panel wider
    # than what is left of its line overflows the grid (test_panels_fit_the_grid_without_overlap fails).
    for row in rows:
        board.with_row(builders.Row(row.title).collapsed(False))
        for panel in row.panels:
            board.with_panel(panel)
    model = board.build()
    for panel_id, panel in enumerate(model.panels or [], start=1):
        panel.id_val = panel_id  # stable ids in layout order: panel links and Grafana's state use them
    doc: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    panel_types = sorted({p["type"] for p in doc["panels"] if p["type"] != "row"})
    return {
        # export metadata: not part of the dashboard schema, so not in the SDK (see the module docstring)
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
        "id": None,  # an exported dashboard has no database id; the SDK omits the key
        **doc,
    }
