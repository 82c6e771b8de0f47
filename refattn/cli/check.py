"""``refattn check TARGET --kind KIND``: judge an external implementation ([`refattn.check`][refattn.check])."""

from __future__ import annotations

import os
import sys

from refattn._validation import InputError, InputTypeError
from refattn.check import KINDS, TargetError, check
from refattn.check.spec import BY_NAME, CheckSpec, add_arguments
from refattn.cli._args import UsageError, positive_int


def add_parser(sub):
    ck = sub.add_parser("check", help="check an external implementation (exit 0 pass, 1 fail, 2 usage error, "
                                      "4 inconclusive: a statistical check could not have detected a defect of its "
                                      "tolerance)")
    ck.add_argument("target", metavar="TARGET", help="package.module:function or path/to/file.py:function")
    ck.add_argument("--kind", required=True, choices=KINDS, help="what the callable computes")
    add_arguments(ck)  # every option of the checker, from its one table (refattn.check.spec)
    ck.add_argument("--calibrate", type=positive_int, metavar="N",
                    help="run the check over N independent seeds and report how often it fails, with a "
                         "Clopper-Pearson interval: the false-alarm rate of a correct implementation, or the "
                         "power against a defective one")
    ck.add_argument("--workers", type=positive_int, help="with --calibrate: a local Dask cluster of this many processes")
    ck.add_argument("--scheduler", metavar="ADDRESS", help="with --calibrate: the Dask cluster at this address")
    ck.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    ck.set_defaults(func=run)
    return ck


def run(args) -> int:
    if not args.target.rpartition(":")[0].endswith(".py"):
        sys.path.insert(0, os.getcwd())  # `pkg.mod:fn` resolves from the current directory, like python -m
    try:
        spec = CheckSpec.from_args(args)
    except (InputError, InputTypeError) as exc:  # name the flag the user typed, not check()'s keyword
        raise UsageError(_as_flag(str(exc))) from None
    if (args.workers or args.scheduler) and not args.calibrate:
        raise UsageError("--workers/--scheduler: only with --calibrate N (one check runs in one process)")
    if args.calibrate:
        return _calibrate(args, spec)
    try:
        with _ended_by_signals():
            report = check(args.target, args.kind, spec=spec.replace(
                progress=not args.no_progress and not args.json and sys.stderr.isatty()))
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    print(report.to_json() if args.json else report.format_table())
    return report.exit_code




class _ended_by_signals:
    """SIGTERM (and SIGHUP) during a check end it as Ctrl-C does: the worker and everything it started
    are stopped on the way out (check's cleanup), then the process exits 128 + the signal."""

    SIGNALS = ("SIGTERM", "SIGHUP")

    def __enter__(self):
        import signal
        import threading

        self.saved = {}
        if threading.current_thread() is not threading.main_thread():
            return self

        def stop(signum, frame):
            raise SystemExit(128 + signum)

        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.saved[sig] = signal.signal(sig, stop)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def _as_flag(message):
    """An option's error with its flag in front (``n_draws: ...`` -> ``--draws: ...``)."""
    name, sep, rest = message.partition(":")
    opt = BY_NAME.get(name)
    return f"{opt.flag}:{rest}" if sep and opt is not None and opt.flag else message


def _calibrate(args, spec):
    import json

    from refattn.distributed import calibrate_check, cluster

    try:
        with cluster(args.scheduler, args.workers) as client:
            options = {n: spec.values[n] for n in spec.given if n != "seed"}
            res = calibrate_check(args.target, args.kind, args.calibrate, seed=spec.seed, client=client,
                                  progress=not args.no_progress and not args.json and sys.stderr.isatty(), **options)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.kind} check of {args.target} over {res['runs']} seeds (from master seed {spec.seed}): "
              f"failed {res['failures']} times, rate {res['rate']:.3g}, {res['level']:.0%} Clopper-Pearson interval "
              f"[{res['low']:.3g}, {res['high']:.3g}]\n{res['verdict']}")
    return 0
