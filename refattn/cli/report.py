"""``refattn report``: every method at a matched budget against the exact oracle, on the embedded
MiniLM attention or ``--data`` ([`refattn.evaluation.report`][refattn.evaluation.report])."""

from __future__ import annotations

import argparse
import json
import sys

from refattn.cli._args import positive_int, seed, temperatures
from refattn.evaluation import exact_paths
from refattn.evaluation import report as compare
from refattn.evaluation.datasets import embedded_attention, load_qkv
from refattn.evaluation.methods import REGISTRY
from refattn.evaluation.report import DEFAULT_METHODS, DEFAULT_TEMPERATURES


def add_parser(sub):
    rep = sub.add_parser("report", help="every method at a matched budget against the exact oracle, on embedded "
                                        "real attention (MiniLM) or --data")
    rep.add_argument("--data", metavar="NPZ", help="your own .npz with arrays q (..., T, H), k (..., S, H), v (..., S, Hv)")
    rep.add_argument("--budget", type=positive_int, default=None,
                     help="stored numbers per query row, 4 to the number of keys (default: 64, or all keys if fewer)")
    rep.add_argument("--methods", type=_method_list, default=DEFAULT_METHODS,
                     help="comma-separated method names, or 'all' (default: all but 'sparse + low-rank')")
    rep.add_argument("--temperature-sweep", type=temperatures, nargs="?", const=DEFAULT_TEMPERATURES, default=None,
                     metavar="T1,T2,...", help="divide the logits by each temperature "
                     f"(default list: {','.join(map(str, DEFAULT_TEMPERATURES))})")
    rep.add_argument("--plot", metavar="PNG", help="write error of P against entropy (needs matplotlib)")
    rep.add_argument("--exact-paths", action="store_true",
                     help="also compare the oracle's own paths (streaming, low precision, mpmath)")
    rep.add_argument("--seq-len", type=positive_int, default=512,
                     help="use the first SEQ_LEN tokens (and the exact-path problems' length)")
    rep.add_argument("--seed", type=seed, default=0, help="seed of the methods' draws (default 0)")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.set_defaults(func=run)
    return rep


def _method_list(text):
    names = list(REGISTRY) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in REGISTRY]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}; "
                                         f"expected 'all' or names from: {', '.join(REGISTRY)}")
    return tuple(names)


def run(args) -> int:

    if args.plot:
        compare.pyplot_or_error()  # fail before the work, not after
    data = (load_qkv(args.data) if args.data else embedded_attention()).truncated(args.seq_len)
    temps = args.temperature_sweep or (1.0,)
    budget = args.budget if args.budget is not None else min(64, data.k.shape[1])
    rows = compare.run_comparison(data, budget=budget, methods=args.methods,
                                  temperatures=temps, seed=args.seed)
    exact = None
    if args.exact_paths:
        exact = exact_paths.run_report(seq_len=args.seq_len, seed=args.seed)
    if args.plot:
        compare.plot_error_vs_entropy(rows, args.plot)
    if args.json:
        doc = {"data": data.name, "provenance": data.provenance, "summary": compare.summary_as_dicts(rows),
               "takeaway": compare.takeaway(compare.summarise(rows))[1:],
               "rows": compare.rows_as_dicts(rows)}
        if exact is not None:
            doc["exact_paths"] = exact_paths.rows_as_dicts(exact)
        print(json.dumps(doc, indent=2))
    else:
        print(compare.format_comparison(rows, data.provenance))
        if exact is not None:
            print("\nexact paths (dense, streaming, low precision; float64 vs mpmath on adversarial inputs):")
            print(exact_paths.format_table(exact))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


