"""The ``refattn`` command line: ``report`` (the main job), ``check``, ``theory``, ``reference``, ``info``
and ``bench``, one module per subcommand (each has ``add_parser(sub)`` and ``run(args)``).

Exit codes: 0 success, 1 a failed check, 2 bad usage (a one-line message, no traceback),
3 an internal error of refattn (the traceback and a request to report it). Only validation counts as
bad usage: the command line's own (argparse, [`UsageError`][refattn.cli._args.UsageError], a missing file, a TARGET that
cannot be loaded) and the library's boundary checks ([`refattn._validation.InputError`][refattn._validation.InputError], raised
when a user's value reaches a public function); any other exception is refattn's bug.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from refattn.cli import bench, check, info, reference, report, theory
from refattn.cli._args import UsageError

__all__ = ["main", "build_parser", "UsageError"]

#: The subcommands in help order.
SUBCOMMANDS = (report, check, theory, reference, info, bench)


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
    from refattn._validation import InputError, InputTypeError
    from refattn.check.loader import TargetError

    try:
        return args.func(args)
    except (UsageError, TargetError, FileNotFoundError, InputError, InputTypeError) as exc:
        print(f"refattn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refattn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `refattn ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except Exception:  # noqa: BLE001 - anything else is refattn's bug: say so, with the traceback
        traceback.print_exc()
        print(f"refattn {args.command}: internal error (exit 3). This is a bug in refattn, not in your "
              f"command; please report it with the command line and the traceback above.", file=sys.stderr)
        return 3
