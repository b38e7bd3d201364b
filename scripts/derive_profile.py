#!/usr/bin/env python3
"""Write toposcale/serving/profiles/rtx4090d-tp4.yaml, derived from h100-tp1.yaml by documented ratios.

Re-run after the H100 profile changes: python3 scripts/derive_profile.py [--parent FILE] [--out FILE]
The ratios and their sources: toposcale/serving/derive.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toposcale.serving.derive import RTX4090D_TP4, derive  # noqa: E402
from toposcale.serving.profile import ProfileError, load_profile, parse_profile  # noqa: E402

PROFILES = ROOT / "toposcale" / "serving" / "profiles"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="derive_profile.py", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    ap.add_argument("--parent", default=str(PROFILES / "h100-tp1.yaml"))
    ap.add_argument("--out", type=Path, default=PROFILES / "rtx4090d-tp4.yaml")
    args = ap.parse_args(argv)
    try:
        parent = load_profile(args.parent)
        text = derive(parent, RTX4090D_TP4, "rtx4090d-tp4")
        parse_profile(text, str(args.out))  # what we write must load
    except ProfileError as exc:
        print(f"derive_profile.py: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
