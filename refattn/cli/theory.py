"""``refattn theory CLAIM``: Monte Carlo against a closed form, with intervals ([`refattn.evaluation.claims`][refattn.evaluation.claims])."""

from __future__ import annotations

import argparse
import json

from refattn.cli._args import positive_float, positive_int, probability, seed
from refattn.evaluation.claims import CLAIM_HELP, CLAIMS, claim_settings, format_claim, rows_as_dicts, run_claim


def add_parser(sub):
    claims = "\n".join(f"  {name:<13} {CLAIM_HELP[name]}" for name in sorted(CLAIMS))
    th = sub.add_parser("theory", help="Monte Carlo against the closed forms (exit 1 if an interval misses)",
                        description="Monte Carlo estimates beside the closed forms, with intervals at level "
                                    "1 - alpha; exit 1 if an interval misses its closed form.",
                        epilog=f"claims:\n{claims}", formatter_class=argparse.RawDescriptionHelpFormatter)
    th.add_argument("claim", choices=sorted(CLAIMS), help="which claim's table (listed below)")
    th.add_argument("--draws", type=positive_int, default=20_000, help="Monte Carlo draws per setting")
    th.add_argument("--dim", type=positive_int, default=16, help="dimension d of the pairs")
    th.add_argument("--features", type=positive_int, default=16, help="projection rows m")
    th.add_argument("--norm", type=positive_float, default=0.5, help="norm of the scaled rows x, y")
    th.add_argument("--alpha", type=probability, default=1e-3, help="1 - confidence of the intervals")
    th.add_argument("--seed", type=seed, default=0)
    th.add_argument("--batches", type=positive_int, metavar="K",
                    help="split the draws into K independent batches (batch-means intervals); implied by --workers "
                         "or --scheduler (default 20 then)")
    th.add_argument("--workers", type=positive_int, help="run the batches on a local Dask cluster of this many processes")
    th.add_argument("--scheduler", metavar="ADDRESS", help="run the batches on the Dask cluster at this address")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=run)
    return th


def run(args) -> int:
    settings = dict(draws=args.draws, d=args.dim, m=args.features, norm=args.norm, alpha=args.alpha, seed=args.seed)
    used = claim_settings(args.claim, **settings)
    if args.batches or args.workers or args.scheduler:
        rows = _batched(args, settings)
        used["batches"] = args.batches or 20
    else:
        rows = run_claim(args.claim, **settings)
    if args.json:
        print(json.dumps({"claim": args.claim, "description": CLAIM_HELP[args.claim], "settings": used,
                          "rows": rows_as_dicts(rows, settings["alpha"])}, indent=2))
    else:
        print(format_claim(args.claim, rows, used))
    return 0 if all(r.covered for r in rows if r.empirical == r.empirical) else 1




def _batched(args, settings):
    from refattn.distributed import cluster, run_claim_batched

    with cluster(args.scheduler, args.workers) as client:
        return run_claim_batched(args.claim, batches=args.batches or 20, client=client, **settings)
