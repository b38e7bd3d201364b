"""The README pictures can be rebuilt, and every main panel they show has data in a real Prometheus."""

from __future__ import annotations

import shutil
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


@pytest.mark.skipif(shutil.which("promtool") is None or shutil.which("prometheus") is None,
                    reason="needs the Debian prometheus package (scripts/test.sh installs it)")
def test_render_script_draws_every_dashboard_from_prometheus(tmp_path: Path) -> None:
    # the script fails when a rendered panel's own PromQL returns nothing from the backfilled Prometheus
    result = subprocess.run([sys.executable, "scripts/render_dashboards.py", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for dash in ALL_DASHBOARDS.values():
        png = tmp_path / f"dashboard-{dash['uid']}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 50_000  # drawn panels, not an empty canvas
