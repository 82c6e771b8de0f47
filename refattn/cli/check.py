"""``refattn check TARGET --kind KIND``: judge an external implementation ([`refattn.check`][refattn.check])."""

from __future__ import annotations

import os
import sys

from refattn.check import DEFAULT_TIMEOUT, KINDS, TargetError, check
from refattn.check.exact import LAYOUTS
from refattn.cli._args import UsageError, positive_float, positive_int, probability, seed
from refattn.precision import PRECISIONS


def add_parser(sub):
    ck = sub.add_parser("check", help="check an external implementation (exit 0 pass, 1 fail, 2 usage error, "
                                      "4 inconclusive: a statistical check could not have detected a defect of its "
                                      "tolerance)")
    ck.add_argument("target", metavar="TARGET", help="package.module:function or path/to/file.py:function")
    ck.add_argument("--kind", required=True, choices=KINDS, help="what the callable computes")
    ck.add_argument("--method", default="positive", choices=("positive", "hyperbolic", "trigonometric", "favorpp"),
                    help="random-feature estimator (kernel, attention; favorpp = FAVOR++, kernel only)")
    ck.add_argument("--A", type=float, help="FAVOR++'s parameter A < 1/8 (default: the optimal A* of the inputs)")
    ck.add_argument("--projection", choices=("gaussian", "orthogonal", "regular"),
                    help="its projection (default orthogonal; for --kind projection: the claim, default gaussian)")
    ck.add_argument("--features", type=positive_int, help="feature count m the callable uses (passed as m= if taken)")
    ck.add_argument("--family", default="simhash", choices=("simhash", "angular", "cross_polytope", "e2lsh"))
    ck.add_argument("--bits", type=positive_int, default=1, help="SimHash bits per id")
    ck.add_argument("--buckets", type=positive_int, default=8, help="angular hash buckets")
    ck.add_argument("--width", type=positive_float, default=1.0, help="E2LSH bucket width")
    ck.add_argument("--rounds", type=positive_int, help="a multi-round hash: fn(x, seed) -> (ROUNDS, T) ids")
    ck.add_argument("--precision", default="float64", choices=PRECISIONS,
                    help="the precision the callable computes in (exact, backward): judged at that precision")
    ck.add_argument("--layout", default="TH", choices=LAYOUTS,
                    help="how the callable takes its arrays (exact, backward): T tokens, H features, B batch, N heads")
    ck.add_argument("--gqa", action="store_true",
                    help="grouped-query heads: k, v have fewer heads than q (exact, with BNTH or BTNH)")
    ck.add_argument("--equal-head-dims", action="store_true",
                    help="values have the head dim of q and k (Hv = H), as most fused kernels need (exact, backward)")
    ck.add_argument("--self-attention", action="store_true",
                    help="the callable takes T = S only (exact): cases needing T != S are skipped")
    ck.add_argument("--sizes", default="tiles", choices=("small", "tiles", "long"),
                    help="size preset (exact, backward): small (T, S <= 31), tiles (default: lengths crossing 64- "
                         "and 128-row tiles, 63 to 257), long (and T = S = 4096)")
    ck.add_argument("--head-dims", type=_int_list, default=(64,), metavar="H[,H...]",
                    help="head dims of the tile and long cases (default 64; e.g. 64,128)")
    ck.add_argument("--probe-head-dims", action="store_true",
                    help="a tile case whose head dim the callable rejects by raising is unsupported (skip), not failed")
    ck.add_argument("--empty-rows", default="zeros", choices=("zeros", "nan", "any"),
                    help="what rows that see no key must be (exact): zeros (default, flash-attn and torch SDPA), "
                         "nan, or any (not judged)")
    ck.add_argument("--determinism", action="store_true",
                    help="also check bits (exact): three calls on the same inputs give the same output")
    ck.add_argument("--batch-invariance", action="store_true",
                    help="also check bits (exact): a batch item's output does not depend on the rest of the batch, "
                         "its position or the batch size")
    ck.add_argument("--alignment", default="bottom_right", choices=("bottom_right", "top_left"),
                    help="what causal=True means for the callable (exact, backward)")
    ck.add_argument("--alpha", type=probability, default=1e-3, help="family-wise false-alarm probability")
    ck.add_argument("--seed", type=seed, default=0, help="master seed (inputs and every seed passed to the callable)")
    ck.add_argument("--draws", type=positive_int, help="seeds per statistical check (>= 20; default per kind)")
    ck.add_argument("--budget", type=positive_float, metavar="SECONDS", help="time the sampling may take")
    ck.add_argument("--max-bias", type=positive_float, default=0.01, metavar="FRACTION",
                    help="the relative bias a statistical PASS must be able to detect (p = 0.99; default 0.01); "
                         "short of it the check draws more, then says INCONCLUSIVE (exit 4)")
    ck.add_argument("--max-variance-ratio", type=positive_float, default=0.10, metavar="FRACTION",
                    help="the variance ratio the variance and MSE checks must be able to detect (default 0.10)")
    ck.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"time one call may take before it fails (default {DEFAULT_TIMEOUT:g})")
    ck.add_argument("--memory-limit", type=positive_float, metavar="GiB",
                    help="address space the callable's worker process may use (default: half the machine's memory)")
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


def _int_list(text):
    """``"64,128"`` -> (64, 128), for --head-dims."""
    import argparse

    try:
        dims = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not dims or min(dims) < 1 or max(dims) > 1024:
        raise argparse.ArgumentTypeError(f"expected head dims in [1, 1024], got {text!r}")
    return dims


def run(args) -> int:
    if not args.target.rpartition(":")[0].endswith(".py"):
        sys.path.insert(0, os.getcwd())  # `pkg.mod:fn` resolves from the current directory, like python -m
    options = dict(method=args.method, projection=args.projection, m=args.features, A=args.A, family=args.family,
                   bits=args.bits, buckets=args.buckets, width=args.width, alignment=args.alignment, alpha=args.alpha,
                   n_draws=args.draws, budget=args.budget, timeout=args.timeout, precision=args.precision,
                   layout=args.layout, gqa=args.gqa, self_attention=args.self_attention,
                   equal_head_dims=args.equal_head_dims, rounds=args.rounds, max_bias=args.max_bias,
                   max_variance_ratio=args.max_variance_ratio, sizes=args.sizes, head_dims=args.head_dims,
                   empty_rows=args.empty_rows, probe_head_dims=args.probe_head_dims, determinism=args.determinism,
                   batch_invariance=args.batch_invariance,
                   memory_limit="auto" if args.memory_limit is None else args.memory_limit * 2.0**30)
    if (args.workers or args.scheduler) and not args.calibrate:
        raise UsageError("--workers/--scheduler: only with --calibrate N (one check runs in one process)")
    if args.calibrate:
        return _calibrate(args, options)
    try:
        with _ended_by_signals():
            report = check(args.target, args.kind, seed=args.seed, progress=not args.no_progress and not args.json
                           and sys.stderr.isatty(), **options)
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


def _calibrate(args, options):
    import json

    from refattn.distributed import calibrate_check, cluster

    try:
        with cluster(args.scheduler, args.workers) as client:
            res = calibrate_check(args.target, args.kind, args.calibrate, seed=args.seed, client=client,
                                  progress=not args.no_progress and not args.json and sys.stderr.isatty(), **options)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.kind} check of {args.target} over {res['runs']} seeds (from master seed {args.seed}): "
              f"failed {res['failures']} times, rate {res['rate']:.3g}, {res['level']:.0%} Clopper-Pearson interval "
              f"[{res['low']:.3g}, {res['high']:.3g}]\n{res['verdict']}")
    return 0
