"""`toposcale demo` refuses bad input with a clear message and exit code 2, before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from toposcale.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "500"], "--speed above 100"),
        (["--duration", "2"], "--duration must be at least 5"),
        (["--peak-rps", "1"], "--peak-rps must be at least"),
        (["--max-replicas", "0"], "--max-replicas must be at least 1"),
    ],
)
def test_bad_input_is_refused(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert main(["demo", *args, "--workdir", str(work)]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()  # nothing was started or written


@pytest.mark.parametrize("args", [["--speed", "0"], ["--duration", "-1"], ["--seed", "x"]])
def test_unparseable_values_are_argparse_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args])
    assert exc.value.code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize("flag", ["--speed", "--duration"])
def test_speed_and_duration_must_be_finite(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `--speed nan` used to pass the "> 0" check and loop forever
    with pytest.raises(SystemExit) as exc:
        main(["demo", f"{flag}={value}"])
    assert exc.value.code == 2
    assert "finite number above 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--prometheus", "--prometheus-url"])
def test_prometheus_is_an_alias_of_prometheus_url(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 9 names the flag `--prometheus URL`; it used to be an ambiguous prefix of two flags. A URL without
    # a scheme is refused before anything starts, naming the flag: proof the value reached --prometheus-url.
    work = tmp_path / "work"
    assert main(["demo", flag, "127.0.0.1:9090", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "--prometheus-url '127.0.0.1:9090': expected http://host:port" in err
    assert "ambiguous" not in err
    assert not work.exists()


def test_prometheus_alias_parses_to_the_url() -> None:
    import argparse

    from toposcale.demo.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--prometheus", "http://127.0.0.1:9090"])
    assert args.prometheus_url == "http://127.0.0.1:9090"
    assert args.prometheus_file_sd is None


@pytest.mark.parametrize("flag", ["--plot", "--summary-json", "--prometheus-file-sd"])
@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_output_paths_are_checked_before_the_run(
    flag: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A figure path in a folder that does not exist used to cost the whole run, then a traceback.
    work = tmp_path / "work"
    path = tmp_path / "no" / "such" / "out" if where == "missing-folder" else tmp_path
    extra = ["--prometheus-url", "http://127.0.0.1:9"] if flag == "--prometheus-file-sd" else []
    assert main(["demo", flag, str(path), *extra, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and flag in err
    assert ("is not a folder" if where == "missing-folder" else "is a folder") in err
    assert not work.exists()  # nothing was started


def test_a_workdir_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.write_text("")
    assert main(["demo", "--workdir", str(work)]) == 2
    assert "--workdir" in capsys.readouterr().err


def test_plot_without_matplotlib_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    work = tmp_path / "work"
    assert main(["demo", "--plot", str(tmp_path / "demo.png"), "--workdir", str(work)]) == 2
    assert "pip install 'toposcale[plot]'" in capsys.readouterr().err
    assert not work.exists()


def test_a_prometheus_url_where_nothing_listens_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to start every service, wait 60 s, and then advise adding a scrape job.
    from toposcale.demo.supervisor import free_port

    url = f"http://127.0.0.1:{free_port()}"  # free: nothing listens there
    work = tmp_path / "work"
    assert main(["demo", "--prometheus-url", url, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert err == f"toposcale demo: --prometheus-url {url}: nothing answers there (Connection refused); " \
        "start Prometheus or fix the URL\n"
    assert not work.exists()
