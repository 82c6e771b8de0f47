r"""
FAVOR+ from scratch
===================

Performer (Choromanski et al. 2021, "Rethinking Attention with Performers") replaces the softmax
kernel $SM(x, y) = e^{x \cdot y}$ by an inner product of random features,
$\phi(x) \cdot \phi(y)$, so that attention costs $O(T m)$ instead of $O(T S)$. This tutorial
builds FAVOR+'s positive features by hand and checks, by Monte Carlo against the closed forms,
the three facts the method rests on:

1. **Lemma 1**: the estimate is unbiased, $E[\phi(x)\cdot\phi(y)] = e^{x\cdot y}$;
2. **Lemma 2**: its mean squared error, and why positive features beat trigonometric ones where
   attention weights are small;
3. **orthogonal features** lower the error further (Theorem 2), but only if the random
   rotation is really uniform: a plain QR decomposition is not, and biases the estimate.

The derivations are on the docs' *Performer* page.
"""

# %%
# Positive random features by hand
# --------------------------------
# With $\omega_1, \dots, \omega_m \sim N(0, I_d)$,
# $\phi(x) = m^{-1/2} \exp(\omega_i \cdot x - |x|^2/2)_{i=1..m}$. Since
# $E[e^{\omega\cdot z}] = e^{|z|^2/2}$, the product $\phi(x)\cdot\phi(y)$ averages $m$ draws of
# $e^{\omega\cdot(x+y) - |x|^2/2 - |y|^2/2}$, whose mean is $e^{x\cdot y}$.
import numpy as np

from refattn import theory
from refattn.performer.features import make_features
from refattn.performer.projections import gaussian_projection, orthogonal_projection

d, m = 16, 16
rng = np.random.default_rng(0)
x, y = theory.pair_at_angle(60, 0.8, 0.8, d)  # |x| = |y| = 0.8, 60 degrees apart


def phi_by_hand(W, x):
    return np.exp(W @ x - x @ x / 2) / np.sqrt(W.shape[0])


W = gaussian_projection(m, d, rng)
features = make_features(d, kind="positive", W=W)
phi_refattn, log_scale = features(x[None], stabilize=None)
print("by hand equals refattn's features:", np.allclose(phi_by_hand(W, x), phi_refattn[0] * np.exp(log_scale[0])))
print(f"one draw: phi(x).phi(y) = {phi_by_hand(W, x) @ phi_by_hand(W, y):.4f}, SM(x, y) = {np.exp(x @ y):.4f}")

# %%
# Lemma 1: unbiased
# -----------------
# Average many independent draws; the mean's 99.9% interval must cover $e^{x\cdot y}$.
draws = 20_000
Ws = gaussian_projection(m, d, rng, size=draws)  # (draws, m, d)
estimates = np.einsum("nm,nm->n", np.exp(Ws @ x - x @ x / 2), np.exp(Ws @ y - y @ y / 2)) / m
mean, se = estimates.mean(), estimates.std(ddof=1) / np.sqrt(draws)
print(f"mean of {draws} draws: {mean:.4f} +- {3.29 * se:.4f} (99.9%); SM(x, y) = {np.exp(x @ y):.4f}")
assert abs(mean - np.exp(x @ y)) < 3.29 * se

# %%
# Lemma 2: the mean squared error
# -------------------------------
# For positive features, $MSE = \frac1m SM^2(x,y)\,(e^{|x+y|^2} - 1)$; for trigonometric ones
# ($\sin, \cos$ of $\omega\cdot x$), $\frac{1}{2m} e^{|x|^2+|y|^2}(1 - e^{-|x-y|^2})^2$. The
# positive one vanishes as $SM \to 0$ (large angles: the small attention weights that dominate
# a softmax row), the trigonometric one does not. Monte Carlo at a few angles, with 99.9%
# intervals for the MSE (a mean of squared errors):
angles_mc = np.array([0, 45, 90, 135, 179])
angles = np.linspace(0, 179, 180)
closed = {kind: np.array([getattr(theory, f"mse_{kind}")(*theory.pair_at_angle(a, 0.8, 0.8, d), m) for a in angles])
          for kind in ("positive", "trigonometric")}
