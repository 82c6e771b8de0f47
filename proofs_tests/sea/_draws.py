"""Draws shared by the SEA tests (imported as ``proofs_tests.sea._draws``)."""

import numpy as np
from hypothesis import strategies as st
from scipy import stats as _st

from refattn.sea import compressed_softmax, row_lengths

#: Each statistical assertion of the SEA tests runs at this false-failure probability.
ALPHA = 1e-6
Z_ONE_SIDED = float(_st.norm.ppf(1 - ALPHA))  # 4.75


def qkv(N=None, T=20, S=20, H=6, Hv=3, seed=0, norm=1.0):
    """Gaussian ``q (N?, T, H)``, ``k (N?, S, H)`` times ``norm``, ``v (N?, S, Hv)``."""
    rng = np.random.default_rng(seed)
    lead = () if N is None else (N,)
    return (rng.normal(size=lead + (T, H)) * norm, rng.normal(size=lead + (S, H)) * norm,
            rng.normal(size=lead + (S, Hv)))


@st.composite
def mask_cases(draw):
    """``(estimate (N, T, K), lengths, S, topk)``: ties in half the draws, a per-row budget in half."""
    N = draw(st.integers(1, 3))
    T = draw(st.integers(1, 25))
    S = draw(st.integers(1, 30))
    K = draw(st.integers(1, S))
    causal = draw(st.sampled_from([False, True, "top_left"]))
    seed = draw(st.integers(0, 2**31))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 3, size=(N, T, K)).astype(float) if ties else rng.normal(size=(N, T, K))
    L = row_lengths(T, S, causal)
    est = compressed_softmax(logits, L, K)
    per_row = draw(st.booleans())
    topk = rng.integers(1, S + 3, size=T) if per_row else draw(st.integers(1, S + 2))
    return est, L, S, topk
