"""The ``hardenkit`` command line.

Exit codes: 0 success / gate passed / not flagged; 1 gate failed / backdoor flagged / a
verification that ran and failed (ONNX parity); 2 usage, config or input error; 3 runtime or
environment error (no CUDA, missing ONNX Runtime provider, failed export, NaN results);
70 internal error; 130 interrupted. Errors are one line ``hardenkit: error: ...`` on stderr.

Importing this package (and ``hardenkit --help``, ``hardenkit scan --help``) does not import
torch: each command imports what it needs when it runs.

Example:
    >>> from hardenkit.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    hardenkit ...
    0
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .._version import __version__
from . import (
    demo,
    doctor_cmd,
    export_cmd,
    gate_cmd,
    purify_cmd,
    scan_cmd,
    scan_fleet_cmd,
    train_cmd,
    validate_cmd,
)
from ._common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliParser,
    HelpFormatter,
    add_command,
    run_command,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="hardenkit",
        description="Find and remove backdoors in PyTorch image classifiers.",
        epilog="Exit codes: 0 ok/passed, 1 gate failed or backdoor flagged (or an ONNX "
        "verification that ran and failed), 2 usage or input error (config, files), 3 runtime "
        "or environment error (no CUDA, missing ONNX Runtime provider, failed export), "
        "70 internal error, 130 interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("HARDENKIT_LOG_LEVEL", "WARNING").upper(),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level of the JSON/console event log on stderr ($HARDENKIT_LOG_LEVEL "
        "sets the default)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="event log format on stderr",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(sub)
    scan_cmd.add_parser(sub)
    scan_fleet_cmd.add_parser(sub)
    purify_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    validate_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    gate_cmd.add_parser(sub)
    doctor_cmd.add_parser(sub)
    models = add_command(sub, "models", help="list the model zoo")
    models.set_defaults(func=_list_models)
    strategies = add_command(
        sub,
        "strategies",
        help="list the purification strategies and scan detectors (plugins too)",
    )
    strategies.set_defaults(func=_list_strategies)
    return parser


def _list_models(args: argparse.Namespace) -> int:
    from ..models import list_models

    for name in list_models():
        print(name)
    return EXIT_OK


def _list_strategies(args: argparse.Namespace) -> int:
    from ..purify import STRATEGIES
    from ..scan import DETECTORS

    rows: list[tuple[str, str, str]] = []
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        if cls.needs_trigger:
            kind = "needs a trigger (scans first)"
        elif cls.uses_scan:
            kind = "scans first, trigger-free fallback"
        else:
            kind = "trigger-free"
        rows.append(("strategy", name, kind))
    for name in DETECTORS.names():
        det = DETECTORS.get(name)
        rows.append(("detector", name, "needs clean data" if det.needs_data else "data-free"))
    print(format_table(rows), end="")
    return EXIT_OK


def format_table(rows: Sequence[Sequence[str]], gap: int = 2) -> str:
    """Left-aligned columns as wide as their longest cell (the last column is not padded).

    Example:
        >>> rows = [("strategy", "a-very-long-plugin-name", "x"), ("detector", "b", "y")]
        >>> print(format_table(rows))
        strategy  a-very-long-plugin-name  x
        detector  b                        y
        <BLANKLINE>
    """
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w + gap) for c, w in zip(r[:-1], widths, strict=True)]
        lines.append("".join(cells) + r[-1])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hardenkit`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0, usage errors exit 2 (one line)
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("hardenkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.version:
        print(f"hardenkit {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ..logging import configure_logging

    configure_logging(args.log_format, args.log_level)
    try:
        return run_command(lambda: int(args.func(args)))
    except Exception:
        traceback.print_exc()
        print(
            "hardenkit: internal error (a bug); please report it with the traceback above.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:  # under torchrun: every rank leaves together (no-op otherwise)
        from .._utils.distributed import shutdown

        shutdown()


def entrypoint() -> None:
    """``console_scripts`` wrapper."""
    sys.exit(main())
