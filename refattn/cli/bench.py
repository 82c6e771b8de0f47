"""``refattn bench``: speed, memory and scaling of every method, as ratios measured in one run
([`refattn.bench`][refattn.bench])."""

from __future__ import annotations

import json
import sys

from refattn._extras import install_hint
from refattn.bench.format import format_suite, plot_suite
from refattn.bench.measure import CAUSAL
from refattn.bench.suite import GIB, default_entries, default_lengths, load_goals, refresh, run_suite
from refattn.cli._args import UsageError, positive_float, positive_int, seed
from refattn.evaluation.methods import REGISTRY

QUICK = {"lengths": [128, 256], "H": 16, "repeats": 1, "gemm_n": 256, "isolate": False, "fit_from": 0}


def add_parser(sub):
    b = sub.add_parser("bench", help="speed, memory and scaling of every method, as ratios measured in one run")
    b.add_argument("--quick", action="store_true",
                   help="smoke run: T = 128, 256, H = 16, one repeat, in this process (seconds; numbers meaningless)")
    b.add_argument("--methods", help=f"comma-separated registry methods, a causal form as 'NAME{CAUSAL}' "
                                     f"(default: {', '.join(default_entries())})")
    b.add_argument("--budget", type=positive_int, default=128,
                   help="stored numbers per query row: each method's budget rule, capped at T (default 128)")
    b.add_argument("--goals", metavar="JSON", help="goal definitions to judge the run by (benchmarks/goals.json)")
    b.add_argument("--dtypes", default="float64,float32", help="comma-separated: float64, float32")
    b.add_argument("--T-min", type=positive_int, default=1024, help="smallest T (doubling up to --T-max)")
    b.add_argument("--T-max", type=positive_int, default=131072,
                   help="largest T (each method stops at its own max_T: 65536, 131072 for the streaming oracle)")
    b.add_argument("--H", type=positive_int, default=64, help="head dimension")
    b.add_argument("--repeats", type=positive_int, default=3, help="timed calls per point below --large-T")
    b.add_argument("--large-T", type=positive_int, default=32768, help="from this T on, --large-T-repeats calls")
    b.add_argument("--large-T-repeats", type=positive_int, default=1)
    b.add_argument("--max-memory-gib", type=positive_float, default=4.0,
                   help="skip points whose predicted peak memory exceeds this (recorded as skipped)")
    b.add_argument("--gemm-n", type=positive_int, default=4096, help="size of the square GEMM baseline")
    b.add_argument("--seed", type=seed, default=0)
    b.add_argument("--no-isolate", action="store_true", help="measure in this process, not one subprocess per point")
    b.add_argument("--note", help="free text stored in the JSON (e.g. 'machine shared with 3 other jobs')")
    b.add_argument("--out", help="write the JSON here")
    b.add_argument("--plot", help="write the log-log plot (PNG) here (needs matplotlib)")
    b.add_argument("--json", action="store_true", help="print the JSON instead of the tables")
    b.add_argument("--from-json", help="measure nothing: re-derive the tables, goals and plot of a saved run")
    b.add_argument("--peers", action="store_true",
                   help="refattn against torch SDPA, performer-pytorch and reformer-pytorch (and the sparse kernel "
                        "and Monte Carlo engine against their baselines), interleaved in this process; needs "
                        "the peers extra for the first three")
    b.add_argument("--peer-lengths", default="4096,16384,65536", help="comma-separated T of --peers")
    b.add_argument("--peer-families", help="comma-separated subset of --peers: exact, performer, reformer, sparse, "
                                           "montecarlo")
    b.add_argument("--max-load", type=positive_float, default=1.5,
                   help="--peers waits for the 1-minute load average to fall to this before a point, and "
                        "measures a point again once if it started above it")
    b.set_defaults(func=run)
    return b


def _split(text, known, what):
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in known]
    if bad or not items:
        raise UsageError(f"--{what}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(known)}")
    return items


def _check_outputs(args):
    """``--plot`` needs matplotlib; ``--out`` and ``--plot`` need an existing directory."""
    from pathlib import Path

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(f"--plot needs matplotlib: {install_hint('plots')}") from None
    for path in (args.out, args.plot):
        if path and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"no such directory for {path!r}")


def run(args) -> int:
    from pathlib import Path

    known = [*REGISTRY, *(n + CAUSAL for n, m in REGISTRY.items() if m.causal)]
    methods = _split(args.methods, known, "methods") if args.methods else None
    goals = None
    if args.goals:
        try:
            goals = load_goals(args.goals)
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise UsageError(f"--goals: cannot read goals from {args.goals!r}: {exc}") from None
    if args.peers:
        return _peers(args)
    dtypes = _split(args.dtypes, ["float64", "float32"], "dtypes")
    if args.T_min > args.T_max:
        raise UsageError(f"--T-min ({args.T_min}) exceeds --T-max ({args.T_max})")
    _check_outputs(args)
    if args.from_json:
        try:
            suite = refresh(json.loads(Path(args.from_json).read_text()), goals)
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise UsageError(f"--from-json: cannot read a suite from {args.from_json!r}: {exc}") from None
        return _emit(suite, args)
    opts = dict(lengths=default_lengths(args.T_min, args.T_max), H=args.H, repeats=args.repeats,
                gemm_n=args.gemm_n, isolate=not args.no_isolate, fit_from=4096)
    if args.quick:
        opts.update(QUICK)
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    suite = run_suite(methods=methods, dtypes=dtypes, seed=args.seed, budget=args.budget, goals=goals,
                      large_T=args.large_T,
                      large_T_repeats=args.large_T_repeats, max_memory_bytes=args.max_memory_gib * GIB,
                      note=args.note, progress=progress, checkpoint=args.out, **opts)
    return _emit(suite, args)


def _peers(args) -> int:
    from pathlib import Path

    from refattn.bench.peers import PEERS, format_peers, judge, plot_peers, run_peers

    _check_outputs(args)
    if args.from_json:
        try:
            run = json.loads(Path(args.from_json).read_text())
            run["goals"] = judge(run)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"--from-json: cannot read a peers run from {args.from_json!r}: {exc}") from None
    else:
        try:
            lengths = [int(t) for t in args.peer_lengths.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--peer-lengths: expected comma-separated integers, got {args.peer_lengths!r}") from None
        if not lengths or min(lengths) < 128 or any(t % 128 for t in lengths):
            raise UsageError(f"--peer-lengths: each T must be a positive multiple of 128 (Reformer's two buckets "
                             f"of 64), got {args.peer_lengths!r}")
        only = _split(args.peer_families, list(PEERS), "peer-families") if args.peer_families else None
        missing = [spec[1] for fam, spec in PEERS.items() if spec and (only is None or fam in only)
                   and __import__("importlib").util.find_spec(spec[0]) is None]
        if missing:
            print(f"skipping the families whose peer is missing: {install_hint('peers')}", file=sys.stderr)
        quick = bool(args.quick)
        if quick:
            lengths = [256, 512]
        progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        run = run_peers(lengths, repeats=1 if quick else args.repeats, seed=args.seed, max_load=args.max_load,
                        quiet_wait_s=0.0 if quick else 90.0, quick=quick, only=only, progress=progress,
                        checkpoint=args.out)
    text = json.dumps(run, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        plot_peers(run, args.plot)
    print(text if args.json else format_peers(run))
    return 0


def _emit(suite, args) -> int:
    from pathlib import Path

    text = json.dumps(suite, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        plot_suite(suite, args.plot)
    print(text if args.json else format_suite(suite))
    return 0
