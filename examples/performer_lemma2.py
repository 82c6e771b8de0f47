"""Performer's Lemma 2 and orthogonal features (Choromanski et al. 2021, Lemma 2, Theorem 2; Fig. 2).

Run: `python examples/performer_lemma2.py [--plot out.png] [--draws 5000] [--norm 0.5]`

Left: the MSE of the trigonometric and the positive (FAVOR+) estimators of SM(x, y) = exp(x.y)
against the angle between x and y (|x| = |y| = norm, d = 16, m = 16): the closed forms of
refattn.theory as curves, Monte Carlo (refattn theory lemma2) as points with intervals. The
positive estimator's MSE vanishes where SM is small (large angles); the trigonometric one's
does not (the ratio falls monotonically with the angle; it is below 1 from 135 degrees at
|x| = |y| = 0.5, earlier at larger norms). Right: orthogonal against iid features (the exact orthogonal MSE, derived in
docs/performer.md, against Lemma 2's iid MSE, with `refattn theory orthogonal`'s points).
Asserted here: every Monte Carlo interval covers its closed form, the MSE ratio positive / trigonometric
falls with the angle and is below 1 from 135 degrees, orthogonal < iid at every angle.
"""

import argparse

import numpy as np

from refattn import theory
from refattn._validation import InputError
from refattn.evaluation.claims import run_claim
from refattn.evaluation.figures import finish, pyplot_or_error

D, M = 16, 16


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument("--draws", type=int, default=5000, help="Monte Carlo draws per point")
    ap.add_argument("--norm", type=float, default=0.5, help="|x| = |y| (moderate: the MSE needs a finite 4th moment)")
    ap.add_argument("--plot", help="write the figure to this PNG (needs matplotlib)")
    args = ap.parse_args()

    lemma2 = run_claim("lemma2", draws=args.draws, d=D, m=M, norm=args.norm, alpha=1e-6, seed=0)
    orth = run_claim("orthogonal", draws=args.draws, d=D, m=M, norm=args.norm, alpha=1e-6, seed=1)
    checked = [r for r in lemma2 + orth if r.empirical == r.empirical]
    print(f"{'quantity':<22} {'setting':<10} {'closed form':>12} {'Monte Carlo':>12}  covers")
    for r in checked:
        print(f"{r.quantity:<22} {r.setting:<10} {r.closed_form:>12.4g} {r.empirical:>12.4g}  {r.covered}")
    assert all(r.covered for r in checked), "a Monte Carlo interval misses its closed form"

    angles = np.linspace(0, 179, 180)
    pairs = [theory.pair_at_angle(a, args.norm, args.norm, D) for a in angles]
    pos = np.array([theory.mse_positive(x, y, M) for x, y in pairs])
    trig = np.array([theory.mse_trigonometric(x, y, M) for x, y in pairs])
    ort = np.array([theory.mse_orthogonal(x, y, M) for x, y in pairs])
    ratio = pos[1:] / trig[1:]  # at angle 0, x = y and the trigonometric estimator is exact
    assert np.all(np.diff(ratio) < 0), "Lemma 2: MSE_pos / MSE_trig falls as SM = exp(x.y) falls"
    assert np.all(ratio[angles[1:] >= 135] < 1), "positive beats trigonometric where SM is small"
    assert np.all(ort < pos), "orthogonal features have a smaller MSE than iid ones"
    print(f"MSE ratio trig / positive at 179 degrees: {trig[-1] / pos[-1]:.3g}; "
          f"orthogonal / iid at 0 degrees: {ort[0] / pos[0]:.3g}")

    try:
        plt = pyplot_or_error()
    except InputError as exc:  # matplotlib missing: the claims above are checked, the figure is not drawn
        print(exc)
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, color, curve in (("MSE trigonometric", "C0", trig), ("MSE positive", "C1", pos)):
        kind = name.split()[1]
        a1.plot(angles, curve, color=color, label=f"{kind} (closed form)")
        rows = [r for r in lemma2 if r.quantity == name]
        a1.errorbar([float(r.setting.split()[1]) for r in rows], [r.empirical for r in rows],
                    yerr=[[r.empirical - r.low for r in rows], [r.high - r.empirical for r in rows]],
                    fmt="o", color=color, ms=4, capsize=3, label=f"{kind} (Monte Carlo, interval)")
    a1.set(xlabel="angle between x and y (degrees)", ylabel="MSE", yscale="log",
           title=f"Lemma 2 (d = {D}, m = {M}, |x| = |y| = {args.norm:g})")
    a1.legend(fontsize=8)
    a2.plot(angles, pos, color="C1", label="iid positive (Lemma 2)")
    a2.plot(angles, ort, color="C2", ls="--", label="orthogonal positive (exact, derived)")
    rows = [r for r in orth if r.quantity == "MSE orthogonal"]
    a2.errorbar([float(r.setting.split()[1]) for r in rows], [r.empirical for r in rows],
                yerr=[[r.empirical - r.low for r in rows], [r.high - r.empirical for r in rows]],
                fmt="s", color="C2", ms=4, capsize=3, label="orthogonal (Monte Carlo, interval)")
    a2.set(xlabel="angle between x and y (degrees)", ylabel="MSE", yscale="log", title="orthogonal vs iid")
    a2.legend(fontsize=8)
    out = finish(fig, args.plot)
    if args.plot:
        print("wrote", out)

if __name__ == "__main__":
    main()
