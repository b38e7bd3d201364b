"""scripts/kube.sh as a user runs it: the binaries it builds and one whole up / readyz / down cycle."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import KUBE_SH, kube_bin_dir
from tests.harness.kube_cluster import Cluster, _alive

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
    d = Path(tempfile.mkdtemp(prefix="kube-acceptance-"))
    up = subprocess.run([str(KUBE_SH), "up", str(d)], capture_output=True, text=True, timeout=300, env=env)
    assert up.returncode == 0, up.stderr
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
    left = [name for name, pid in pids.items() if _alive(pid)]
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
