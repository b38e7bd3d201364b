"""What /api and /apis list: this server's two groups, external.metrics.k8s.io and custom.metrics.k8s.io
(metav1 APIGroupList, APIVersions)."""

from __future__ import annotations

from typing import Any

from . import custom, external


def api_group_list() -> dict[str, Any]:
    """Both groups this server serves."""
    groups = []
    for group in (external.api_group(), custom.api_group()):
        del group["kind"], group["apiVersion"]
        groups.append(group)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions() -> dict[str, Any]:
    # /api: the legacy core group; this server serves none of it (kubectl still asks).
    return {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": None}
