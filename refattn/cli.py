"""The ``refattn`` command line: ``report`` (the main job), ``theory``, ``info`` and ``bench``.

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


def _cmd_theory(args) -> int:
    from refattn.claims import format_claim, rows_as_dicts, run_claim

    rows = run_claim(args.claim, draws=args.draws, d=args.dim, m=args.features, norm=args.norm,
                     alpha=args.alpha, seed=args.seed)
    if args.json:
        print(json.dumps({"claim": args.claim, "rows": rows_as_dicts(rows)}, indent=2))
    else:
        print(format_claim(args.claim, rows))
    return 0 if all(r.covered for r in rows if r.empirical == r.empirical) else 1


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


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

    from refattn.claims import CLAIMS

    th = sub.add_parser("theory", help="Monte Carlo against the closed forms (exit 1 if an interval misses)")
    th.add_argument("claim", choices=sorted(CLAIMS), help="which claim's table")
    th.add_argument("--draws", type=_positive_int, default=20_000, help="Monte Carlo draws per setting")
    th.add_argument("--dim", type=_positive_int, default=16, help="dimension d of the pairs")
    th.add_argument("--features", type=_positive_int, default=16, help="projection rows m")
    th.add_argument("--norm", type=_positive_float, default=0.5, help="norm of the scaled rows x, y")
    th.add_argument("--alpha", type=_probability, default=1e-3, help="1 - confidence of the intervals")
    th.add_argument("--seed", type=int, default=0)
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=_cmd_theory)

    inf = sub.add_parser("info", help="versions and usable backends (Numba, CuPy, GPU, nvcc)")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=_cmd_info)

    from refattn.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
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
