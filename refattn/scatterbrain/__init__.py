"""Scatterbrain: sparse (LSH) + low-rank (random features) attention, unbiased (Chen et al. 2021),
and the robust PCA that motivates it.

- [`attention`][refattn.scatterbrain.attention]: the estimator and its matrix;
- [`rpca`][refattn.scatterbrain.rpca]: principal component pursuit and the fixed-budget decomposition.

Derivations: the docs' Scatterbrain page.
"""

from refattn.scatterbrain.attention import ScatterbrainResult, scatterbrain_attention, scatterbrain_matrix
from refattn.scatterbrain.rpca import (
    RPCANotConverged,
    RPCAResult,
    fixed_budget_decomposition,
    planted_low_rank_plus_sparse,
    robust_pca,
    shrink,
    svt,
)

__all__ = [
    "ScatterbrainResult", "scatterbrain_attention", "scatterbrain_matrix",
    "RPCAResult", "RPCANotConverged", "robust_pca", "fixed_budget_decomposition", "shrink", "svt",
    "planted_low_rank_plus_sparse",
]
