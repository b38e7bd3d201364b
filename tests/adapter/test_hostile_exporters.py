"""Exposition text as Prometheus reads it, against exporters that print it oddly (issue 28): the value the
adapter serves must be the one Prometheus would compute from the same scrape."""

from __future__ import annotations

import pytest
from toposcale.adapter.sources.scrape import LOOKBACK_S, DuplicateSeries, parse_exposition

NOW = 1_800_000_000.0


def test_an_empty_label_value_is_no_label_so_the_series_is_printed_twice() -> None:
    # Before: `x 7` and `x{a=""} 7` were two series, summed to 14 (with another pod's 3: 17, truth 10).
    with pytest.raises(DuplicateSeries, match=r"duplicate series x$"):
        parse_exposition('x 7\nx{a=""} 7\n', {"x"}, NOW)
    with pytest.raises(DuplicateSeries, match=r'duplicate series x\{b="1"\}'):
        parse_exposition('x{a="",b="1"} 7\nx{b="1"} 7\n', {"x"}, NOW)
    (only,) = parse_exposition('x{a="",b="1"} 7\n', {"x"}, NOW)
    assert dict(only.labels) == {"b": "1"}  # stored as Prometheus stores it


def test_a_counter_without_total_keeps_its_exposed_name() -> None:
    # prometheus-client's parser renames it <name>_total; Prometheus (model/textparse/promparse.go) does not.
    dcgm = (
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n"
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 5\n'
    )
    wanted = {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"}
    samples = parse_exposition(dcgm, wanted, NOW)
    assert [(s.name, s.value) for s in samples] == [("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 5.0)]
    vllm = "# TYPE vllm:request_success counter\nvllm:request_success_total 4\n"  # already suffixed: as is
    assert [s.name for s in parse_exposition(vllm, {"vllm:request_success_total"}, NOW)] == [
        "vllm:request_success_total"
    ]
    typed_total = "# TYPE jobs_total counter\njobs_total 2\n"
    assert [s.name for s in parse_exposition(typed_total, {"jobs_total"}, NOW)] == ["jobs_total"]


def test_explicit_timestamps_are_honoured_as_an_instant_query_would() -> None:
    ms = int(NOW * 1000)
    text = (
        f"fresh 1 {ms - 1000}\n"  # a second old: seen
        "ancient 9 1000\n"  # 1970: not a current value
        f"stale 2 {ms - int((LOOKBACK_S + 1) * 1000)}\n"  # beyond the lookback
        f"future 3 {ms + 60_000}\n"  # not yet
        "untimed 4\n"  # the scrape's own time
    )
    got = parse_exposition(text, {"fresh", "ancient", "stale", "future", "untimed"}, NOW)
    assert [(s.name, s.value) for s in got] == [("fresh", 1.0), ("untimed", 4.0)]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def test_large_targets_are_failed_and_their_memory_comes_back() -> None:
    """A target exposing more samples than --scrape-sample-limit (default 10,000) fails, and once its TTL has
    passed what it cost is released: RSS back within 60 MiB of where it started. Before, in-limit expositions
    of tens of thousands of the rules' series (a gauge and a histogram, each target a new text) made the
    adapter hold ~10 MB per scrape, the histogram history up to ~96 snapshots per target, and the last scrape
    of each URL stayed cached until 10,000 entries."""
    import asyncio
    import gc

    from aiohttp import web
    from toposcale.adapter.rules import load_rules
    from toposcale.adapter.sources.pods import StaticTargets
    from toposcale.adapter.sources.scrape import ScrapeError, ScrapeSource

    async def big(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        lines = [f'vllm:num_requests_waiting{{engine="{i}",n="{n}"}} 1' for i in range(12_000)]
        lines += [
            f'vllm:time_to_first_token_seconds_bucket{{engine="{i}",n="{n}",le="{le}"}} 1'
            for i in range(3_000)
            for le in ("0.1", "0.5", "1.0", "5.0", "+Inf")
        ]
        return web.Response(text="\n".join(lines) + "\n")

    async def small(_request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_waiting 1\n")

    app = web.Application()
    app.router.add_get("/big/{n}", big)
    app.router.add_get("/small", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    source = ScrapeSource(StaticTargets([]), load_rules(), ttl=0.3, timeout=20)
    try:
        await source.scrape(url + "/small")
        gc.collect()
        start = _rss_mib()
        for n in range(3):  # three large targets, each scraped twice (the histogram history)
            for _ in range(2):
                try:
                    await source.scrape(f"{url}/big/{n}")
                except ScrapeError as exc:
                    assert exc.kind == "sample-limit", exc
                else:
                    raise AssertionError("a target with 27,000 of the rules' series was accepted")
        await asyncio.sleep(0.4)  # past the TTL: the next scrape drops what expired
        await source.scrape(url + "/small")
        gc.collect()
        grown = _rss_mib() - start
    finally:
        await source.close()
        await runner.cleanup()
    assert grown < 60, f"RSS {grown:.0f} MiB above its start after the large targets"


def test_rules_or_targets_nested_too_deeply_are_one_line_naming_the_file(tmp_path) -> None:
    # issue 28: the adapter printed the RecursionError's message alone, without the file
    import subprocess
    import sys
    from pathlib import Path

    toposcale = Path(sys.executable).parent / "toposcale"
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    for flag in ("--rules", "--scrape-targets"):
        p = subprocess.run(
            [str(toposcale), "adapter", "--insecure-allow-anonymous", "--port", "0", flag, str(deep)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 2, (flag, p.stderr[-500:])
        assert "Traceback" not in p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("toposcale adapter: ")]
        assert len(lines) == 1 and str(deep) in lines[0] and "nested too deeply" in lines[0], p.stderr[-500:]


async def test_a_negative_queue_is_a_broken_target_not_a_reason_to_scale_down() -> None:
    # issue 28: a queue of -5 beside one of 3 was served as -2
    from toposcale.adapter.rules import load_rules
    from toposcale.adapter.selectors import parse_selector
    from toposcale.adapter.sources.pods import StaticTargets, Target
    from toposcale.adapter.sources.scrape import ScrapeSource

    from lab.peers.exporters import VllmExporter

    rules = load_rules()
    async with VllmExporter() as good, VllmExporter() as broken:
        good.waiting, broken.waiting = 3, -5
        targets = [
            Target(e.url, "ml", pod, {"namespace": "ml", "pod": pod, "app": "vllm"})
            for e, pod in ((good, "good"), (broken, "broken"))
        ]
        source = ScrapeSource(StaticTargets(targets), rules, ttl=0, timeout=5)
        try:
            waiting = rules.by_name()["vllm_requests_waiting"]
            (value,) = await source.fetch(waiting, "ml", parse_selector("app=vllm"))
            assert value.value == 6  # on_missing: extrapolate, over the one target that makes sense
            good.running, broken.running = 4, -1
            running = rules.by_name()["vllm_requests_running"]
            (value,) = await source.fetch(running, "ml", parse_selector("app=vllm"))
            assert value.value == 8  # never 4 - 1
            broken.running = 0
            (value,) = await source.fetch(running, "ml", parse_selector("app=vllm"))
            assert value.value == 4  # 0 is a value
        finally:
            await source.close()
