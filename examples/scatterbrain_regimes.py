"""Scatterbrain's regimes (Chen et al. 2021, Fig. 1 and Sec. 3) on its clustered process.

Run: `python examples/scatterbrain_regimes.py [--plot out.png] [--T 256]`

Sweeps the inverse temperature beta and prints, at a matched budget of b numbers per row, the
relative Frobenius error of P for every method in refattn.evaluation.methods, with the mean row entropy.
Expected (and asserted here for the three oracles): low-rank wins at high entropy, sparse at low
entropy, sparse + low-rank in between. With --plot (needs matplotlib)
it draws error against entropy.
"""

import argparse

import numpy as np

from refattn import attention_probabilities
from refattn._validation import InputError
from refattn.evaluation.budget import matched_budget, row_entropy
from refattn.evaluation.datasets import clustered_inputs
from refattn.evaluation.figures import data_title, finish, label, legend_outside, pyplot_or_error, style
from refattn.evaluation.methods import REGISTRY

#: every method but the exact oracle itself (error 0)
METHODS = [name for name, m in REGISTRY.items() if not m.exact]


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--plot", help="write error-vs-entropy to this PNG (needs matplotlib)")
    args = ap.parse_args()
    betas = [1.0, 2.0, 5.0, 10.0, 16.0, 30.0, 100.0]
    table = []
    width = max(len(m) for m in METHODS)  # full names: a column is as wide as its longest name
    print(f"{'beta':>6} {'entropy':>8} " + " ".join(f"{m:>{width}}" for m in METHODS))
    for beta in betas:
        q, k, v = clustered_inputs(args.T, 32, 8, np.random.default_rng([int(beta * 10), 1]))
        ent = row_entropy(attention_probabilities(q, k, scale=beta))
        errs = {r.method: r.error_P for r in matched_budget(q, k, v, budget=args.budget, scale=beta, rng=0)}
        table.append((beta, ent, errs))
        print(f"{beta:>6g} {ent:>8.3f} " + " ".join(f"{errs[m]:>{width}.3g}" for m in METHODS))
    first, last = table[0][2], table[-1][2]
    assert first["best low-rank"] < first["best sparse"], "low-rank should win at high entropy"
    assert last["best sparse"] < last["best low-rank"], "sparse should win at low entropy"
    mixed_wins = [b for b, _, e in table if e["sparse + low-rank"] < min(e["best sparse"], e["best low-rank"])]
    print("sparse + low-rank beats both oracles at beta =", mixed_wins)
    assert mixed_wins, "sparse + low-rank should win somewhere in between"
    try:
        plt = pyplot_or_error()
    except InputError as exc:  # matplotlib missing: the claims above are checked, the figure is not drawn
        print(exc)
        return
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    ents = [t[1] for t in table]
    for m in METHODS:
        ax.plot(ents, [t[2][m] for t in table], ms=5, label=label(m), **style(m))
    ax.set_xlabel("mean row entropy of P (nats; beta falls to the right)")
    ax.set_ylabel("relative Frobenius error of P")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{data_title('clustered process (Chen et al. 2021, Sec. 3)')}\n"
                 f"budget {args.budget} numbers per row, T = {args.T}", fontsize=10)
    legend_outside(ax, title="solid: oracle, dashed: estimator")
    out = finish(fig, args.plot)
    if args.plot:
        print("wrote", out)

if __name__ == "__main__":
    main()
