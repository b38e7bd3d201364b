"""`scripts/kube.sh up DIR --kubelets 2` as a user runs it: two Ready nodes whose pods run, `kubectl get pods
-o wide` showing one Running on each, and `down` leaving no process, cgroup, bridge or file of them behind."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from lab.builds import kube_bin_dir
from lab.kube.kubelet_lab import CGROUP_FS, LAB_DIR, STATE, _cgroup_dirs, _cgroup_pids
from lab.peers.deployed import KUBECTL
from lab.procs import pid_alive
from tests.conftest import KUBE_SH


def test_kubelet_is_built_at_the_pinned_version() -> None:
    r = subprocess.run(
        [str(kube_bin_dir() / "kubelet"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Kubernetes v1.37.2", r.stdout


def test_up_with_two_kubelets_runs_a_pod_on_each_and_down_leaves_nothing() -> None:
    env = {**os.environ, "TOPOSCALE_KUBE_BIN_DIR": str(kube_bin_dir())}
    parent = Path(tempfile.mkdtemp(prefix="kube-kl-"))  # short: unix socket paths hold 107 bytes
    d = parent / "c"
    up = subprocess.run(
        [str(KUBE_SH), "up", str(d), "--kubelets", "2"], capture_output=True, text=True, timeout=600, env=env
    )
    lab: dict = {}
    try:
        assert up.returncode == 0, up.stderr
        lab = json.loads((d / LAB_DIR / STATE).read_text())
        kubectl = [str(KUBECTL), "--kubeconfig", str(d / "admin.kubeconfig")]

        def run(*args: str) -> str:
            r = subprocess.run([*kubectl, *args], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
            return r.stdout

        nodes = run("get", "nodes", "-o", "json")
        ready = {
            n["metadata"]["name"]
            for n in json.loads(nodes)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        }
        assert ready == {"node-0", "node-1"}
        run("apply", "-f", str(d / LAB_DIR / "example-pods.yaml"))
        run("wait", "--for=condition=Ready", "pod", "--all", "--timeout=90s")
        wide = run("get", "pods", "-o", "wide", "--no-headers").splitlines()
        rows = {line.split()[0]: line.split() for line in wide}
        assert set(rows) == {"exporter-node-0", "exporter-node-1"}, wide
        for name, cols in rows.items():
            # NAME READY STATUS RESTARTS AGE IP NODE ...
            assert cols[1] == "1/1" and cols[2] == "Running", wide
            assert cols[6] == name.removeprefix("exporter-"), wide
    finally:
        down = subprocess.run([str(KUBE_SH), "down", str(d)], capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr
    assert not d.exists()
    parent.rmdir()
    for node in lab.get("nodes", []):
        left = [f"{c} {pid}" for c, pid in node["pids"].items() if pid_alive(pid)]
        assert not left, f"{node['name']}: still running after down: {left}"
        assert not _cgroup_pids(node["cgroup"]), node["cgroup"]
        assert not [p for p in _cgroup_dirs(node["cgroup"]) if p.exists()], node["cgroup"]
        assert not (Path("/sys/class/net") / node["bridge"]).exists(), node["bridge"]
    assert lab.get("nodes"), "up wrote no nodes"
    assert CGROUP_FS.is_dir()
