"""Regenerate the Grafana dashboards: `python -m dashboards.generate` from the repository root.

The dashboards are built with Grafana's SDK (grafana-foundation-sdk, pinned in pyproject.toml's `dashboards`
extra, which `test` includes). `--check` writes nothing and exits 1 when a committed `dashboards/<name>.json`
differs from what the code makes (CI and tests/dashboards run it). deploy/ builds its Grafana ConfigMaps from
these JSON files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as `python dashboards/generate.py`: make the folder importable
    sys.path.insert(0, str(HERE.parent))

try:
    from dashboards import autoscaling, gpu_fleet, llm_serving
except ModuleNotFoundError as missing:  # the SDK is an extra, not a dependency of toposcale itself
    if missing.name != "grafana_foundation_sdk":
        raise
    sys.exit("dashboards.generate needs Grafana's SDK: .venv/bin/pip install -e '.[dashboards]'")

# file name (without .json) -> builder; the file names are what deploy/ and the README link to.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "gpu-fleet": gpu_fleet.build,
    "llm-serving": llm_serving.build,
    "autoscaling-placement": autoscaling.build,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate",
                                     description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true",
                        help="fail if a committed JSON differs; write nothing")
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where the dashboard JSON files go (default: beside this script)")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out_dir / f"{name}.json"
        text = render(build)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} differs from what dashboards/ code makes: run python -m dashboards.generate",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
