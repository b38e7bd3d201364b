"""The committed dashboards are what the code generates, and they import cleanly into Grafana."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from dashboards import generate, grafana

from .conftest import ALL_DASHBOARDS, DASHBOARD_DIR, ROOT, label_values_args, panels, queries

# The uids are a contract: links, bookmarks, deploy/'s ConfigMaps and the README images use them.
EXPECTED_UIDS = {
    "gpu-fleet": "toposcale-gpu-fleet",
    "llm-serving": "toposcale-llm-serving",
    "autoscaling-placement": "toposcale-autoscaling",
}
REQUIRED_VARIABLES = {
    "gpu-fleet": {"datasource", "node", "gpu", "replica_gpus"},
    "llm-serving": {"datasource", "namespace", "model_name", "pod"},
    "autoscaling-placement": {"datasource", "namespace", "hpa", "node"},  # node: the agents (deploy/monitors)
}


def test_committed_json_is_what_the_code_generates() -> None:
    result = subprocess.run([sys.executable, "-m", "dashboards.generate", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_check_mode_reports_a_hand_edited_file(tmp_path: Path) -> None:
    assert generate.main(["--out-dir", str(tmp_path)]) == 0
    edited = tmp_path / "llm-serving.json"
    edited.write_text(edited.read_text().replace("vllm:num_requests_waiting", "vllm:num_requests_waitin"))
    assert generate.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert generate.main(["--out-dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out-dir", str(tmp_path)]) == 0


def test_the_generator_runs_on_the_pinned_sdk() -> None:
    # The committed JSON carries the SDK's defaults, so another SDK build regenerates different files: name
    # that cause here rather than leave a bare --check failure. The pin is exact (dashboards/README.md).
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [pin] = [Requirement(r) for r in extras["dashboards"]]
    assert pin.name == "grafana-foundation-sdk" and str(pin.specifier).startswith("==")
    assert version(pin.name) in pin.specifier, f"installed {version(pin.name)}, pinned {pin.specifier}: " \
        "run .venv/bin/pip install -e '.[test]'"
    assert "toposcale[dashboards]" in extras["test"]


def test_the_dashboard_body_is_the_sdk_model(dash: dict[str, Any]) -> None:
    # Grafana's SDK reads each committed dashboard back field for field, so everything below the export
    # metadata is the SDK's typed model; the parts written by hand are the ones dashboards/README.md lists.
    export_metadata = {"__inputs", "__elements", "__requires", "id"}
    body = {k: v for k, v in dash.items() if k not in export_metadata}
    back = json.loads(json.dumps(grafana.models.Dashboard.from_json(body), cls=grafana.JSONEncoder))
    # from_json gives every link and annotation the SDK's one placement, which the generator removes
    for item in [*back["links"], *back["annotations"]["list"]]:
        assert item.pop("placement") == "inControlsMenu"
    assert back == body
    assert set(dash) - set(body) == export_metadata and dash["id"] is None


def test_one_file_per_dashboard_with_stable_uids() -> None:
    assert {name: d["uid"] for name, d in ALL_DASHBOARDS.items()} == EXPECTED_UIDS
    assert set(generate.DASHBOARDS) == set(EXPECTED_UIDS)
    for name in EXPECTED_UIDS:
        assert (DASHBOARD_DIR / f"{name}.json").is_file()


def test_import_metadata(dash: dict[str, Any]) -> None:
    assert len(dash["uid"]) <= 40 and re.fullmatch(r"[a-zA-Z0-9_-]+", dash["uid"])
    assert dash["id"] is None, "an exported dashboard carries no database id"
    assert dash["schemaVersion"] == grafana.SCHEMA_VERSION >= 39
    [ds_input] = dash["__inputs"]
    assert ds_input == {**ds_input, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    requires = {(r["type"], r["id"]) for r in dash["__requires"]}
    used_panel_types = {p["type"] for p in panels(dash)} - {"row"}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= requires
    assert {i for t, i in requires if t == "panel"} == used_panel_types


def test_datasource_is_chosen_at_import_and_switchable(dash: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "${DS_PROMETHEUS}"
    # Import replaces ${DS_PROMETHEUS}; everything else must follow the variable, never a fixed uid.
    text = json.dumps(dash)
    assert text.count("${DS_PROMETHEUS}") == 2  # the variable's current text and value
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_template_variables(dash: dict[str, Any]) -> None:
    name = next(n for n, d in ALL_DASHBOARDS.items() if d is dash)
    variables = [v["name"] for v in dash["templating"]["list"]]
    assert set(variables) == REQUIRED_VARIABLES[name]
    assert variables[0] == "datasource"
    defined: set[str] = {"datasource"}
    for var in dash["templating"]["list"][1:]:
        if var["type"] == "custom":
            assert var["current"]["value"] in var["query"].split(",")
            assert [o["value"] for o in var["options"]] == var["query"].split(",")
            defined.add(var["name"])
            continue
        query = var["query"]["query"]
        assert var["definition"] == query
        selector, _ = label_values_args(query)
        # a variable may only refer to variables defined before it (Grafana resolves them in order)
        assert set(re.findall(r"\$(\w+)", selector)) <= defined, var["name"]
        assert var["includeAll"] and var["allValue"] == ".*"
        defined.add(var["name"])
    used = {m for q in queries(dash) for m in re.findall(r"\$(?!__)(\w+)", q.expr)}
    assert used <= defined, f"undefined variables: {used - defined}"
    # every filter variable is applied somewhere, or it would be a control that does nothing
    assert defined - {"datasource"} <= used


def test_panels_fit_the_grid_without_overlap(dash: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_every_panel_is_explained_by_title_and_unit(dash: dict[str, Any]) -> None:
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["title"].strip()
        assert panel["fieldConfig"]["defaults"]["unit"]


@pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))
def test_vllm_generations_are_both_read(name: str) -> None:
    text = json.dumps(ALL_DASHBOARDS[name])
    if "vllm:kv_cache_usage_perc" in text:
        assert "vllm:gpu_cache_usage_perc" in text
    if "vllm:inter_token_latency_seconds" in text:
        assert "vllm:time_per_output_token_seconds" in text
