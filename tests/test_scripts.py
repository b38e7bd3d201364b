"""The shell scripts the test command runs: a reporting step never fails a build, a real failure still does.

Every script runs under `set -euo pipefail`. Two ways a report failed (or could fail) a finished build:
- a pipeline into a reader that exits before its input ends (`... | sort -rn | head -12`): the writer dies of
  SIGPIPE at random, pipefail fails the pipeline, errexit the script (scripts/build-image.sh, issue 24);
- a command failing inside an EXIT trap: errexit holds there too, so a failing cleanup step skips the steps
  after it and its status replaces the run's own.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [*sorted(ROOT.glob("scripts/*.sh")), ROOT / ".ci" / "run"]

# A reader that may exit before it has read all of its input: head, grep -q/-m/-l, sed with q, awk with exit.
EARLY_EXIT = re.compile(
    r"^(head\b|grep\s+(-\w*[qlm]|--quiet|--max-count|--files-with-matches)|sed\b.*\bq\b|awk\b.*\bexit\b)"
)


def _mask_quotes(line: str) -> str:
    """The line with every `|` in quoted text made `_`, so only the shell's own pipes remain; a command
    substitution inside double quotes ("$(a | head -1)") stays code."""
    out, stack = [], ["code"]  # code (top level or inside $(...)), sq, dq
    i = 0
    while i < len(line):
        c, mode = line[i], stack[-1]
        if mode == "sq":
            out.append("_" if c == "|" else c)
            if c == "'":
                stack.pop()
        elif mode == "dq":
            if c == "\\":
                out.append(line[i:i + 2].replace("|", "_"))
                i += 2
                continue
            if line.startswith("$(", i):
                stack.append("code")
                out.append("$(")
                i += 2
                continue
            out.append("_" if c == "|" else c)
            if c == '"':
                stack.pop()
        else:
            if c == "'":
                stack.append("sq")
            elif c == '"':
                stack.append("dq")
            elif c == ")" and len(stack) > 1:
                stack.pop()
            out.append(c)
        i += 1
    return "".join(out)


def _pipelines(text: str) -> list[tuple[int, str]]:
    """(line number, command after a `|`) for every pipe in the script: continuation lines joined, comments,
    quoted text and heredoc bodies left out."""
    joined: list[tuple[int, str]] = []
    buf, start, heredoc = "", 0, None
    for n, line in enumerate(text.splitlines(), 1):
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not buf:
            start = n
        code = _mask_quotes(line)
        code = "" if code.lstrip().startswith("#") else re.split(r"\s#", code, maxsplit=1)[0]
        m = re.search(r"<<-?\s*['\"]?(\w+)", line)
        if m:
            heredoc = m.group(1)
        if code.rstrip().endswith(("\\", "|")):
            buf += code.rstrip().rstrip("\\") + " "
            continue
        joined.append((start, buf + code))
        buf = ""
    out = []
    for n, code in joined:
        for part in re.split(r"(?<!\|)\|(?!\|)", code)[1:]:
            out.append((n, part.strip()))
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pipe_into_a_reader_that_stops_early(script: Path) -> None:
    text = script.read_text()
    assert "pipefail" in text or script.name == "run", f"{script.name} does not run under pipefail"
    bad = [f"{script.name}:{n}: | {cmd}" for n, cmd in _pipelines(text) if EARLY_EXIT.match(cmd)]
    assert not bad, ("a reader that exits early kills the writer with SIGPIPE and pipefail fails the step "
                     "at random; let awk read all input (awk 'NR <= 12') or read a file instead:\n"
                     + "\n".join(bad))


def test_the_checker_sees_the_pipeline_that_failed_the_build() -> None:
    # the size report before the fix, as it was written: the guard above must catch it
    old = ('du -sm "$mnt"/usr/lib/* 2>/dev/null | sort -rn | head -12 \\\n'
           '  | sed "s|$mnt||" | awk \'{print}\'\n')
    assert [cmd for _, cmd in _pipelines(old) if EARLY_EXIT.match(cmd)] == ["head -12"]
    old = 'V="$(sed -n \'s/^version = "\\(.*\\)"/\\1/p\' pyproject.toml | head -1)"\n'
    assert [cmd for _, cmd in _pipelines(old) if EARLY_EXIT.match(cmd)] == ['head -1)"']
    assert not [c for _, c in _pipelines("x=$(a || b) && c | awk 'NR == 1'\n") if EARLY_EXIT.match(c)]


def _cleanup_function() -> str:
    text = (ROOT / "scripts" / "build-image.sh").read_text()
    m = re.search(r"^cleanup\(\) \{\n.*?^\}\n", text, re.S | re.M)
    assert m, "scripts/build-image.sh has no cleanup() function"
    return m.group(0)


@pytest.mark.parametrize("status", [0, 1])
def test_build_image_cleanup_runs_every_step_and_keeps_the_status(tmp_path: Path, status: int) -> None:
    """build-image.sh's EXIT trap, with every command in it failing: the extender it kills answers `wait` with
    143, umount, `buildah rm` and `rm -rf` fail. Each step is still tried and the run's status is kept (before
    the fix, `wait`'s 143 ended the trap early: mounts left behind, a failed build's status replaced)."""
    log = tmp_path / "steps"
    script = textwrap.dedent(f"""\
        set -euo pipefail
        log={log}
        umount() {{ echo "umount $*" >>"$log"; return 1; }}
        rm() {{ echo "rm $*" >>"$log"; return 1; }}
        fake_buildah() {{ echo "buildah $*" >>"$log"; return 1; }}
        B=(fake_buildah)
        CLEAN_MOUNTS=(/m1 /m2)
        CLEAN_CTRS=(c1)
        CLEAN_DIRS=(/d1 /d2)
        """) + _cleanup_function() + textwrap.dedent(f"""\
        trap cleanup EXIT
        sleep 60 >/dev/null 2>&1 &
        SERVER_PID=$!
        # as in the build, the server has started (exec'd) before the trap runs: a kill between fork and exec
        # could be lost under load, leaving `sleep` to hold the test's pipes for 60 s
        until [ "$(cat /proc/$SERVER_PID/comm 2>/dev/null || true)" = sleep ]; do sleep 0.01; done
        echo "server $SERVER_PID" >>"$log"
        exit {status}
        """)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == status, (r.returncode, r.stderr)
    steps = log.read_text().splitlines()
    assert steps[1:] == ["umount /m2", "umount /m1", "buildah rm c1", "rm -rf /d1", "rm -rf /d2"], steps
    pid = int(steps[0].split()[1])
    assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    assert "could not remove /d1" in r.stderr
