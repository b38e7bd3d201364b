"""metav1 pieces the document families share."""

from __future__ import annotations

import time
from typing import Any


def rfc3339(ts: float) -> str:
    # metav1.Time marshals to RFC3339 with second precision, UTC.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def api_group(group: str, version: str) -> dict[str, Any]:
    """metav1 APIGroup of a group served at one version (what /apis/<group> answers)."""
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {
        "kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": dict(gv),
    }
