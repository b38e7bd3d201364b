"""`toposcale` console script: one subcommand per service.

Each subcommand lives in a module exposing `add_arguments(parser)` and `main(args) -> int`; those modules keep
heavy imports inside `main` so `toposcale --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

DESCRIPTION = (
    "GPU-topology-aware scheduling and queue/KV-cache-aware autoscaling for LLM inference on Kubernetes: "
    "one command per service."
)
SUBCOMMANDS = {
    "adapter": ("toposcale.adapter.cli", "external (and custom) metrics API server for the HPA"),
    "keda-probe": ("toposcale.adapter.keda.probe", "print what KEDA would read from the adapter's scaler"),
    "extender": ("toposcale.extender.cli", "kube-scheduler extender scoring GPU topology"),
    "agent": ("toposcale.extender.agent.cli", "node agent publishing GPU topology and allocation"),
    "simulate": ("toposcale.simulate.cli", "replay a GPU workload over a fleet, compare placement policies"),
    "demo": ("toposcale.demo.cli", "the whole loop on one machine: load, autoscaling, placement"),
    "preflight": ("toposcale.preflight", "before installing: what goes cluster-wide, who already owns it"),
}


class BrokenInstall(Exception):
    """A subcommand's module cannot be imported: the installation is broken (a file or a dependency
    missing). Never skipped silently: `toposcale` says so in one line and exits with EXIT_BROKEN_INSTALL."""


EXIT_BROKEN_INSTALL = 3


def has_default(action: argparse.Action) -> bool:
    """Whether the option has a default worth showing (0 is one; None, False, "" and [] are "not set")."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, str | list) and not d))


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it (or there is none to say)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or not has_default(action)
            or not action.option_strings
            or action.nargs == 0  # flags: store_true and the like
        ):
            return text
        return f"{text} (default %(default)s)" if text else "(default %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: `--scrape-target` must be an error, not silently `--scrape-targets`
    # (and a flag added later must not change what an abbreviation in someone's manifest means).
    parser = argparse.ArgumentParser(
        prog="toposcale", description=DESCRIPTION, allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"toposcale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (modname, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:  # a module of the distribution, or a dependency, is missing
            raise BrokenInstall(
                f"toposcale: the {name!r} command cannot be loaded ({modname}: {exc}); the installation is "
                "incomplete, reinstall toposcale (pip install --force-reinstall toposcale, or pip install -e "
                ". in a checkout)"
            ) from exc
        p = sub.add_parser(
            name, help=help_text, description=help_text, allow_abbrev=False, formatter_class=HelpFormatter
        )
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # parse_known_args, then the subcommand's own error: argparse would blame an unknown flag after the
    # subcommand (`extender --standlone`) on the top-level parser and print the top-level usage.
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["simulate", "autoscale"]:  # a subcommand of simulate with its own parser
        from .autoscale.cli import main as autoscale_main

        return autoscale_main(argv[2:])
    try:
        parser = build_parser()
    except BrokenInstall as exc:
        print(exc, file=sys.stderr)
        return EXIT_BROKEN_INSTALL
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command_at = argv.index(args.command)
        before = [a for a in unknown if a in argv[:command_at]]  # `toposcale --bogus extender`
        (parser if before else args._parser).error(f"unrecognized arguments: {' '.join(before or unknown)}")
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A busy port, an unreadable or unwritable file, whichever command: one line a person can act on
        # (once: no JSON log line beside it), never a 30-line traceback. Bad input stays exit 2 (usage).
        print(f"toposcale {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
