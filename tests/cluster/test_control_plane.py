"""scripts/kube.sh as a user runs it: the binaries it builds and one whole up / readyz / down cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.builds import kube_bin_dir
from lab.kube.cluster import MARKER, Cluster
from lab.procs import pid_alive
from tests.conftest import KUBE_SH, ROOT

from .conftest import KUBECTL


def test_bin_dir_holds_the_four_components_at_the_pinned_versions() -> None:
    bins = kube_bin_dir()
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        r = subprocess.run([str(bins / name), "--version"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "Kubernetes v1.37.2", r.stdout
    r = subprocess.run([str(bins / "etcd"), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # the etcd server version k8s.io/kubernetes v1.37.2 pins in its go.mod
    assert "etcd Version: 3.7.0" in r.stdout, r.stdout
    # the cache key follows go.sum: a changed pin builds into a new directory
    assert bins.parent.name == "kube" and bins.name.startswith("v1.37.2-")


def test_up_readyz_down_leaves_nothing_behind() -> None:
    env = {**os.environ, "TOPOSCALE_KUBE_BIN_DIR": str(kube_bin_dir())}
    parent = Path(tempfile.mkdtemp(prefix="kube-acceptance-"))
    d = parent / "cluster"  # made by up, so down removes it
    up = subprocess.run([str(KUBE_SH), "up", str(d)], capture_output=True, text=True, timeout=300, env=env)
    assert up.returncode == 0, up.stderr
    assert (d / MARKER).is_file()
    cluster = Cluster.load(d)
    pids = dict(cluster.pids)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    try:
        ready = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(d / "admin.kubeconfig"), "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout.strip() == "ok"
        for name in ("admin.kubeconfig", "env", "kube-apiserver.log", "etcd.log"):
            assert (d / name).is_file(), name
        env_text = (d / "env").read_text()
        for key in ("KUBE_SERVER=", "KUBE_CA_FILE=", "KUBE_PID_KUBE_APISERVER=", "KUBE_PORT_ETCD="):
            assert key in env_text
    finally:
        down = subprocess.run([str(KUBE_SH), "down", str(d)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not d.exists()
    assert parent.is_dir()  # up did not make it
    parent.rmdir()
    left = [name for name, pid in pids.items() if pid_alive(pid)]
    assert not left, f"still running after down: {left}"


def test_up_refuses_a_directory_in_use(kube_cluster: Cluster) -> None:
    r = subprocess.run(
        [str(KUBE_SH), "up", str(kube_cluster.dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOPOSCALE_KUBE_BIN_DIR": str(kube_cluster.bin_dir)},
    )
    assert r.returncode == 1
    assert "already holds a control plane" in r.stderr


# --- `down` and a failed `up` never remove what `up` did not make (issue 24) ---


def _kube_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBE_SH), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_down_refuses_a_folder_up_did_not_make(tmp_path: Path) -> None:
    x = tmp_path / "x"
    x.mkdir()
    (x / "f").write_text("important\n")
    r = _kube_sh("down", str(x))
    assert r.returncode == 1
    assert "no control plane made by `kube.sh up`" in _one_line(r.stderr)
    assert (x / "f").read_text() == "important\n"
    # an `env` file alone (what down used to trust) is not up's mark
    (x / "env").write_text("KUBE_PID_ETCD=1\n")
    r = _kube_sh("down", str(x))
    assert r.returncode == 1 and "nothing stopped, nothing removed" in _one_line(r.stderr)
    assert sorted(e.name for e in x.iterdir()) == ["env", "f"]


def test_down_refuses_the_current_directory(tmp_path: Path) -> None:
    """`kube.sh down .` from the repository root deleted the checkout (kube.sh cds to the checkout before
    it reads DIR, so `.` was the checkout from anywhere). Run in a stand-in checkout holding a copy of kube.sh
    and its Python, so a regression costs a temporary folder and not the tree running the tests."""
    checkout = tmp_path / "checkout"
    for rel in ("scripts/kube.sh", "lab/__init__.py", "lab/kube/__init__.py", "lab/pki.py", "lab/procs.py",
                "lab/kube/cluster.py", "pyproject.toml"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, checkout / rel)
    (checkout / ".git").mkdir()
    if (ROOT / ".venv").is_dir():
        (checkout / ".venv").symlink_to(ROOT / ".venv")
    before = sorted(str(f.relative_to(checkout)) for f in checkout.rglob("*"))
    for cwd, arg in ((checkout, "."), (checkout / "scripts", ".."), (tmp_path, "checkout")):
        r = subprocess.run([str(checkout / "scripts" / "kube.sh"), "down", arg], cwd=cwd, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1, (arg, r.stderr)
        line = _one_line(r.stderr)
        assert "no control plane made by `kube.sh up`" in line
        # DIR is the caller's: relative to where kube.sh was run
        assert str((cwd / arg).resolve()) in line, line
    assert sorted(str(f.relative_to(checkout)) for f in checkout.rglob("*")) == before


def test_down_of_a_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    r = _kube_sh("down", str(tmp_path / "does" / "not" / "exist"))
    assert r.returncode == 1
    assert _one_line(r.stderr).endswith("does not exist; nothing stopped, nothing removed")
    f = tmp_path / "file"
    f.write_text("x")
    r = _kube_sh("down", str(f))
    assert r.returncode == 1 and "is not a directory" in _one_line(r.stderr)
    assert f.read_text() == "x"


def _failing_bins(tmp_path: Path) -> Path:
    """Components that exit at once: `up` fails after it made the PKI and wrote into DIR. Every binary
    kube.sh looks for in TOPOSCALE_KUBE_BIN_DIR is there, so it never starts a real build instead."""
    bins = tmp_path / "bins"
    bins.mkdir()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"):
        (bins / name).write_text("#!/bin/sh\necho 'not a real component' >&2\nexit 1\n")
        (bins / name).chmod(0o755)
    return bins


def test_a_failed_up_keeps_a_directory_that_existed(tmp_path: Path) -> None:
    bins = _failing_bins(tmp_path)
    env = {"TOPOSCALE_KUBE_BIN_DIR": str(bins)}
    before = tmp_path / "mine"
    before.mkdir()
    r = _kube_sh("up", str(before), env=env)
    assert r.returncode == 1 and "etcd exited during start-up" in r.stderr, r.stderr
    assert before.is_dir() and list(before.iterdir()) == []  # what up wrote is gone, the folder stays
    made = tmp_path / "new" / "cluster"
    r = _kube_sh("up", str(made), env=env)
    assert r.returncode == 1 and "etcd exited during start-up" in r.stderr, r.stderr
    assert not made.exists() and (tmp_path / "new").is_dir()  # up made `cluster`, not its parent
    # a folder holding anything is not up's to write into
    (before / "f").write_text("important\n")
    r = _kube_sh("up", str(before), env=env)
    assert r.returncode == 1 and "is not empty" in _one_line(r.stderr)
    assert [e.name for e in before.iterdir()] == ["f"]


def test_down_of_a_run_in_a_directory_that_existed_keeps_the_directory(tmp_path: Path) -> None:
    """What `up` leaves in an empty DIR it was given (its marker, env with the PIDs, PKI, logs), with a
    process standing in for a component: down stops it, removes up's entries and keeps DIR and a file the
    user put there since."""
    d = tmp_path / "given"
    d.mkdir()
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (d / MARKER).write_text('{"made_by": "kube.sh up", "created_dir": false}\n')
        (d / "env").write_text(f"KUBE_BIN_DIR=/nonexistent\nKUBE_PID_ETCD={proc.pid}\n")
        (d / "pki").mkdir()
        (d / "pki" / "ca.crt").write_text("x")
        (d / "etcd").mkdir()
        for name in ("admin.kubeconfig", "etcd.log", "kube-apiserver.log", "audit.log", "audit-policy.yaml"):
            (d / name).write_text("x")
        (d / "notes.txt").write_text("mine\n")
        r = _kube_sh("down", str(d))
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=20) is not None
        assert [e.name for e in d.iterdir()] == ["notes.txt"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
