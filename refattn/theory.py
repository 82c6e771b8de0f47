"""The index of every closed form refattn checks, re-exported from the method families so that
one import finds them:

- [`refattn.performer.theory`][refattn.performer.theory]: the softmax-kernel estimators (FAVOR+, hyperbolic,
  trigonometric, orthogonal features, FAVOR++, SMREG, ReLU), their MSEs and bounds, and the
  output's delta-method moments;
- [`refattn.lsh.theory`][refattn.lsh.theory]: collision probabilities (SimHash, E2LSH, angular, cross-polytope)
  and SMYRF's distance identity.
"""

from refattn.lsh.theory import angular_collision_mc, e2lsh_collision, simhash_collision, smyrf_distance
from refattn.performer.theory import (
    favorpp_optimal_A,
    favorpp_phi,
    favorpp_variance,
    mse_hyperbolic,
    mse_orthogonal,
    mse_positive,
    mse_trigonometric,
    orthogonal_cross_moment,
    pair_at_angle,
    positive_output_moments,
    relu_kernel,
    smreg_ratio,
    softmax_kernel,
    theorem2_bound,
    uniform_convergence_features,
)

__all__ = [
    "pair_at_angle", "softmax_kernel", "mse_trigonometric", "mse_positive", "mse_hyperbolic", "smreg_ratio",
    "orthogonal_cross_moment", "mse_orthogonal", "theorem2_bound", "favorpp_variance", "favorpp_optimal_A",
    "favorpp_phi", "uniform_convergence_features", "relu_kernel", "positive_output_moments",
    "simhash_collision", "e2lsh_collision", "angular_collision_mc", "smyrf_distance",
]
