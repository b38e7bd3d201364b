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
