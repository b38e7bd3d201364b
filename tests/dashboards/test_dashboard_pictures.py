"""The README pictures can be rebuilt from the live test stack, and every main panel they show has data.

scripts/render_dashboards.py starts lab/peers/live_stack.py (real Prometheus, harness exporters,
in-process adapter, extender and agent; no Kubernetes needed) and draws each panel from its own PromQL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ALL_DASHBOARDS, ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_each_dashboard_has_its_committed_picture() -> None:
    for dash in ALL_DASHBOARDS.values():
        png = ROOT / "docs" / "img" / f"dashboard-{dash['uid']}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert f"../docs/img/dashboard-{dash['uid']}.png" in (ROOT / "dashboards" / "README.md").read_text()


@pytest.mark.skipif(not Path("/usr/bin/prometheus").exists(),
                    reason="needs the Debian prometheus package (scripts/test.sh installs it)")
def test_render_script_draws_every_dashboard_from_the_live_stack(tmp_path: Path) -> None:
    # the script fails when a rendered panel's own PromQL returns nothing from the live stack's Prometheus;
    # a short run (the committed pictures use the default 150 s)
    result = subprocess.run([sys.executable, "scripts/render_dashboards.py", "--out", str(tmp_path),
                             "--seconds", "12"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    for dash in ALL_DASHBOARDS.values():
        png = tmp_path / f"dashboard-{dash['uid']}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 50_000  # drawn panels, not an empty canvas
