"""Serving profiles: the shipped files load, behave as physics says, and bad files are refused by name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from toposcale.serving.derive import RTX4090D_TP4, derive
from toposcale.serving.profile import ProfileError, load_profile, parse_profile, shipped_names

ROOT = Path(__file__).resolve().parents[2]


def test_both_profiles_ship() -> None:
    assert {"h100-tp1", "rtx4090d-tp4"} <= set(shipped_names())


@pytest.mark.parametrize("name", ["h100-tp1", "rtx4090d-tp4"])
def test_shipped_profile_is_monotone(name: str) -> None:
    p = load_profile(name)
    # more prompt tokens, a bigger batch, a longer context: never faster
    pre = [p.prefill_time(n) for n in (64, 128, 500, 1000, 3000, 9000, 16384, 40000)]
    assert pre == sorted(pre)
    for ctx in (256, 512, 3000, 8192, 20000):
        dec = [p.decode_time(b, ctx) for b in (1, 3, 8, 50, 128, 256, 300)]
        assert dec == sorted(dec)
    for b in (1, 16, 256):
        dec = [p.decode_time(b, c) for c in (512, 1500, 4096, 8192, 16000)]
        assert dec == sorted(dec)
    chunk = [p.chunk_time(n, 4096) for n in (100, 1000, 2048, 5000, 8192)]
    assert chunk == sorted(chunk)
    assert p.chunk_time(2048, 8192) >= p.chunk_time(2048, 0)
    # batching pays: 64 sequences cost far less than 64 single steps
    assert p.decode_time(64, 2048) < 8 * p.decode_time(1, 2048)
    assert p.step_time(32, 2048, 2048, 0) >= max(p.decode_time(32, 2048), p.chunk_time(2048, 0))


@pytest.mark.parametrize("name", ["h100-tp1", "rtx4090d-tp4"])
def test_profile_reproduces_its_own_points(name: str) -> None:
    p = load_profile(name)
    for n, s in zip(p.prefill_tokens, p.prefill_s, strict=True):
        assert p.prefill_time(n) == pytest.approx(s, rel=1e-9)
    for b, row in zip(p.decode_batch, p.decode_s, strict=True):
        for c, s in zip(p.decode_context, row, strict=True):
            if s is not None and c % 64 == 0:
                assert p.decode_time(b, c) == pytest.approx(s, rel=1e-9)
    for b, row in zip(p.chunk_budget, p.chunk_s, strict=True):
        for c, s in zip(p.chunk_prior, row, strict=True):
            assert p.chunk_time(b, c) == pytest.approx(s, rel=1e-9)


def test_derived_profile_is_what_the_script_writes_now() -> None:
    """rtx4090d-tp4.yaml must be re-derived whenever h100-tp1.yaml changes."""
    text = derive(load_profile("h100-tp1"), RTX4090D_TP4, "rtx4090d-tp4")
    shipped = (ROOT / "toposcale/serving/profiles/rtx4090d-tp4.yaml").read_text()
    assert text == shipped, "run: python3 scripts/derive_profile.py"
    d = parse_profile(text)
    assert d.status == "derived" and d.gpus_per_replica == 4
    assert "DERIVED" in d.header and "1008 GB/s" in d.header


def test_derive_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "x.yaml"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts/derive_profile.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert load_profile(out).name == "rtx4090d-tp4"
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/derive_profile.py"),
            "--parent",
            str(tmp_path / "none.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def _good() -> str:
    return (ROOT / "toposcale/serving/profiles/h100-tp1.yaml").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("kind: toposcale.io/serving-profile/v1", "kind: other"), "kind must be"),
        (lambda t: re.sub(r"(?m)^status: .*$", "status: guessed", t), "status must be"),
        (lambda t: t.replace("max_num_seqs: 256", "max_num_seqs: -1"), "max_num_seqs"),
        (lambda t: t.replace("  tokens: [128, 256,", "  tokens: [256, 128,"), "prefill.tokens"),
        (lambda t: t.replace("capacity_tokens:", "capacity_tokenz:"), "kv_cache.capacity_tokens"),
        (lambda t: "[not, a, mapping]", "mapping"),
    ],
)
def test_bad_profile_names_the_field(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProfileError, match=message):
        parse_profile(edit(_good()))


def test_unknown_profile_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="h100-tp1"):
        load_profile("a100-tp8")
