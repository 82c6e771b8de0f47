"""The regime study: where Scatterbrain beats its parts on real attention, and why, by measurement.

Chen et al. (2021, "Scatterbrain", Sec. 3, Fig. 1) motivate sparse + low-rank with robust PCA:
attention matrices sit closer to sparse + low-rank than to either. This module measures that
claim on a dataset of heads across temperatures, at one budget of ``b`` numbers per query row:

- the **oracles** (they read the exact ``P``): best sparse, best low-rank, the best sparse +
  low-rank split, and robust PCA's split cut to the budget ([`rpca_split`][refattn.evaluation.regimes.rpca_split]);
- the **estimators**, ``draws`` independent seeded draws each (Performer, Scatterbrain in the
  paper's SMYRF configuration and in the SimHash one, Reformer, SMYRF, a local window), with a
  t-interval of the mean error over draws ([`run_regime_study`][refattn.evaluation.regimes.run_regime_study]);
- the **anatomy** of Scatterbrain's error ([`scatterbrain_anatomy`][refattn.evaluation.regimes.scatterbrain_anatomy]).
  Its unnormalised estimate is exact on its support ``S`` and Performer's estimate off it, with
  ``m = b/4`` features where Performer alone has ``m = b/2``. With ``V_ij`` the per-feature
  variance of the positive estimator of ``A_ij = exp(s q_i.k_j)`` (Choromanski et al. 2021,
  Lemma 2), the squared errors in expectation are ``sum_{ij not in S} V_ij / (b/4)`` and
  ``sum_ij V_ij / (b/2)``: Scatterbrain's unnormalised error is below Performer's exactly when
  its support holds more than half of ``sum V`` (derived on the docs' Scatterbrain page, "The
  regime study"). The anatomy reports that share, the mass of ``P`` the support captures, and the
  errors measured.

The error is the relative Frobenius error of the attention matrix, ``|P^ - P|_F / |P|_F``, as in
the report ([`refattn.evaluation.report`][refattn.evaluation.report]).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from refattn._validation import InputError, check_positive_int
from refattn.evaluation.budget import row_entropy
from refattn.evaluation.methods import (
    REGISTRY,
    SCATTERBRAIN_HASHES,
    best_split,
    method_rng,
    output_of,
    row_topk,
    truncated_svd,
)
from refattn.exact import attention_probabilities
from refattn.lsh.attention import smyrf_clusters
from refattn.lsh.sparse import union
from refattn.scatterbrain.rpca import RPCANotConverged, robust_pca

__all__ = ["ORACLES", "ESTIMATORS", "RegimeRow", "rpca_split", "run_regime_study", "summarise_study",
           "scatterbrain_anatomy", "synthetic_trend", "format_study"]

ORACLES = ("best sparse", "best low-rank", "sparse + low-rank", "robust PCA split")
ESTIMATORS = ("performer", "scatterbrain (smyrf)", "scatterbrain (simhash)", "reformer", "smyrf", "local window")


@dataclass
class RegimeRow:
    """One method on one head at one temperature: its error of ``P`` in each draw (one for an oracle)."""

    head: str
    temperature: float
    entropy: float
    method: str
    errors: list

    @property
    def mean(self) -> float:
        return float(np.mean(self.errors))


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


#: ALM iterations of robust PCA in the study: the primal residual is below 1e-9 well before, the
#: dual step (the stricter half of the stopping rule) is not, and the split is cut to the budget anyway
RPCA_ITERATIONS = 200


def rpca_split(P, budget, *, rpca=None):
    """Robust PCA's split of ``P`` cut to ``budget`` numbers per row: principal component pursuit
    (Candes et al. 2011; `RPCA_ITERATIONS` ALM steps) gives ``P = L + S``; keep ``L``'s best rank ``r``
    and the ``b - 2r`` largest entries of each row of ``S``, for the ``r`` in {0, b/8, b/4, 3b/8, b/2}
    (within ``L``'s rank) that fits ``P`` best. ``rpca``: a precomputed result for ``P``."""
    if rpca is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RPCANotConverged)  # the budget cut, not the ALM's last digits, decides
            rpca = robust_pca(P, max_iter=RPCA_ITERATIONS)
    res = rpca
    s = np.linalg.svd(res.L, compute_uv=False)
    rank = int(np.sum(s > 1e-9 * max(s[0], 1e-300)))
    best, err = None, np.inf
    for r in sorted({0, budget // 8, budget // 4, 3 * budget // 8, budget // 2}):
        if r > rank and r > 0:
            continue
        approx = (truncated_svd(res.L, r) if r else 0.0) + row_topk(np.abs(res.S), budget - 2 * r) * np.sign(res.S)
        e = np.linalg.norm(approx - P)
        if e < err:
            best, err = approx, e
    return best


def _oracle_matrix(name, P, budget):
    """An oracle's matrix for ``P``, by the registry's rules (best sparse: the ``b`` largest entries
    per row; best low-rank: rank ``b/2``; sparse + low-rank: the best split) or robust PCA's split."""
    if name == "robust PCA split":
        return rpca_split(P, budget)
    return {"best sparse": lambda: row_topk(P, budget), "best low-rank": lambda: truncated_svd(P, budget // 2),
            "sparse + low-rank": lambda: best_split(P, budget)}[name]()


def run_regime_study(data, *, budget=64, temperatures=(0.25, 0.5, 1.0, 2.0, 4.0), draws=5, seed=0,
                     oracles=ORACLES, estimators=ESTIMATORS, progress=None):
    """Rows ([`RegimeRow`][refattn.evaluation.regimes.RegimeRow]) for every temperature x head x method.

    Estimators get ``draws`` independent draws (``method_rng(seed, name, head, draw)``); oracles one
    evaluation. ``data``: an [`AttentionData`][refattn.evaluation.datasets.AttentionData] with ``T = S``.
    """
    from tqdm.auto import tqdm

    budget = check_positive_int(budget, "budget", minimum=4)
    draws = check_positive_int(draws, "draws", minimum=2)
    T, S = data.q.shape[1], data.k.shape[1]
    if T != S or budget > S:
        raise InputError(f"budget: the study needs T = S and budget <= S, got T = {T}, S = {S}, budget = {budget}")
    unknown = [m for m in estimators if m not in REGISTRY] + [m for m in oracles if m not in ORACLES]
    if unknown:
        raise InputError(f"methods: unknown {unknown[0]!r}")
    scale = 1.0 / np.sqrt(data.q.shape[-1])
    eye = np.eye(S)
    rows = []
    total = len(temperatures) * data.q.shape[0]
    with threadpool_limits(limits=1, user_api="blas"), \
            tqdm(total=total, desc="regimes", disable=(not progress) if progress is not None else None) as bar:
        for temp in temperatures:
            d = data if temp == 1.0 else data.tempered(temp)
            for h in range(d.q.shape[0]):
                q, k = d.q[h], d.k[h]
                P = attention_probabilities(q, k)
                base = dict(head=d.heads[h], temperature=float(temp), entropy=row_entropy(P))
                for name in oracles:
                    rows.append(RegimeRow(**base, method=name, errors=[_rel(_oracle_matrix(name, P, budget), P)]))
                for name in estimators:
                    method = REGISTRY[name]
                    errs = [_rel(output_of(method.run(q, k, eye, budget=budget, scale=scale,
                                                      rng=method_rng(seed, name, h, i))), P) for i in range(draws)]
                    rows.append(RegimeRow(**base, method=name, errors=errs))
                bar.update(1)
    return rows


def summarise_study(rows, *, level=0.95):
    """Per (temperature, method): the mean error over heads and draws, and a t-interval at ``level``
    for that mean from the per-draw means over heads (draws are independent; heads are fixed)."""
    groups = {}
    for r in rows:
        groups.setdefault((r.temperature, r.method), []).append(r)
    out = []
    for (temp, method), rs in groups.items():
        per_draw = np.mean(np.array([r.errors for r in rs]), axis=0)  # (draws,): mean over heads per draw
        mean = float(per_draw.mean())
        if per_draw.size > 1:
            half = float(stats.t.ppf(0.5 + level / 2, per_draw.size - 1) * per_draw.std(ddof=1) / np.sqrt(per_draw.size))
        else:
            half = 0.0
        out.append({"temperature": temp, "method": method, "entropy": float(np.mean([r.entropy for r in rs])),
                    "error_P": mean, "low": mean - half, "high": mean + half, "draws": int(per_draw.size)})
    return out


def _per_feature_variance(x, y):
    """``V_ij`` for all pairs: the per-feature variance of the positive estimator of ``exp(x_i.y_j)``,
    ``exp(2 x.y) (exp(|x + y|^2) - 1)`` (Choromanski et al. 2021, Lemma 2 with m = 1)."""
    xy = x @ y.T
    n2 = np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] + 2 * xy
    return np.exp(2 * xy) * np.expm1(n2)


def scatterbrain_anatomy(data, *, budget=64, temperature=1.0, draws=5, seed=0):
    """Per head: why Scatterbrain (the paper's configuration) does or does not beat Performer.

    Returns dicts with ``support_share`` (the share of the positive estimator's variance
    ``sum V_ij`` that falls on the support, averaged over ``draws`` hash draws; Scatterbrain's
    unnormalised error is below Performer's when it exceeds 1/2), ``captured_mass`` (the mean over
    rows of the mass of ``P`` on the support: what the sparse part gets exactly),
    ``keys_per_row`` (the support's mean row size), ``error_share_on_support`` (the share of
    Scatterbrain's squared error of ``P`` on its support: exact there before normalisation, so
    what lands there comes through the row sums) and the measured mean errors of ``P`` of
    Performer and Scatterbrain over ``draws`` draws.
    """
    d = data if temperature == 1.0 else data.tempered(temperature)
    T = d.q.shape[1]
    scale = 1.0 / np.sqrt(d.q.shape[-1])
    per_cluster = max(1, budget // (2 * SCATTERBRAIN_HASHES))
    out = []
    with threadpool_limits(limits=1, user_api="blas"):
        for h in range(d.q.shape[0]):
            q, k = d.q[h], d.k[h]
            P = attention_probabilities(q, k)
            V = _per_feature_variance(q * np.sqrt(scale), k * np.sqrt(scale))
            share, captured, size = [], [], []
            for i in range(draws):
                hash_rng = method_rng(seed, "anatomy", h, i)
                supports, _ = smyrf_clusters(q, k, n_clusters=max(1, T // per_cluster), rounds=SCATTERBRAIN_HASHES,
                                             rng=hash_rng, scale=scale)
                on = union(*supports).to_dense()
                share.append(float(V[on].sum() / V.sum()))
                captured.append(float(np.mean(np.sum(P * on, axis=1))))
                size.append(float(on.sum(1).mean()))
            errs, on_share = {}, []
            for name in ("performer", "scatterbrain (smyrf)"):
                e = []
                for i in range(draws):
                    res = REGISTRY[name].run(q, k, np.eye(T), budget=budget, scale=scale, rng=method_rng(seed, name, h, i))
                    diff = output_of(res) - P
                    e.append(_rel(output_of(res), P))
                    if name == "scatterbrain (smyrf)":  # where its error lies: on its support or off it
                        sq = diff * diff
                        on_share.append(float(sq[res.support.to_dense()].sum() / sq.sum()))
                errs[name] = float(np.mean(e))
            out.append({"head": d.heads[h], "temperature": float(temperature), "support_share": float(np.mean(share)),
                        "captured_mass": float(np.mean(captured)), "keys_per_row": float(np.mean(size)),
                        "chance_mass": float(np.mean(size)) / P.shape[1],
                        "error_share_on_support": float(np.mean(on_share)),
                        "error_performer": errs["performer"], "error_scatterbrain": errs["scatterbrain (smyrf)"]})
    return out


def synthetic_trend(lengths=(256, 512, 1024, 2048), *, betas=(4.0, 16.0), budget=64, draws=3, seed=0,
                    methods=("performer", "scatterbrain (smyrf)", "scatterbrain (simhash)", "smyrf")):
    """Scatterbrain against its parts at growing ``T`` on its own clustered process (Chen et al. 2021,
    Sec. 3: 8 clusters, inverse temperature ``beta``), at a fixed budget: ``{(T, beta, method):
    (mean error of P, standard deviation over draws)}``. Shows whether the claim appears with length."""
    from refattn.evaluation.datasets import clustered_inputs

    out = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for T in lengths:
            for beta in betas:
                q, k, _ = clustered_inputs(T, 32, 8, np.random.default_rng([seed, T, int(beta)]))
                P = attention_probabilities(q, k, scale=beta)
                for name in methods:
                    e = [_rel(output_of(REGISTRY[name].run(q, k, np.eye(T), budget=budget, scale=beta,
                                                           rng=method_rng(seed, name, T, i))), P) for i in range(draws)]
                    out[(T, beta, name)] = (float(np.mean(e)), float(np.std(e, ddof=1)))
    return out


def format_study(summary) -> str:
    """The study's table: per temperature, every method's mean error of ``P`` with its interval."""
    width = max(len(s["method"]) for s in summary)
    head = f"{'temp':>5} {'entropy':>7} {'method':<{width}} {'err P':>8} {'interval':>19}"
    lines = [head, "-" * len(head)]
    for s in sorted(summary, key=lambda s: (s["temperature"], s["error_P"])):
        iv = f"[{s['low']:.3f}, {s['high']:.3f}]" if s["draws"] > 1 else "(oracle)"
        lines.append(f"{s['temperature']:>5g} {s['entropy']:>7.3f} {s['method']:<{width}} {s['error_P']:>8.3f} {iv:>19}")
    return "\n".join(lines)
