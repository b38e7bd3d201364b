"""The one free-port helper, for the demo, the tests and the benchmarks. Standard library only: the lab's
control plane (`tests/harness/kube_cluster.py`, run by `scripts/kube.sh`) imports it without the venv."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the child binds it a moment later: see the demo's `start_healthy`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
