"""`toposcale preflight` lists what an install creates cluster-wide from a table of its own (the command runs
where deploy/ is not): the table is what the kustomize builds hold, for each variant it can be asked about."""

from __future__ import annotations

import pytest

from toposcale.preflight import Options, plan

from .conftest import Build


def cluster_wide(*builds: Build) -> set[tuple[str, str, str]]:
    """Objects outside the install's own namespace: cluster-scoped ones and those in kube-system."""
    out = set()
    for b in builds:
        for o in b.objects:
            ns = o["metadata"].get("namespace", "")
            if ns in ("", "kube-system"):
                out.add((o["kind"], ns, o["metadata"]["name"]))
    return out


@pytest.mark.parametrize(
    ("opts", "names"),
    [
        (Options(), ["all"]),
        (Options(custom_metrics=True), ["all+custom-metrics"]),
        (Options(tls="cert-manager"), ["all-cert-manager", "adapter/cert-manager/apiservice"]),
        (Options(keda=True), ["all-cert-manager"]),  # deploy/adapter/keda instead of the APIService step
        (Options(monitors=True), ["all", "monitors"]),
    ],
    ids=["default", "custom-metrics", "cert-manager", "keda", "monitors"],
)
def test_preflight_plan_is_what_the_install_creates(
    builds: dict[str, Build], opts: Options, names: list[str]
) -> None:
    planned = plan(opts)
    assert len(planned) == len(set(planned))
    assert set(planned) == cluster_wide(*(builds[n] for n in names))
    assert cluster_wide(builds["adapter/keda"]) <= set(plan(Options(keda=True)))
