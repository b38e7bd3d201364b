"""What the READMEs and `--help` tell a new user stays true and readable: no references to a tracker users
cannot see, no command that overwrites a committed file, the extra a command needs named beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toposcale.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(p for p in ROOT.rglob("*.md") if not {".venv", ".git", "node_modules"} & set(p.parts))


def _text(path: Path) -> str:
    return " ".join(path.read_text().split())  # sentences wrap across lines


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_the_project_tracker(path: Path) -> None:
    text = _text(path)
    assert not re.search(r"\b[Ii]ssues? \d+|\bthe issue\b|\bissue's\b", text), path


def test_no_sentence_says_the_tests_have_no_api_server() -> None:
    """The suite runs a real control plane (lab/kube/cluster.py): no README, doc or test says otherwise."""
    said = re.compile(
        r"\b[Nn]o kube-apiserver (exists|here|on (the |these )?(test )?machines)|[Tt]here is no kube-api"
    )
    code = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "lab").rglob("*.py"))
    hits = [p for p in [*DOCS, *code] if p != Path(__file__).resolve() and said.search(_text(p))]
    assert hits == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_command_never_writes_over_a_committed_image(path: Path) -> None:
    for line in path.read_text().splitlines():
        assert not re.search(r"--(plot|summary-json)[ =]docs/", line), f"{path}: {line}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plot_command_says_it_needs_the_plot_extra(path: Path) -> None:
    text = path.read_text()
    if re.search(r"^toposcale (simulate|demo) .*--plot ", text, re.M):
        assert "[plot]" in text, f"{path}: --plot needs `pip install -e '.[plot]'`"


def test_readme_timings_say_what_they_count() -> None:
    text = _text(ROOT / "README.md")
    # "about 1,600 tests, 10.5 of them" read as 10.5 tests: a share of minutes says what it counts
    assert not re.search(r"tests, [\d.]+ of them\b", text)
    assert re.search(r"[\d.]+ minutes, [\d.]+ of them in pytest", text)


def test_dashboards_readme_names_one_minimum_grafana_version() -> None:
    text = _text(ROOT / "dashboards" / "README.md")
    minimums = set(
        re.findall(r"Grafana (\d+)(?:\.0)?\+|Grafana (\d+)(?:\.0)? or newer|from (?:Grafana )?(\d+)\.0", text)
    )
    assert {next(v for v in m if v) for m in minimums} == {"11"}, minimums
    assert "older Grafana versions load it as is" not in text


def test_top_level_help_describes_the_program_not_the_module() -> None:
    parser = build_parser()
    assert parser.description is not None
    assert "`" not in parser.description and "console script" not in parser.description
    assert "Kubernetes" in parser.description


def test_simulate_help_names_the_default_policies() -> None:
    parser = build_parser()
    sim = next(a for a in parser._actions if a.dest == "command").choices["simulate"]
    policies = next(a for a in sim._actions if "--policies" in a.option_strings)
    assert policies.help is not None and "random (the default)" not in policies.help
    assert f"(default {','.join(policies.default)})" in policies.help
