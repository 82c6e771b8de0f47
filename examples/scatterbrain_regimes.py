"""Scatterbrain's regimes (Chen et al. 2021, Fig. 1 and Sec. 3) on its clustered process.

Run: python examples/scatterbrain_regimes.py [--plot out.png] [--T 256]

Sweeps the inverse temperature beta and prints, at a matched budget of b numbers per row, the
relative Frobenius error of P for every method in refattn.evaluation.methods, with the mean row entropy.
Expected (and asserted here for the three oracles): low-rank wins at high entropy, sparse at low
entropy, sparse + low-rank in between. With --plot (needs matplotlib: pip install 'refattn[plots]')
it draws error against entropy.
"""

import argparse

import numpy as np

from refattn import attention_probabilities
from refattn.evaluation.budget import matched_budget, row_entropy
from refattn.evaluation.datasets import clustered_inputs
from refattn.evaluation.methods import REGISTRY

#: every method but the exact oracle itself (error 0)
METHODS = [name for name, m in REGISTRY.items() if not m.exact]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--plot", help="write error-vs-entropy to this PNG (needs matplotlib)")
    args = ap.parse_args()
    betas = [1.0, 2.0, 5.0, 10.0, 16.0, 30.0, 100.0]
    table = []
    print(f"{'beta':>6} {'entropy':>8} " + " ".join(f"{m[:13]:>13}" for m in METHODS))
    for beta in betas:
        q, k, v = clustered_inputs(args.T, 32, 8, np.random.default_rng([int(beta * 10), 1]))
        ent = row_entropy(attention_probabilities(q, k, scale=beta))
        errs = {r.method: r.error_P for r in matched_budget(q, k, v, budget=args.budget, scale=beta, rng=0)}
        table.append((beta, ent, errs))
        print(f"{beta:>6g} {ent:>8.3f} " + " ".join(f"{errs[m]:>13.3g}" for m in METHODS))
    first, last = table[0][2], table[-1][2]
    assert first["best low-rank"] < first["best sparse"], "low-rank should win at high entropy"
    assert last["best sparse"] < last["best low-rank"], "sparse should win at low entropy"
    mixed_wins = [b for b, _, e in table if e["sparse + low-rank"] < min(e["best sparse"], e["best low-rank"])]
    print("sparse + low-rank beats both oracles at beta =", mixed_wins)
    assert mixed_wins, "sparse + low-rank should win somewhere in between"
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: pip install 'refattn[plots]'")
            return
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ents = [t[1] for t in table]
        for m in METHODS:
            ax.plot(ents, [t[2][m] for t in table], marker="o", label=m)
        ax.set_xlabel("mean row entropy of P (nats)")
        ax.set_ylabel("relative Frobenius error of P")
        ax.set_yscale("log")
        ax.set_title(f"matched budget b = {args.budget} per row, T = {args.T}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
