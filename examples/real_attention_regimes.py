"""Scatterbrain's regimes on real attention (Chen et al. 2021, Fig. 1), on the embedded MiniLM heads.

Run: `python examples/real_attention_regimes.py [--plot out.png] [--seq-len 128] [--budget 16]`

Divides the logits of the 9 embedded heads (all-MiniLM-L6-v2 on the Declaration of
Independence) by temperatures from 0.25 to 4 and compares, at a matched budget per row, the
best sparse and the best low-rank approximations of P and three methods (Performer,
Scatterbrain, a local window) against the exact oracle (refattn.evaluation.report, the `refattn report`
engine). Asserted: at the coldest temperature (low entropy) sparse beats low-rank, at the
hottest (high entropy) low-rank beats sparse, and entropy rises with temperature.
With --plot (needs matplotlib) it draws error against entropy.
"""

import argparse

from refattn._validation import InputError
from refattn.evaluation.datasets import embedded_attention
from refattn.evaluation.report import (
    DEFAULT_TEMPERATURES,
    format_comparison,
    plot_error_vs_entropy,
    run_comparison,
    summarise,
)

METHODS = ("best sparse", "best low-rank", "performer", "scatterbrain (smyrf)", "local window")


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=128, help="first tokens of each head (512 for all)")
    ap.add_argument("--budget", type=int, default=16, help="stored numbers per row")
    ap.add_argument("--plot", help="write error against entropy to this PNG (needs matplotlib)")
    args = ap.parse_args()
    data = embedded_attention().truncated(args.seq_len)
    rows = run_comparison(data, budget=args.budget, methods=METHODS, temperatures=DEFAULT_TEMPERATURES)
    print(format_comparison(rows, data.provenance))
    s = {(r["temperature"], r["method"]): r for r in summarise(rows)}
    cold, hot = min(DEFAULT_TEMPERATURES), max(DEFAULT_TEMPERATURES)
    ent = [s[(t, "best sparse")]["entropy"] for t in DEFAULT_TEMPERATURES]
    assert ent == sorted(ent), "entropy rises with temperature"
    assert s[(cold, "best sparse")]["error_P_mean"] < s[(cold, "best low-rank")]["error_P_mean"], "cold: sparse wins"
    assert s[(hot, "best low-rank")]["error_P_mean"] < s[(hot, "best sparse")]["error_P_mean"], "hot: low-rank wins"
    print(f"cold (temperature {cold:g}): sparse {s[(cold, 'best sparse')]['error_P_mean']:.3g} < low-rank "
          f"{s[(cold, 'best low-rank')]['error_P_mean']:.3g}; hot ({hot:g}): low-rank "
          f"{s[(hot, 'best low-rank')]['error_P_mean']:.3g} < sparse {s[(hot, 'best sparse')]['error_P_mean']:.3g}")
    try:
        out = plot_error_vs_entropy(rows, args.plot)
    except InputError as exc:  # matplotlib missing: the claims above are checked, the figure is not drawn
        print(exc)
        return
    if args.plot:
        print("wrote", out)


if __name__ == "__main__":
    main()
