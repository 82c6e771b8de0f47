"""The ``refattn`` command line: ``report`` (the main job) and ``info``.

Exit codes: 0 success, 1 a failed check, 2 bad usage (a one-line message, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


class UsageError(Exception):
    """A user's mistake: reported in one line with exit code 2."""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_report(args) -> int:
    from refattn.report import format_table, rows_as_dicts, run_report

    rows = run_report(seq_len=args.seq_len, seed=args.seed)
    if args.json:
        print(json.dumps({"rows": rows_as_dicts(rows)}, indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_info(args) -> int:
    from refattn.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refattn", description="Reference implementation of efficient attention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    rep = sub.add_parser("report", help="compare the methods against the exact oracle on embedded data")
    rep.add_argument("--seq-len", type=_positive_int, default=512, help="sequence length of the embedded problems")
    rep.add_argument("--seed", type=int, default=0, help="seed of the embedded problems (default 0)")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.set_defaults(func=_cmd_report)

    inf = sub.add_parser("info", help="versions and usable backends (Numba, CuPy, GPU, nvcc)")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=_cmd_info)
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
