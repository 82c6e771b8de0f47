"""Performer: softmax attention estimated with random features (Choromanski et al. 2021).

- [`projections`][refattn.performer.projections]: the projection matrices (iid Gaussian, orthogonal, regular, SORF);
- [`features`][refattn.performer.features]: the feature maps (FAVOR+, hyperbolic, trigonometric, FAVOR++, ReLU)
  as one [`RandomFeatures`][refattn.performer.features.RandomFeatures] draw;
- [`attention`][refattn.performer.attention]: bidirectional and causal attention on those features;
- [`theory`][refattn.performer.theory]: the closed forms (means, variances, MSEs) the tests check.

Derivations: the docs' Performer page.
"""

from refattn.performer.attention import PerformerResult, causal_prefix_sums, performer_attention
from refattn.performer.features import FEATURE_KINDS, RandomFeatures, as_features, gauss_hermite_kernel, make_features
from refattn.performer.projections import (
    PROJECTIONS,
    gaussian_projection,
    haar_orthogonal,
    orthogonal_projection,
    projection,
    regular_projection,
    sorf_projection,
)

__all__ = [
    "PerformerResult", "performer_attention", "causal_prefix_sums",
    "RandomFeatures", "make_features", "as_features", "FEATURE_KINDS", "gauss_hermite_kernel",
    "gaussian_projection", "orthogonal_projection", "regular_projection", "sorf_projection", "haar_orthogonal",
    "projection", "PROJECTIONS",
]
