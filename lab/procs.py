"""Processes of the lab: free loopback ports and child processes (spawn, log to a file, wait until healthy,
tail on failure, stop by PID). Standard library only, like toposcale/ports.py (whose `free_port` is the one
definition, re-exported here): `scripts/kube.sh` runs the lab's control plane with a system python3."""

from __future__ import annotations

from toposcale.ports import free_port

__all__ = ["free_port"]
