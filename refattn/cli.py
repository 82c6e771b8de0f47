"""The ``refattn`` command line: ``report`` (the main job), ``check``, ``theory``, ``info`` and
``bench``.

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
    from refattn import compare
    from refattn.datasets import embedded_attention, load_qkv

    if args.plot:
        compare.pyplot_or_error()  # fail before the work, not after
    data = (load_qkv(args.data) if args.data else embedded_attention()).truncated(args.seq_len)
    temps = args.temperature_sweep or (1.0,)
    budget = args.budget if args.budget is not None else min(64, data.k.shape[1])
    rows = compare.run_comparison(data, budget=budget, methods=args.methods,
                                  temperatures=temps, seed=args.seed)
    exact = None
    if args.exact_paths:
        from refattn.report import run_report

        exact = run_report(seq_len=args.seq_len, seed=args.seed)
    if args.plot:
        compare.plot_error_vs_entropy(rows, args.plot)
    if args.json:
        doc = {"data": data.name, "provenance": data.provenance, "summary": compare.summary_as_dicts(rows),
               "rows": compare.rows_as_dicts(rows)}
        if exact is not None:
            from refattn.report import rows_as_dicts

            doc["exact_paths"] = rows_as_dicts(exact)
        print(json.dumps(doc, indent=2))
    else:
        print(compare.format_comparison(rows, data.provenance))
        if exact is not None:
            from refattn.report import format_table

            print("\nexact paths (dense, streaming, low precision; float64 vs mpmath on adversarial inputs):")
            print(format_table(exact))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _temperatures(text):
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(v > 0 and v != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and > 0, got {text}")
    return values


def _method_list(text):
    from refattn.budget import REGISTRY

    names = list(REGISTRY) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in REGISTRY]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}; "
                                         f"expected 'all' or names from: {', '.join(REGISTRY)}")
    return tuple(names)


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


def _cmd_check(args) -> int:
    import os

    from refattn.check import TargetError, check

    if not args.target.rpartition(":")[0].endswith(".py"):
        sys.path.insert(0, os.getcwd())  # `pkg.mod:fn` resolves from the current directory, like python -m
    try:
        report = check(args.target, args.kind, method=args.method, projection=args.projection, m=args.features,
                       A=args.A, family=args.family, bits=args.bits, buckets=args.buckets, width=args.width,
                       alignment=args.alignment, alpha=args.alpha, seed=args.seed, n_draws=args.draws,
                       budget=args.budget, progress=not args.no_progress and not args.json and sys.stderr.isatty())
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    print(report.to_json() if args.json else report.format_table())
    return report.exit_code


def _cmd_info(args) -> int:
    from refattn.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refattn", description="Reference implementation of efficient attention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from refattn.compare import DEFAULT_METHODS, DEFAULT_TEMPERATURES

    rep = sub.add_parser("report", help="every method at a matched budget against the exact oracle, on embedded "
                                        "real attention (MiniLM) or --data")
    rep.add_argument("--data", metavar="NPZ", help="your own .npz with arrays q (..., T, H), k (..., S, H), v (..., S, Hv)")
    rep.add_argument("--budget", type=_positive_int, default=None,
                     help="stored numbers per query row, 4 to the number of keys (default: 64, or all keys if fewer)")
    rep.add_argument("--methods", type=_method_list, default=DEFAULT_METHODS,
                     help="comma-separated method names, or 'all' (default: all but 'sparse + low-rank')")
    rep.add_argument("--temperature-sweep", type=_temperatures, nargs="?", const=DEFAULT_TEMPERATURES, default=None,
                     metavar="T1,T2,...", help="divide the logits by each temperature "
                     f"(default list: {','.join(map(str, DEFAULT_TEMPERATURES))})")
    rep.add_argument("--plot", metavar="PNG", help="write error of P against entropy (needs matplotlib)")
    rep.add_argument("--exact-paths", action="store_true",
                     help="also compare the oracle's own paths (streaming, low precision, mpmath)")
    rep.add_argument("--seq-len", type=_positive_int, default=512,
                     help="use the first SEQ_LEN tokens (and the exact-path problems' length)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the methods' draws (default 0)")
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

    from refattn.check import KINDS

    ck = sub.add_parser("check", help="check an external implementation (exit 0 pass, 1 fail, 2 usage error)")
    ck.add_argument("target", metavar="TARGET", help="package.module:function or path/to/file.py:function")
    ck.add_argument("--kind", required=True, choices=KINDS, help="what the callable computes")
    ck.add_argument("--method", default="positive", choices=("positive", "hyperbolic", "trigonometric", "favorpp"),
                    help="random-feature estimator (kernel, attention; favorpp = FAVOR++, kernel only)")
    ck.add_argument("--A", type=float, help="FAVOR++'s parameter A < 1/8 (default: the optimal A* of the inputs)")
    ck.add_argument("--projection", choices=("gaussian", "orthogonal", "regular"),
                    help="its projection (default orthogonal; for --kind projection: the claim, default gaussian)")
    ck.add_argument("--features", type=_positive_int, help="feature count m the callable uses (passed as m= if taken)")
    ck.add_argument("--family", default="simhash", choices=("simhash", "angular", "cross_polytope", "e2lsh"))
    ck.add_argument("--bits", type=_positive_int, default=1, help="SimHash bits per id")
    ck.add_argument("--buckets", type=_positive_int, default=8, help="angular hash buckets")
    ck.add_argument("--width", type=_positive_float, default=1.0, help="E2LSH bucket width")
    ck.add_argument("--alignment", default="bottom_right", choices=("bottom_right", "top_left"),
                    help="what causal=True means for the callable (exact)")
    ck.add_argument("--alpha", type=_probability, default=1e-3, help="family-wise false-alarm probability")
    ck.add_argument("--seed", type=int, default=0, help="master seed (inputs and every seed passed to the callable)")
    ck.add_argument("--draws", type=_positive_int, help="seeds per statistical check (>= 20; default per kind)")
    ck.add_argument("--budget", type=_positive_float, metavar="SECONDS", help="time the sampling may take")
    ck.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    ck.set_defaults(func=_cmd_check)

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
