"""The one free-port helper, for the demo, the tests and the benchmarks. Standard library only (as
`toposcale/__init__.py` and `toposcale/core/__init__.py`): the lab's control plane, which `scripts/kube.sh`
runs with the system python3 when there is no venv, imports it."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the child binds it a moment later: see the demo's `start_healthy`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