mc = {}
for kind in ("positive", "trigonometric"):
    points = []
    for a in angles_mc:
        xa, ya = theory.pair_at_angle(a, 0.8, 0.8, d)
        sq = []
        for Wd in gaussian_projection(m, d, rng, size=4000):
            feat = make_features(d, kind=kind, W=Wd)
            px, lx = feat(xa[None], stabilize=None)
            py, ly = feat(ya[None], stabilize=None)
            sq.append((px[0] @ py[0] * np.exp(lx[0] + ly[0]) - np.exp(xa @ ya)) ** 2)
        sq = np.array(sq)
        points.append((sq.mean(), 3.29 * sq.std(ddof=1) / np.sqrt(len(sq))))
    mc[kind] = np.array(points)
    for a, (v, h), c in zip(angles_mc, mc[kind], np.interp(angles_mc, angles, closed[kind])):
        print(f"{kind:>13} at {a:3d} degrees: Monte Carlo {v:.3e} +- {h:.1e}, closed form {c:.3e}")

# %%
# Orthogonal features, and why a plain QR is biased
# -------------------------------------------------
# Drawing the $\omega_i$ of a block of $d$ mutually orthogonal (directions uniform on the sphere,
# norms $\chi_d$) lowers the MSE at every angle (Theorem 2; the exact orthogonal MSE is derived on
# the *Performer* page). The uniform rotation comes from the QR decomposition of a Gaussian
# matrix **with the signs of R's diagonal moved into Q** (Mezzadri 2007). LAPACK's plain
# (Householder) QR fixes those signs instead: the first direction's first coordinate is negative
# in every draw, so $E[\omega] \ne 0$ and the kernel estimate is biased for any $x + y$ with a
# component along the first axis. Monte Carlo of the mean of $\hat K / K$ for $x = y$ along the
# first axis, at growing norm:
norms = np.array([0.25, 0.5, 0.75, 1.0])
ratio = {}
for label, sign in (("orthogonal (sign-corrected QR)", True), ("plain QR", False)):
    Wo = orthogonal_projection(d, d, rng, size=20_000, sign_correction=sign)  # (draws, d, d)
    rows = []
    for r in norms:
        e = np.zeros(d)
        e[0] = r
        est = np.exp(Wo @ e - e @ e / 2)  # phi(x) * sqrt(m) with x = y = e
        k_hat = (est * est).mean(axis=-1) / np.exp(e @ e)
        rows.append((k_hat.mean(), 3.29 * k_hat.std(ddof=1) / np.sqrt(len(k_hat))))
    ratio[label] = np.array(rows)
    print(label, ": E[K_hat / K] =", ", ".join(f"{v:.3f} +- {h:.3f}" for v, h in rows))
assert np.all(np.abs(ratio["orthogonal (sign-corrected QR)"][:, 0] - 1) < ratio["orthogonal (sign-corrected QR)"][:, 1])
assert np.all(np.abs(ratio["plain QR"][:, 0] - 1) > ratio["plain QR"][:, 1])

orth_closed = np.array([theory.mse_orthogonal(*theory.pair_at_angle(a, 0.8, 0.8, d), m) for a in angles])

# %%
# The picture
# -----------
# Left: Lemma 2's closed forms (curves) and Monte Carlo (points with 99.9% intervals). Middle:
# orthogonal against iid positive features. Right: the bias of a plain QR.
import matplotlib.pyplot as plt

fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 4))
for kind, color in (("trigonometric", "C0"), ("positive", "C1")):
    a1.plot(angles, closed[kind], color=color, label=f"{kind} (closed form)")
    a1.errorbar(angles_mc, mc[kind][:, 0], yerr=mc[kind][:, 1], fmt="o", color=color, ms=4, capsize=3,
                label=f"{kind} (Monte Carlo, 99.9%)")
a1.set(xlabel="angle between x and y (degrees)", ylabel="MSE of the estimate of SM(x, y)", yscale="log", ylim=(1e-7, 20),
       title=f"Lemma 2 (d = m = {d}, |x| = |y| = 0.8)")
a1.legend(fontsize=7)
a2.plot(angles, closed["positive"], color="C1", label="iid positive")
a2.plot(angles, orth_closed, color="C2", ls="--", label="orthogonal positive (exact, derived)")
a2.set(xlabel="angle between x and y (degrees)", ylabel="MSE", yscale="log", title="Orthogonal beats iid (Theorem 2)")
a2.legend(fontsize=7)
for (label, vals), marker in zip(ratio.items(), ("o", "s")):
    a3.errorbar(norms, vals[:, 0], yerr=vals[:, 1], fmt=marker + "-", ms=4, capsize=3, label=label)
a3.axhline(1, color="k", lw=0.8, ls=":")
a3.set(xlabel="|x| = |y| (x = y along the first axis)", ylabel="E[K_hat / K] (99.9% interval)",
       title="A plain QR biases the estimate")
a3.legend(fontsize=7)
fig.tight_layout()
