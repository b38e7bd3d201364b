"""Every subcommand's parser, walked: no abbreviated flags (`--scrape-target` is not `--scrape-targets`), a
help text on every option, and every default shown in `--help` (issue 19, item 12). A new option without
help fails here, not in a user's terminal."""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

import pytest

from toposcale import cli
from toposcale.cli import EXIT_BROKEN_INSTALL, build_parser, has_default, main

ROOT = Path(__file__).resolve().parent.parent


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = _subparsers()


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_no_abbreviations(name: str) -> None:
    parser = SUBCOMMANDS[name]
    assert parser.allow_abbrev is False
    for action in _options(parser):
        flag = max(action.option_strings, key=len)
        if len(flag) > 4:
            with pytest.raises(SystemExit):
                parser.parse_args([flag[:-1], "1"] if action.nargs != 0 else [flag[:-1]])


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    parser = SUBCOMMANDS[name]
    formatter = parser._get_formatter()
    for action in _options(parser):
        flag = max(action.option_strings, key=len)
        assert action.help, f"toposcale {name} {flag}: no help text"
        if action.nargs != 0 and has_default(action):
            shown = formatter._expand_help(action)
            assert "default" in shown.lower(), f"toposcale {name} {flag}: {action.default!r} not shown"


def test_an_abbreviated_flag_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["adapter", "--scrape-target", "targets.yaml"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --scrape-target" in capsys.readouterr().err


def test_every_parser_in_the_repository_refuses_abbreviations() -> None:
    # Scripts, benchmarks and generators too: each ArgumentParser(...) call passes allow_abbrev=False.
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    calls = []
    for rel in files:
        path = ROOT / rel
        if rel.startswith("tests/") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if "ArgumentParser(" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            func = getattr(node, "func", None)
            name = getattr(func, "attr", getattr(func, "id", ""))
            if isinstance(node, ast.Call) and name == "ArgumentParser":
                ok = any(k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant)
                         and k.value.value is False for k in node.keywords)
                calls.append((rel, node.lineno, ok))
    assert len(calls) >= 5 and [c for c in calls if not c[2]] == []


def test_help_shows_the_defaults() -> None:
    adapter = " ".join(SUBCOMMANDS["adapter"].format_help().split())
    assert "scrape-max-body-bytes" in adapter and "(default 8388608 = 8 MiB)" in adapter
    assert "(default 10.0)" in adapter  # --request-timeout: shown by the formatter
    demo = " ".join(SUBCOMMANDS["demo"].format_help().split())
    assert "tie-breaks (default 0)" in demo


TOPOSCALE = str(Path(__import__("sys").executable).parent / "toposcale")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["simulate", "--fleet", "/nonexistent"], "fleet: cannot read /nonexistent"),
        (["adapter", "--rules", "/nonexistent", "--prometheus-url", "http://127.0.0.1:1"], "/nonexistent"),
        (["extender", "--kubeconfig", "/nonexistent", "--port", "1"], "no Kubernetes connection"),
        (["agent", "--once", "--output", "/no/such/f"], "/no/such is not a folder"),
        (["agent", "--from-topo-file", "/nonexistent"], "no node name"),
    ],
)
def test_an_error_found_after_parsing_is_said_once(argv: list[str], said: str) -> None:
    # Each used to print it twice: a JSON error log line, then the same as a plain line.
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}  # no $KUBECONFIG, no NODE_NAME, not in a pod
    proc = subprocess.run([TOPOSCALE, *argv], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{") or '"level": "error"' in ln]
    assert len(errors) == 1 and errors[0].startswith(f"toposcale {argv[0]}: ") and said in errors[0], errors


def test_an_os_error_is_said_once(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = ["extender", "--standalone", "--host", "127.0.0.1", "--port", str(busy.getsockname()[1])]
        proc = subprocess.run([TOPOSCALE, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{") or '"level": "error"' in ln]
    assert len(errors) == 1 and "address already in use" in errors[0], proc.stderr


def test_an_unknown_flag_after_the_subcommand_gets_the_subcommands_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["extender", "--standlone"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: toposcale extender ") and "--standalone" in err
    assert "toposcale extender: error: unrecognized arguments: --standlone" in err
    with pytest.raises(SystemExit):  # before the subcommand: the top-level parser's
        main(["--bogus", "extender", "--standalone"])
    err = capsys.readouterr().err
    assert err.startswith("usage: toposcale [-h]")
    assert "toposcale: error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("missing", ["toposcale.no_such_module", "toposcale_no_such_dependency"])
def test_a_subcommand_that_cannot_load_is_an_error_not_a_missing_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, missing: str
) -> None:
    # A broken install (a module of the distribution, or a dependency, missing) must not make a subcommand
    # silently disappear from `toposcale --help`: one line naming it, and its own exit code.
    broken = tmp_path / "toposcale_broken_cmd.py"
    broken.write_text(f"import {missing}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", ("toposcale_broken_cmd", "a command whose import fails"))
    assert main(["demo", "--help"]) == EXIT_BROKEN_INSTALL
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'broken' command cannot be loaded" in err and missing in err and "reinstall" in err


def test_a_subcommand_module_missing_from_the_install_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the case that used to be skipped ("subcommand not built yet")
    monkeypatch.setitem(cli.SUBCOMMANDS, "gone", ("toposcale.adapter.no_such_cli", "a deleted module"))
    assert main(["--version"]) == EXIT_BROKEN_INSTALL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gone' command cannot be loaded (toposcale.adapter.no_such_cli" in err
