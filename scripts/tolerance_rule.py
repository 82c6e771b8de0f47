"""The tolerance rule's false alarms and power, measured on random problems.

Every correct kernel of `refattn.check.planted.RULE_CORRECT` (plain, blocked online softmax with
blocks of 1, 16, 64 and 128, log-space, a split-KV combine, float32, float16 and bfloat16 kernels
judged at their precision) and every defect of `RULE_DEFECTS` is judged by `refattn.tolerance` on the
same problems (`draw_rule_problem`: T, S up to 300, head dims up to 128, logit scales 0 to 30,
q = 0, masks, causal in both alignments, key padding). For each: how many problems failed, a 95%
Clopper-Pearson interval of the rate, the largest error / bound seen.

    python scripts/tolerance_rule.py [--problems 100000] [--seed 2026] [--out benchmarks/results/tolerance_rule.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clopper_pearson(failed, n, level=0.95):
    """The two-sided ``level`` Clopper-Pearson interval of a binomial rate (Clopper & Pearson 1934)."""
    from scipy.stats import beta

    a = (1 - level) / 2
    low = 0.0 if failed == 0 else float(beta.ppf(a, failed, n - failed + 1))
    high = 1.0 if failed == n else float(beta.ppf(1 - a, failed + 1, n - failed))
    return low, high


def main(argv=None):
    from refattn.check.planted import RULE_CORRECT, RULE_DEFECTS, measure_rule

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tolerance_rule.json"))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    stats = measure_rule(args.problems, args.seed, progress=True)
    rows = []
    for name, st in stats.items():
        low, high = clopper_pearson(st["failed"], st["problems"])
        rows.append(dict(st, name=name, kind="correct" if name in RULE_CORRECT else "defect",
                         rate=st["failed"] / st["problems"], rate_low=low, rate_high=high))
    out = {"what": "the tolerance rule (refattn.tolerance) on random problems: false alarms of correct kernels, "
                   "power against defects",
           "command": f"python scripts/tolerance_rule.py --problems {args.problems} --seed {args.seed}",
           "problems": args.problems, "seed": args.seed, "seconds": round(time.perf_counter() - start, 1),
           "machine": platform.machine(), "load_average": list(os.getloadavg()),
           "distribution": "T, S log-uniform in [1, 300]; H, Hv log-uniform in [1, 128]; 0-2 batch dims of 1-3; "
                           "logit std uniform in [0, 30], q = 0 one time in 20; mask, causal (either alignment), "
                           "key padding each with probability 1/3",
           "kernels": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['kind']:8s} {r['name']:{width}s} {r['precision']:9s} failed {r['failed']:6d} of {r['problems']} "
              f"(95% CI [{r['rate_low']:.2g}, {r['rate_high']:.2g}]), worst error/bound {r['worst_ratio']:.3g}")


if __name__ == "__main__":
    main()
