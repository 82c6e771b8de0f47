"""The ``refattn`` command line: ``report`` (the main job), ``check``, ``theory``, ``info`` and
``bench``, one module per subcommand (each has ``add_parser(sub)`` and ``run(args)``).

Exit codes: 0 success, 1 a failed check, 2 bad usage (a one-line message, no traceback).
"""

from __future__ import annotations

import argparse
import sys

from refattn.cli import bench, check, info, report, theory
from refattn.cli._args import UsageError

__all__ = ["main", "build_parser", "UsageError"]

#: The subcommands in help order.
SUBCOMMANDS = (report, check, theory, info, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refattn", description="Reference implementation of efficient attention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line message
        return int(exc.code or 0)
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"refattn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refattn: interrupted", file=sys.stderr)
        return 130
