"""Extender test fixtures: the extender served in-process (lab/services.py); Nodes, Pods: lab/objects.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lab.services import serve_extender


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(config=..., state=...) as s:` -> the extender on a free loopback port."""
    return serve_extender
