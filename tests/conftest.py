"""Suite-wide fixtures: the real control plane and deploy/ on it, the real helm. Area fixtures live in
tests/<area>/conftest.py; what they wrap lives in lab/ (lab/README.md)."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.builds import helm_bin, kube_bin_dir

ROOT = Path(__file__).resolve().parent.parent
KUBE_SH = ROOT / "scripts" / "kube.sh"


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real control plane per session (etcd, kube-apiserver, kube-controller-manager, kube-scheduler),
    started by `scripts/kube.sh up DIR` as a user would; tests work in namespaces of their own."""
    from lab.kube.cluster import Cluster

    bins = kube_bin_dir()
    d = tmp_path_factory.mktemp("kube") / "cluster"
    start = time.monotonic()
    env = {**os.environ, "TOPOSCALE_KUBE_BIN_DIR": str(bins)}
    r = subprocess.run([str(KUBE_SH), "up", str(d)], capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0:
        pytest.fail(f"scripts/kube.sh up failed:\n{r.stderr}", pytrace=False)
    cluster = Cluster.load(d)
    print(f"\n[kube] control plane up in {time.monotonic() - start:.1f} s at {cluster.server}")
    try:
        yield cluster
    finally:
        subprocess.run([str(KUBE_SH), "down", str(d)], capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def deployed(kube_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """deploy/all (with the custom-metrics component) applied to the session's control plane once, with a
    ServiceAccount token per component (lab/peers/deployed.py)."""
    from lab.peers.deployed import deploy_toposcale

    return deploy_toposcale(kube_cluster, tmp_path_factory.mktemp("deploy"))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real helm binary (scripts/helm.sh bin, cached; tests/helm/README.md), for tests/helm and
    tests/cluster/test_install_safety.py; its config/cache/data dirs in a temporary folder (nothing written
    to ~). Not buildable (no Go, no module proxy): the tests fail with the reason, never skip."""
    path = helm_bin()
    home = tmp_path_factory.mktemp("helm-home")
    for var in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        os.environ[var] = str(home / var.lower())
    return path
