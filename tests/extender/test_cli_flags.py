"""`toposcale extender` flags are validated by argparse: a bad value is a usage error (exit 2) naming the
flag, never a traceback from deep inside the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toposcale.cli import main

TOPOSCALE = str(Path(sys.executable).parent / "toposcale")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--max-inflight", "0"], "--max-inflight"),
        (["--max-inflight", "-3"], "--max-inflight"),
        (["--max-inflight", "two"], "--max-inflight"),
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--max-body-mb", "-1"], "--max-body-mb"),
        (["--port", "0"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "http"], "--port"),
        (["--url-prefix", "toposcale"], "--url-prefix"),
        (["--url-prefix", "http://127.0.0.1:8888/toposcale"], "--url-prefix"),
        (["--url-prefix", "/a b"], "--url-prefix"),
        (["--url-prefix", "/a?x=1"], "--url-prefix"),
        (["--url-prefix", "//evil"], "--url-prefix"),
        (["--assume-ttl", "nan"], "--assume-ttl"),
        (["--assume-ttl", "-5"], "--assume-ttl"),
        (["--allocation-max-age", "-1"], "--allocation-max-age"),
        (["--allocation-max-age", "inf"], "--allocation-max-age"),
    ],
)
def test_bad_flag_values_are_usage_errors(capsys, argv: list[str], flag: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["extender", "--standalone", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_full_url_prefix_hint_names_the_path_part(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["extender", "--url-prefix", "http://127.0.0.1:8888/toposcale"])
    assert "give only the path" in capsys.readouterr().err


@pytest.mark.parametrize("prefix", ["", "/", "/toposcale", "/toposcale/", "/a/b-c_d.e~1"])
def test_good_prefixes_parse(prefix: str) -> None:
    import argparse

    from toposcale.extender.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--url-prefix", prefix, "--port", "65535", "--max-inflight", "1",
                              "--max-body-mb", "1"])
    assert (args.url_prefix, args.port, args.max_inflight, args.max_body_mb) == (prefix, 65535, 1, 1)


def test_console_script_exits_2_with_one_usage_line() -> None:
    proc = subprocess.run([TOPOSCALE, "extender", "--max-inflight", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "argument --max-inflight: 0 is outside 1..1024" in proc.stderr and "Traceback" not in proc.stderr


def test_a_busy_port_is_one_line_and_exit_1() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([TOPOSCALE, "extender", "--standalone", "--host", "127.0.0.1", "--port",
                               str(port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    plain = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("toposcale extender: ")
    assert "address already in use" in plain[0]


def test_no_kubernetes_connection_is_one_plain_line(tmp_path) -> None:
    proc = subprocess.run([TOPOSCALE, "extender", "--kubeconfig", str(tmp_path / "none"), "--port", "1"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    plain = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]
    assert len(plain) == 1 and "no Kubernetes connection" in plain[0] and "--standalone" in plain[0]


def test_max_inflight_help_and_readme_say_what_the_server_answers() -> None:
    # The server's answer itself is tested in test_server_bounds (a full house: 429 with Retry-After: 1);
    # the help and the README must say that, with the server's wait, not another code.
    import argparse

    from toposcale.extender.cli import add_arguments
    from toposcale.extender.server import ServerConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = next(a.help for a in parser._actions if "--max-inflight" in a.option_strings)
    assert help_text is not None
    assert f"wait up to {ServerConfig().queue_timeout_s:g} s, then get 429 TooManyRequests" in help_text
    assert "503" not in help_text
    readme = " ".join((Path(__file__).parents[2] / "extender" / "README.md").read_text().split())
    assert f"No slot within {ServerConfig().queue_timeout_s:g} s → **429 `TooManyRequests`**" in readme
