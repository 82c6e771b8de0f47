r"""
Sparse versus low-rank: why Scatterbrain adds them
==================================================

Efficient attention approximates the attention matrix $P = \mathrm{softmax}(s\,QK^\top)$ with a
budget of a few numbers per query row. Two families spend it differently: **sparse** methods keep
the largest entries of each row (Reformer, a local window, top-k), **low-rank** methods keep a
factorisation $P \approx AB^\top$ (Performer, Nystrom). Chen et al. (2021, "Scatterbrain",
Sec. 3 and Fig. 1) observed that neither wins everywhere: the winner depends on how peaked the
rows are, i.e. on their **entropy**, and a sum sparse + low-rank (the idea of robust PCA) covers
both regimes. This tutorial reproduces that on real attention: the 9 heads of all-MiniLM-L6-v2
on the Declaration of Independence embedded in refattn, with their logits divided by a
temperature to sweep the entropy.
"""

# %%
# The data and the oracles
# ------------------------
# `best sparse` keeps the `b` largest entries of each row of the exact $P$; `best low-rank` is
# the truncated SVD of rank `b/2` (the same count of stored numbers). Both are **oracles**: they
# look at the exact matrix, so they bound what any sparse or low-rank method can reach at this
# budget. `sparse + low-rank` is the fixed-budget decomposition oracle. The error is
# $\|\hat P - P\|_F / \|P\|_F$ averaged over heads (values above 1 happen: an estimator can be
# further from $P$ than the zero matrix).
from refattn.evaluation.datasets import embedded_attention
from refattn.evaluation.report import format_comparison, run_comparison, summarise

data = embedded_attention().truncated(128)  # the first 128 tokens of each head: a quick run
temperatures = (0.25, 0.5, 1.0, 2.0, 4.0)
methods = ("best sparse", "best low-rank", "sparse + low-rank", "performer", "scatterbrain (smyrf)", "local window")
rows = run_comparison(data, budget=16, methods=methods, temperatures=temperatures, progress=False)
print(format_comparison(rows, data.provenance))

# %%
# The two regimes
# ---------------
# At low temperature each row is nearly one-hot (low entropy): a handful of entries hold the
# mass, and the sparse oracle is almost exact while a rank-8 matrix cannot represent many
# distinct one-hot rows. At high temperature the rows flatten towards uniform (high entropy): a
# smooth, nearly rank-one matrix, which low-rank captures and sparse cannot (it drops most of
# the mass). The sparse + low-rank oracle is at least as good as the better of the two at every
# temperature.
s = {(r["temperature"], r["method"]): r for r in summarise(rows)}
for t in temperatures:
    sp, lr, both = (s[(t, m)]["error_P_mean"] for m in ("best sparse", "best low-rank", "sparse + low-rank"))
    print(f"temperature {t:>4}: entropy {s[(t, 'best sparse')]['entropy']:.2f} nats; sparse {sp:.3f}, "
          f"low-rank {lr:.3f}, sparse + low-rank {both:.3f} -> {'sparse' if sp < lr else 'low-rank'} wins")
cold, hot = temperatures[0], temperatures[-1]
assert s[(cold, "best sparse")]["error_P_mean"] < s[(cold, "best low-rank")]["error_P_mean"]
assert s[(hot, "best low-rank")]["error_P_mean"] < s[(hot, "best sparse")]["error_P_mean"]

# %%
# The estimators
# --------------
# Performer (low-rank, by random features), Scatterbrain (its sparse part from LSH buckets plus
# Performer's low-rank part, corrected so the sum stays unbiased) and a local window (sparse,
# fixed) do not see $P$: they pay for estimating it. At this small budget and sequence length
# their errors sit well above the oracles'; the docs' *Scatterbrain* page measures where
# Scatterbrain beats both of its parts, and why.
for m in ("performer", "scatterbrain (smyrf)", "local window"):
    print(f"{m:>13}: " + ", ".join(f"T={t:g}: {s[(t, m)]['error_P_mean']:.2f}" for t in temperatures))

# %%
# The picture
# -----------
# Error of $P$ against the mean row entropy, one point per temperature: oracles solid, estimators
# dashed.
from refattn.evaluation.report import plot_error_vs_entropy

fig = plot_error_vs_entropy(rows)
