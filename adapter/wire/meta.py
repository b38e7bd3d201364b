"""metav1 pieces the document families share."""

from __future__ import annotations

import time


def rfc3339(ts: float) -> str:
    # metav1.Time marshals to RFC3339 with second precision, UTC.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
