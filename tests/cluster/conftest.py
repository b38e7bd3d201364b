"""Fixtures and helpers for tests against the real control plane: `kube_cluster` and `deployed` are session
fixtures in tests/conftest.py (deploy/ applied once per session, lab/peers/deployed.py); the helpers are the
lab's, re-exported for the tests in this folder."""

from lab.peers.deployed import (  # noqa: F401 -- re-exported for the tests in this folder
    CRD_KINDS,
    KUBECTL,
    ROOT,
    TOPOSCALE,
    AdapterProc,
    Deployed,
    apply_objects,
    forbidden,
    kubectl,
    process,
    render,
    run_adapter,
    sa_token,
)
from lab.procs import free_port, wait_for  # noqa: F401
