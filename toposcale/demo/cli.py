"""`toposcale demo`: the whole loop on one machine, no cluster and no GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from toposcale.core.cliargs import finite_number, output_problem, plot_problem

MAX_SPEED = 100.0
BASE_RPS = 2.0


_positive = finite_number()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=_positive, default=90.0, help="wall-clock seconds the load curve runs (default 90)"
    )
    parser.add_argument(
        "--speed",
        type=_positive,
        default=10.0,
        help="simulated seconds per wall second (default 10: 90 s show 15 minutes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for traffic, requests and tie-breaks")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write a timeline figure here")
    parser.add_argument("--summary-json", type=Path, metavar="FILE", help="write the run's record as JSON")
    parser.add_argument("--max-replicas", type=int, default=6, help="HPA maxReplicas (default 6)")
    parser.add_argument("--peak-rps", type=_positive, default=20.0, help="peak requests/s (default 20)")
    parser.add_argument(
        "--autoscaler",
        choices=("toposcale", "example"),
        default="toposcale",
        help="toposcale (default): an HPA on the adapter's vllm_desired_replicas (AverageValue 1); example: "
        "the HPA of deploy/examples/qwen (queue AverageValue 4, KV-cache Value 750m)",
    )
    parser.add_argument(
        "--profile",
        default="rtx4090d-tp4",
        help="the replicas' serving profile: rtx4090d-tp4 (default: the seed's 4-GPU replicas), h100-tp1, "
        "or a profile file",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where service logs and the scrape targets go (default: a fresh temp dir)",
    )
    parser.add_argument(
        "--prometheus-url",
        "--prometheus",  # issue 9's name; also keeps `--prometheus` from being an ambiguous prefix
        dest="prometheus_url",
        metavar="URL",
        help="(alias --prometheus) have the adapter query this Prometheus instead of scraping the replicas "
        "itself; the demo writes the replicas and exporters as a file_sd target list for it "
        "(see --prometheus-file-sd)",
    )
    parser.add_argument(
        "--prometheus-file-sd",
        type=Path,
        metavar="FILE",
        help="where that target list goes (default <workdir>/prometheus-file-sd.json); point a "
        "file_sd_configs job with honor_labels: true at it",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the demo's own log, written to <workdir>/demo.log",
    )


def prometheus_problem(url: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing can be asked at `url`, or None: checked before the run, or the demo would start its
    services and wait a minute for a Prometheus that is not there, then advise a scrape job. Only the
    connection is judged; an HTTP error or a TLS problem is left to the adapter, which says more."""
    import socket
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the adapter asks it directly
    try:
        with opener.open(url.rstrip("/") + "/api/v1/status/buildinfo", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionError | socket.gaierror | TimeoutError):
            detail = reason.strerror or str(reason) if isinstance(reason, OSError) else str(reason)
            return f"--prometheus-url {url}: nothing answers there ({detail}); start Prometheus or fix the " \
                "URL"
        return None


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys
    import tempfile

    from toposcale.core import logs

    from .runner import DemoConfig, run_demo

    problems: list[str] = []
    if args.max_replicas < 1:
        problems.append("--max-replicas must be at least 1")
    if args.speed > MAX_SPEED:
        problems.append(f"--speed above {MAX_SPEED:g} outruns the services' own (real-time) timeouts")
    if args.duration < 5:
        problems.append("--duration must be at least 5 seconds")
    if args.peak_rps < BASE_RPS:
        problems.append(f"--peak-rps must be at least the quiet-time load, {BASE_RPS:g}")
    if args.prometheus_file_sd and not args.prometheus_url:
        problems.append("--prometheus-file-sd needs --prometheus-url")
    if args.prometheus_url and not args.prometheus_url.startswith(("http://", "https://")):
        problems.append(f"--prometheus-url {args.prometheus_url!r}: expected http://host:port")
    # Every output path before the run, not after it (the run takes minutes).
    for flag, path in (("--plot", args.plot), ("--summary-json", args.summary_json),
                       ("--prometheus-file-sd", args.prometheus_file_sd)):
        if path is not None and (problem := output_problem(path, flag)) is not None:
            problems.append(problem)
    if args.plot is not None and (problem := plot_problem()) is not None:
        problems.append(problem)
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        problems.append(f"--workdir {args.workdir}: is a file, expected a folder")
    if not problems and args.prometheus_url and (problem := prometheus_problem(args.prometheus_url)):
        problems.append(problem)
    from toposcale.serving.profile import ProfileError, load_profile

    try:
        load_profile(args.profile)
    except ProfileError as exc:
        problems.append(str(exc))
    if problems:
        for p in problems:
            print(f"toposcale demo: {p}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toposcale-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = open(workdir / "demo.log", "a", encoding="utf-8")
    logs.setup(args.log_level, stream=log_file)
    logging.getLogger("toposcale.demo").info("demo starting", extra={"workdir": str(workdir)})
    cfg = DemoConfig(
        duration_s=args.duration,
        speed=args.speed,
        seed=args.seed,
        max_replicas=args.max_replicas,
        peak_rps=args.peak_rps,
        autoscaler=args.autoscaler,
        profile=args.profile,
        base_rps=BASE_RPS,
        workdir=workdir,
        plot=args.plot,
        summary_json=args.summary_json,
        prometheus_url=args.prometheus_url,
        file_sd=(args.prometheus_file_sd or workdir / "prometheus-file-sd.json")
        if args.prometheus_url
        else None,
    )
    print(
        f"toposcale demo: {cfg.duration_s:g}s at {cfg.speed:g}x ({cfg.sim_duration / 60:.0f} simulated "
        f"minutes), seed {cfg.seed}; logs in {workdir}",
        flush=True,
    )
    try:
        return asyncio.run(run_demo(cfg, sys.stdout))
    finally:
        log_file.close()
