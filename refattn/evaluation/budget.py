r"""The matched-budget study on synthetic data (Scatterbrain's main figure, Chen et al. 2021, Sec. 3 and 5).

At a budget of ``b`` stored numbers per query row, every method of the registry
([`refattn.evaluation.methods`][refattn.evaluation.methods], which states each method's budget rule) approximates the
attention matrix ``P`` (and the output ``O = P V``); [`matched_budget`][refattn.evaluation.budget.matched_budget] reports the relative
Frobenius errors ``|P^ - P|_F / |P|_F`` and ``|O^ - O|_F / |O|_F``, and [`row_entropy`][refattn.evaluation.budget.row_entropy] the
mean row entropy of ``P``.

On Scatterbrain's clustered process ([`refattn.evaluation.datasets.clustered_inputs`][refattn.evaluation.datasets.clustered_inputs]) the
inverse temperature ``beta`` moves attention from diffuse (high entropy: low-rank wins) to peaked
(low entropy: sparse wins), with sparse + low-rank best in between: the tests check the ordering,
not constants. The oracles materialise ``T x S``: this is a small-``T`` study tool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from refattn._validation import InputError, as_generator, check_positive_int
from refattn.evaluation.methods import REGISTRY, method_rng, output_of
from refattn.exact import attention_probabilities

__all__ = ["BudgetRow", "matched_budget", "row_entropy"]


@dataclass
class BudgetRow:
    method: str
    error_P: float
    error_O: float


def row_entropy(P):
    """Mean Shannon entropy (nats) of the rows of ``P``."""
    P = np.asarray(P, dtype=np.float64)
    return float(-(P * np.log(np.where(P > 0, P, 1.0))).sum(axis=-1).mean())



def matched_budget(q, k, v, *, budget, scale, rng, methods=None):
    """Errors of every method at ``budget`` numbers per row: a list of `BudgetRow`.

    ``methods``: registry names (default: every non-exact method). ``rng`` draws one master seed;
    each method then draws from its own stream ([`refattn.evaluation.methods.method_rng`][refattn.evaluation.methods.method_rng]).
    """
    budget = check_positive_int(budget, "budget", minimum=4)
    if q.shape[0] != k.shape[0]:
        raise InputError("q, k: the budget accounting here assumes T == S")
    if budget > k.shape[0]:
        raise InputError(f"budget: {budget} exceeds the number of keys {k.shape[0]}")
    methods = tuple(m for m in REGISTRY if not REGISTRY[m].exact) if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise InputError(f"method: unknown {unknown[0]!r}; expected one of {sorted(REGISTRY)}")
    seed = int(as_generator(rng).integers(2**63))
    P = attention_probabilities(q, k, scale=scale)
    O = P @ v
    nP, nO = np.linalg.norm(P), np.linalg.norm(O)
    rows = []
    eye = np.eye(k.shape[0])  # P^ = the method applied to V = I (every entry is linear in V)
    # one BLAS thread: the oracles' many small SVDs gain nothing from threads, and on a loaded
    # 2-core machine OpenBLAS's spinning threads made them up to 300x slower
    with threadpool_limits(limits=1, user_api="blas"):
        for name in methods:
            Ph = output_of(REGISTRY[name].run(q, k, eye, budget=budget, scale=scale, rng=method_rng(seed, name)))
            rows.append(BudgetRow(name, float(np.linalg.norm(Ph - P) / nP), float(np.linalg.norm(Ph @ v - O) / nO)))
    return rows
