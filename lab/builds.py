"""The real peers built from source by `scripts/*.sh` (kube.sh, helm.sh, keda.sh, gpuallocator.sh): each
script builds once per machine into ~/.cache/toposcale/ and prints the path on its last line; an environment
variable may name a prebuilt one. A build that cannot happen (no Go, no module proxy) fails the test with the
script's reason: the real peers are part of the suite, never silently skipped.

    kube_bin_dir()        # kube-apiserver, etcd, ... (scripts/kube.sh bin-dir; TOPOSCALE_KUBE_BIN_DIR)
    helm_bin()            # helm (scripts/helm.sh bin; TOPOSCALE_HELM_BIN)
    keda_bin_dir()        # keda, keda-adapter (scripts/keda.sh bin-dir; TOPOSCALE_KEDA_BIN_DIR)
    gpuallocator_bin()    # NVIDIA's go-gpuallocator behind a JSON CLI (scripts/gpuallocator.sh bin)
    deviceplugin_bin()    # a device plugin on it (scripts/gpuallocator.sh deviceplugin-bin)
    labelsparse_bin()     # Kubernetes' labels.Parse behind a JSON CLI (scripts/labelsparse.sh bin)

The Go modules stay next to the tests of each peer (tests/kube, tests/helm, tests/keda, tests/gpuallocator).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab import ROOT

SCRIPTS = ROOT / "scripts"


def built(
    script: str,
    verb: str,
    *,
    what: str,
    env_var: str | None = None,
    needs: tuple[str, ...] = (),
    timeout: float = 3600,
) -> Path:
    """`scripts/<script> <verb>`'s last line of output, a path that exists; `env_var` names a prebuilt one
    (used when it exists and holds every file of `needs`)."""
    prebuilt = os.environ.get(env_var) if env_var else None
    if prebuilt and Path(prebuilt).exists() and all((Path(prebuilt) / n).is_file() for n in needs):
        return Path(prebuilt)
    try:
        r = subprocess.run(
            [str(SCRIPTS / script), verb], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"{what} could not be built (scripts/{script} {verb}): {exc}", pytrace=False)
    lines = r.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines else None
    if r.returncode != 0 or path is None or not path.exists():
        pytest.fail(
            f"{what} could not be built (scripts/{script} {verb}, exit {r.returncode}):\n{r.stderr[-4000:]}",
            pytrace=False,
        )
    return path


def kube_bin_dir() -> Path:
    return built(
        "kube.sh",
        "bin-dir",
        what="the real Kubernetes components",
        env_var="TOPOSCALE_KUBE_BIN_DIR",
        needs=("kube-apiserver", "etcd"),
    )


def helm_bin() -> Path:
    return built("helm.sh", "bin", what="the real helm", env_var="TOPOSCALE_HELM_BIN")


def keda_bin_dir() -> Path:
    return built(
        "keda.sh",
        "bin-dir",
        what="the real KEDA",
        env_var="TOPOSCALE_KEDA_BIN_DIR",
        needs=("keda", "keda-adapter"),
    )


def gpuallocator_bin() -> Path:
    return built("gpuallocator.sh", "bin", what="the go-gpuallocator program", timeout=900)


def deviceplugin_bin() -> Path:
    return built("gpuallocator.sh", "deviceplugin-bin", what="the go-gpuallocator device plugin", timeout=900)


def labelsparse_bin() -> Path:
    return built(
        "labelsparse.sh", "bin", what="the labels.Parse program (tests/kube/cmd/labelsparse)", timeout=900
    )
