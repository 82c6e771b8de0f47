"""The fuzz grid: every public entry point, a valid base call, and its one-argument mutations.

:data:`ENTRY_POINTS` is the registry the fuzz suite reads (``test_fuzz.py`` fails when a public
callable of refattn has no entry here and is not listed in :data:`NOT_FUZZED` with a reason).
Each entry names its function, a valid call (arguments by name, in signature order) and the
kind of each argument, which picks its mutations (:func:`mutations`). A case is
``(entry, argument, mutation)``: the base call with that one argument replaced.

An outcome is clean when the call returns a valid result (every float array finite, ``-inf``
allowed where refattn documents it: log-scales and log-sum-exps of empty rows; ``+inf`` where it
is the documented verdict on a non-finite kernel output) or raises a ``TypeError``/``ValueError``
whose message starts with the name of one of its parameters (an ``AssertionError`` is the
documented verdict of the checks in :mod:`refattn.testing`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

_R = np.random.default_rng(20261129)
Q = _R.standard_normal((5, 4))
K = _R.standard_normal((6, 4))
V = _R.standard_normal((6, 3))
DOUT = _R.standard_normal((5, 3))
DLSE = _R.standard_normal(5)  # the lse's gradient, (T,)
#: packed variable-length inputs: two sequences of 2 and 3 queries, 3 and 3 keys, 2 query heads on 1
PQ, PK, PV = _R.standard_normal((5, 2, 4)), _R.standard_normal((6, 1, 4)), _R.standard_normal((6, 1, 3))
PDOUT = _R.standard_normal((5, 2, 3))
X = _R.standard_normal((3, 4)) * 0.4  # pairs for the kernel formulas
Y = _R.standard_normal((3, 4)) * 0.4
MAT = _R.standard_normal((6, 5))
SAMPLES = _R.standard_normal((40, 3))
BUCKETS_Q = np.array([0, 1, 0, 2, 1])
BUCKETS_K = np.array([1, 0, 2, 2, 0, 1])
W8 = _R.standard_normal((8, 4))


def _support():
    from refattn.lsh import local_window

    return local_window(5, 6, 1, 1)


def _estimate():  # a (T, K) log-estimate over K bins
    return np.log(np.full((5, 3), 1 / 3))


def _features():
    from refattn.performer import make_features

    return make_features(4, m=8, rng=0)


def _calibration():
    return [(Q, K)]


@dataclass(frozen=True)
class Entry:
    """One public entry point: ``fn`` (module:qualname), its valid call and its arguments' kinds.

    ``args`` maps each argument name to ``(kind, value)``; ``positional`` names the ones passed
    by position. A value may be a zero-argument callable (built fresh for every case).
    """

    fn: str
    args: dict
    positional: tuple = ()
    expect_neg_inf: bool = False  # -inf in the result is documented (log-scales, lse of empty rows)
    asserts: bool = False  # an AssertionError is its documented verdict (refattn.testing's checks)
    inf_fails: bool = False  # +inf in the result is its documented verdict (a non-finite kernel output)
    timeout: float = 60.0

    def resolve(self):
        module, _, qual = self.fn.partition(":")
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj


def _e(fn, positional, keywords=None, **flags):
    """``_e("mod:fn", {"q": ("farray", Q), ...}, {"scale": ("pfloat", None)})``."""
    args = dict(positional)
    args.update(keywords or {})
    return Entry(fn, args, tuple(positional), **flags)


QKV = {"q": ("farray", Q), "k": ("farray", K), "v": ("farray", V)}
ATTN_OPTS = {"scale": ("pfloat", None), "causal": ("causal", False), "key_lengths": ("opt_int", None)}
RNG = ("rng", 0)

ENTRY_POINTS: dict[str, Entry] = {e.fn: e for e in [
    # the exact oracle and its judges
    _e("refattn.exact:softmax_attention", QKV, {**ATTN_OPTS, "mask": ("opt_mask", None), "bias": ("opt_farray", None),
       "window": ("opt_window", None), "softcap": ("opt_pfloat", None), "sinks": ("opt_farray", None),
       "sink_tokens": ("int", 0), "return_lse": ("bool", False), "implementation": ("impl", "auto"), "dtype": ("dtype", None), "block_q": ("opt_int", None),
       "block_k": ("opt_int", None)}),
    _e("refattn.exact:attention_probabilities", {"q": ("farray", Q), "k": ("farray", K)},
       {**ATTN_OPTS, "return_lse": ("bool", False), "dtype": ("dtype", None)}, expect_neg_inf=True),
    _e("refattn.exact:attention_backward", {**QKV, "dout": ("farray", DOUT)},
       {**ATTN_OPTS, "sinks": ("opt_farray", None), "sink_tokens": ("int", 0), "dlse": ("farray", DLSE),
        "dtype": ("dtype", None)}),
    _e("refattn.exact:forward_error_bound", QKV, {**ATTN_OPTS, "dtype": ("dtype", None), "p_scale": ("opt_pfloat", None)}),
    _e("refattn.mpmath_oracle:softmax_attention_mp", QKV, {**ATTN_OPTS, "dps": ("int", 30), "as_float": ("bool", True)}),
    _e("refattn.mpmath_oracle:attention_backward_mp", {**QKV, "dout": ("farray", DOUT)}, {"dps": ("int", 30)}),
    _e("refattn.varlen:varlen_attention", {"q": ("farray", PQ), "k": ("farray", PK), "v": ("farray", PV),
       "cu_seqlens_q": ("iarray", np.array([0, 2, 5])), "cu_seqlens_k": ("iarray", np.array([0, 3, 6]))},
       {"seqused_k": ("opt_int", None), "return_lse": ("bool", False), "causal": ("causal", False)}),
    _e("refattn.varlen:varlen_backward", {"q": ("farray", PQ), "k": ("farray", PK), "v": ("farray", PV),
       "dout": ("farray", PDOUT), "cu_seqlens_q": ("iarray", np.array([0, 2, 5])),
       "cu_seqlens_k": ("iarray", np.array([0, 3, 6]))}, {"causal": ("causal", False)}),
    _e("refattn.paged:paged_attention", {"q": ("farray", np.ones((2, 1, 2, 4))),
       "k_cache": ("farray", _R.standard_normal((3, 2, 1, 4))), "v_cache": ("farray", _R.standard_normal((3, 2, 1, 3))),
       "block_table": ("iarray", np.array([[0, 1], [2, 0]])), "cache_seqlens": ("iarray", np.array([3, 1]))},
       {"causal": ("causal", False), "return_lse": ("bool", False)}),
    _e("refattn.splitkv:partial_states", {**QKV, "splits": ("int", 2)}, {"dtype": ("dtype", "float64")}),
    _e("refattn.splitkv:merge_states", {"outs": ("farray", np.stack([V, V])), "lses": ("farray", np.zeros((2, 6)))},
       {"dtype": ("dtype", "float64")}, expect_neg_inf=True),
    _e("refattn.splitkv:split_edges", {"S": ("int", 6), "splits": ("int", 2)}),
    _e("refattn.varlen:as_cu_seqlens", {"cu": ("iarray", np.array([0, 2, 5])), "total": ("int", 5)}),
    _e("refattn.precision:kernel_reference", {**QKV, "precision": ("precision", "float16")}, ATTN_OPTS),
    _e("refattn.precision:round_to", {"x": ("farray", Q), "precision": ("precision", "bfloat16")}),
    _e("refattn.precision:as_dtype", {"precision": ("precision", "float32")}),
    _e("refattn.precision:eps", {"precision": ("precision", "float16")}),
    _e("refattn.precision:as_precision", {"dtype": ("precision", "bfloat16")}),
    _e("refattn.precision:numpy_type", {"dtype": ("precision", "float32")}),
    _e("refattn.precision:precision_of", {"array": ("farray", Q)}),
    _e("refattn.precision:values_precision", {"array": ("farray", Q)}),
    _e("refattn.precision:values_eps", {"array": ("farray", Q)}),
    _e("refattn.precision:unit_roundoff", {"precision": ("precision", "bfloat16")}),
    _e("refattn.precision:tiny", {"precision": ("precision", "float16")}),
    _e("refattn.precision:largest", {"precision": ("precision", "float16")}),
    _e("refattn.precision:smallest_subnormal", {"precision": ("precision", "float16")}),
    _e("refattn.precision:given_dtype", {"precision": ("precision", "bfloat16")}),
    _e("refattn.precision:as_given", {"a": ("farray", Q), "precision": ("precision", "bfloat16")}),
    _e("refattn.precision:is_storage_only", {"precision": ("precision", "float16")}),
    _e("refattn.precision:compute_type", {"precision": ("precision", "float16")}),
    _e("refattn.precision:store", {"a": ("farray", Q), "precision": ("precision", "float16")}, expect_neg_inf=True,
       inf_fails=True),  # overflow to +-inf is its documented result (a kernel's store)
    _e("refattn.precision:recipe", {"precision": ("precision", "float8_e4m3fn")},
       {"accumulate": ("precision", "float32"), "round_logits": ("bool", False), "round_output": ("bool", True),
        "p_scale": ("opt_pfloat", None), "output": ("precision", "bfloat16")}),
    # the tolerance rule
    _e("refattn.tolerance:compare", {"actual": ("farray", V), "ref64": ("farray", V), "ref_lo": ("farray", V)},
       {"allowance": ("nnfloat", 0.0)}, asserts=True),
    _e("refattn.tolerance:check_attention_output", {"actual": ("farray", np.zeros((5, 3))), **QKV},
       {**ATTN_OPTS, "precision": ("precision", "float32")}, inf_fails=True),
    _e("refattn.tolerance:rounding_allowance", {**QKV, "precision": ("precision", "float16")}, ATTN_OPTS),
    # problem conventions
    _e("refattn.problem:attention_problem", QKV, ATTN_OPTS),
    _e("refattn.problem:score_problem", {"q": ("farray", Q), "k": ("farray", K)}, ATTN_OPTS),
    _e("refattn.problem:causal_mask", {"T": ("int", 5), "S": ("int", 6), "alignment": ("causal", "bottom_right")}),
    _e("refattn.problem:causal_alignment", {"causal": ("causal", True)}),
    _e("refattn.problem:causal_offset", {"T": ("int", 5), "S": ("int", 6), "alignment": ("causal", "top_left")}),
    _e("refattn.problem:window_mask", {"T": ("int", 5), "S": ("int", 6), "window": ("window", (1, 1))}),
    _e("refattn.problem:alibi_bias", {"slopes": ("farray", np.array([0.5, 0.25])), "T": ("int", 5), "S": ("int", 6)}),
    _e("refattn.problem:as_mask", {"mask": ("mask", np.eye(3, 4, dtype=bool))}),
    _e("refattn.problem:as_key_lengths", {"key_lengths": ("iarray", np.array([3, 6])), "S": ("int", 6)}),
    _e("refattn.problem:sum_to_shape", {"g": ("farray", np.ones((2, 5, 6))), "shape": ("shape", (5, 6))}),
    # statistics
    _e("refattn.stats:z_test_mean", {"samples": ("farray", SAMPLES), "truth": ("farray", np.zeros(3))},
       {"alpha": ("prob", 0.01), "axis": ("axis", 0)}),
    _e("refattn.stats:proportion_test", {"indicators": ("farray", (SAMPLES > 0).astype(float)),
                                         "p": ("farray", np.full(3, 0.5))}, {"alpha": ("prob", 0.01)}),
    _e("refattn.stats:bootstrap_variance_interval", {"samples": ("farray", SAMPLES)},
       {"alpha": ("prob", 0.1), "rng": RNG, "n_boot": ("int", 200)}),
    _e("refattn.stats:min_detectable_mean_shift", {"stderr": ("farray", np.full(3, 0.1))},
       {"false_fail_rate": ("prob", 0.01), "false_pass_rate": ("prob", 0.01), "entries": ("int", 3)}),
    _e("refattn.stats:min_draws_for_mean_shift", {"sd": ("pfloat", 1.0), "shift": ("pfloat", 0.1)},
       {"false_fail_rate": ("prob", 0.01), "entries": ("int", 3)}),
    _e("refattn.stats:min_detectable_rate_shift", {"p": ("farray", np.full(3, 0.3)), "n": ("int", 100)},
       {"false_fail_rate": ("prob", 0.01)}),
    _e("refattn.stats:min_draws_for_rate_shift", {"p": ("prob", 0.3), "shift": ("pfloat", 0.05)},
       {"false_fail_rate": ("prob", 0.01)}),
    _e("refattn.stats:min_detectable_ks_distance", {"n": ("int", 100)}, {"false_fail_rate": ("prob", 0.01)}),
    _e("refattn.testing:assert_unbiased", {"samples": ("farray", SAMPLES), "truth": ("farray", np.zeros(3))},
       {"alpha": ("prob", 1e-6)}, asserts=True),
    _e("refattn.testing:assert_variance_matches", {"samples": ("farray", SAMPLES), "expected": ("farray", np.ones(3))},
       {"alpha": ("prob", 1e-3), "rng": RNG, "n_boot": ("int", 2000)}, asserts=True),
    _e("refattn.testing:tolerance_check", {"actual": ("farray", V), "ref64": ("farray", V), "ref_lo": ("farray", V)},
       {"atol": ("opt_pfloat", None)}, asserts=True, inf_fails=True),
    _e("refattn.testing:check_close_to_reference", {"actual": ("farray", np.zeros((5, 3))), **QKV},
       {"dtype": ("dtype", None), "atol": ("opt_pfloat", None)}, asserts=True, inf_fails=True),
    # closed forms
    _e("refattn.performer.theory:pair_at_angle", {"angle_deg": ("float", 30.0), "norm_x": ("pfloat", 1.0),
                                                  "norm_y": ("pfloat", 0.5), "d": ("int", 4)}),
    *[_e(f"refattn.performer.theory:{f}", {"x": ("farray", X), "y": ("farray", Y)})
      for f in ("softmax_kernel", "favorpp_phi", "relu_kernel", "smreg_ratio")],
    *[_e(f"refattn.performer.theory:{f}", {"x": ("farray", X), "y": ("farray", Y), "m": ("int", 8)})
      for f in ("mse_trigonometric", "mse_positive", "mse_hyperbolic", "mse_orthogonal", "theorem2_bound")],
    _e("refattn.performer.theory:orthogonal_cross_moment", {"w": ("farray", np.array([0.3, 0.7])), "d": ("int", 4)}),
    _e("refattn.performer.theory:favorpp_variance", {"x": ("farray", X), "y": ("farray", Y), "A": ("float", -0.1)}),
    _e("refattn.performer.theory:favorpp_optimal_A", {"phi": ("farray", np.array(2.0)), "d": ("int", 4)}),
    _e("refattn.performer.theory:uniform_convergence_features", {"eps": ("pfloat", 0.1), "d": ("int", 4),
                                                                 "R": ("pfloat", 2.0)}),
    _e("refattn.performer.theory:positive_output_moments", {**QKV, "m": ("int", 8)}),
    _e("refattn.lsh.theory:simhash_collision", {"theta": ("farray", np.array([0.5, 1.0]))},
       {"r": ("int", 2), "tables": ("int", 2)}),
    _e("refattn.lsh.theory:e2lsh_collision", {"c": ("farray", np.array([0.5, 2.0])), "width": ("pfloat", 1.0)}),
    _e("refattn.lsh.theory:angular_collision_mc", {"theta": ("float", 0.5), "n_buckets": ("int", 4)},
       {"n_draws": ("int", 1000), "rng": RNG, "d": ("int", 3)}),
    _e("refattn.lsh.theory:smyrf_distance", {"q": ("farray", X), "k": ("farray", Y), "M": ("pfloat", 2.0)}),
    # Monte Carlo engine
    _e("refattn.montecarlo:kernel_samples", {"x": ("farray", X), "y": ("farray", Y)},
       {"estimator": ("str", "positive"), "m": ("int", 8), "n_draws": ("int", 20), "rng": RNG, "A": ("float", 0.0)}),
    _e("refattn.montecarlo:attention_samples", QKV, {"m": ("int", 8), "n_draws": ("int", 5), "rng": RNG}),
    _e("refattn.montecarlo:scatterbrain_samples", {"x": ("farray", X), "y": ("farray", Y)},
       {"m": ("int", 8), "r": ("int", 2), "n_draws": ("int", 20), "rng": RNG}),
    # Performer
    _e("refattn.performer.attention:performer_attention", QKV,
       {"m": ("int", 8), "features": ("str", "positive"), "projection": ("str", "orthogonal"), "rng": RNG,
        "scale": ("pfloat", None), "causal": ("causal", False), "stabilize": ("bool", True), "eps": ("nnfloat", 0.0),
        "implementation": ("impl", "auto"), "chunk_size": ("int", 128), "dtype": ("dtype", None)},
       expect_neg_inf=True),
    _e("refattn.performer.attention:causal_prefix_sums", {"phi_q": ("farray", np.abs(Q)), "phi_k": ("farray", np.abs(K)),
                                                "v": ("farray", V)}, {"chunk_size": ("int", 2)}),
    _e("refattn.performer.features:RandomFeatures", {"kind": ("str", "positive"), "W": ("farray", W8), "A": ("float", 0.0)}),
    _e("refattn.performer.features:make_features", {"d": ("int", 4)}, {"m": ("int", 8), "kind": ("str", "favorpp"), "rng": RNG,
                                                             "x": ("opt_farray", X), "y": ("opt_farray", Y)}),
    _e("refattn.performer.features:as_features", {"features": ("str", "hyperbolic"), "d": ("int", 4)},
       {"m": ("int", 8), "rng": RNG}),
    _e("refattn.performer.features:gauss_hermite_kernel", {"fn": ("callable", np.exp), "x": ("farray", X[0]),
                                                  "y": ("farray", Y[0])}, {"n_nodes": ("int", 20)}),
    *[_e(f"refattn.performer.projections:{f}", {"m": ("int", 8), "d": ("int", 4), "rng": RNG}, {"size": ("opt_int", 2)})
      for f in ("gaussian_projection", "orthogonal_projection", "regular_projection", "sorf_projection")],
    _e("refattn.performer.projections:haar_orthogonal", {"n": ("int", 3), "d": ("int", 4), "rng": RNG}),
    _e("refattn.performer.projections:projection", {"name": ("str", "orthogonal"), "m": ("int", 8), "d": ("int", 4),
                                                    "rng": RNG}),
    # hashes
    _e("refattn.lsh.hashes:simhash_planes", {"d": ("int", 4), "r": ("int", 3), "rng": RNG}, {"tables": ("int", 2)}),
    _e("refattn.lsh.hashes:simhash", {"x": ("farray", Q), "planes": ("farray", _R.standard_normal((4, 3)))}),
    _e("refattn.lsh.hashes:angular_rotations", {"d": ("int", 4), "n_buckets": ("int", 4), "rng": RNG},
       {"rounds": ("int", 2)}),
    _e("refattn.lsh.hashes:angular_hash", {"x": ("farray", Q), "R": ("farray", _R.standard_normal((4, 2)))}),
    _e("refattn.lsh.hashes:cross_polytope_rotations", {"d": ("int", 4), "rng": RNG}, {"rounds": ("int", 2)}),
    _e("refattn.lsh.hashes:cross_polytope_hash", {"x": ("farray", Q),
                                                  "rotations": ("farray", _R.standard_normal((2, 4, 4)))}),
    _e("refattn.lsh.hashes:e2lsh_draw", {"d": ("int", 4), "width": ("pfloat", 1.0), "rng": RNG}, {"tables": ("int", 2)}),
    _e("refattn.lsh.hashes:e2lsh", {"x": ("farray", Q), "a": ("farray", _R.standard_normal((4, 2))),
                                    "b": ("farray", np.array([0.1, 0.5])), "width": ("pfloat", 1.0)}),
    _e("refattn.lsh.hashes:smyrf_transform", {"q": ("farray", Q), "k": ("farray", K)}, {"M": ("opt_pfloat", None)}),
    _e("refattn.lsh.hashes:gray_rank", {"codes": ("iarray", np.array([0, 3, 1, 2]))}),
    _e("refattn.lsh.hashes:sort_order", {"buckets": ("iarray", BUCKETS_Q)}),
    # sparse supports and kernels
    _e("refattn.lsh.sparse:Support", {"indptr": ("iarray", np.array([0, 1, 3])), "indices": ("iarray", np.array([0, 0, 2])),
                                      "n_keys": ("int", 3)}),
    _e("refattn.lsh.sparse:Support.from_csr", {"indptr": ("iarray", np.array([0, 1, 3])),
                                               "indices": ("iarray", np.array([0, 0, 2])), "n_keys": ("int", 3)}),
    _e("refattn.lsh.sparse:Support.from_dense", {"mask": ("mask", np.eye(3, 4, dtype=bool))}),
    _e("refattn.lsh.sparse:Support.from_pairs", {"rows": ("iarray", np.array([0, 1, 1])),
                                                 "cols": ("iarray", np.array([2, 0, 1])),
                                                 "n_queries": ("int", 2), "n_keys": ("int", 3)}),
    _e("refattn.lsh.sparse:sparse_attention", {**QKV, "support": ("support", _support)},
       {"scale": ("pfloat", None), "return_lse": ("bool", False), "implementation": ("impl", "auto")}),
    _e("refattn.lsh.sparse:local_window", {"T": ("int", 5), "S": ("int", 6), "left": ("int", 1), "right": ("int", 1)},
       {"causal": ("causal", False)}),
    _e("refattn.lsh.sparse:block_sparse", {"T": ("int", 4), "S": ("int", 6), "block": ("int", 2),
                                           "layout": ("mask", np.array([[1, 0, 1], [0, 1, 1]], dtype=bool))}),
    _e("refattn.lsh.sparse:topk_support", {"q": ("farray", Q), "k": ("farray", K), "topk": ("int", 2)},
       {"causal": ("causal", False)}),
    _e("refattn.lsh.sparse:bucket_support", {"q_buckets": ("iarray", BUCKETS_Q), "k_buckets": ("iarray", BUCKETS_K)}),
    _e("refattn.lsh.sparse:chunked_bucket_support", {"q_buckets": ("iarray", BUCKETS_Q),
                                                     "k_buckets": ("iarray", BUCKETS_K), "chunk": ("int", 2)},
       {"lookback": ("int", 1), "same_bucket": ("bool", True), "implementation": ("impl", "auto")}),
    _e("refattn.lsh.sparse:balanced_clusters", {"q_keys": ("farray", Q[:, 0]), "k_keys": ("farray", K[:, 0]),
                                                "n_clusters": ("int", 2)}),
    _e("refattn.lsh.sparse:support_probabilities", {"q": ("farray", Q), "k": ("farray", K),
                                                    "support": ("support", _support)}),
    # LSH attention
    _e("refattn.lsh.attention:reformer_attention", QKV, {"n_buckets": ("int", 2), "chunk": ("int", 2), "rng": RNG,
                                                         "rounds": ("int", 2), "causal": ("causal", False),
                                                         "lookback": ("int", 1)}, expect_neg_inf=True),
    _e("refattn.lsh.attention:smyrf_attention", QKV, {"n_clusters": ("int", 2), "rng": RNG, "rounds": ("int", 1)}),
    _e("refattn.lsh.attention:smyrf_clusters", {"q": ("farray", Q), "k": ("farray", K)},
       {"n_clusters": ("int", 2), "rng": RNG, "rounds": ("int", 2)}),
    _e("refattn.lsh.attention:hyper_attention", QKV, {"block_size": ("int", 2), "n_samples": ("int", 2), "rng": RNG,
                                                      "bits": ("int", 2), "causal": ("causal", False)}),
    # Scatterbrain and robust PCA
    _e("refattn.scatterbrain.attention:scatterbrain_attention", {**QKV, "support": ("support", _support)},
       {"m": ("int", 8), "rng": RNG, "causal": ("causal", False), "implementation": ("impl", "auto")},
       expect_neg_inf=True),
    _e("refattn.scatterbrain.rpca:robust_pca", {"M": ("farray", MAT)}, {"lam": ("opt_pfloat", None),
                                                                       "tol": ("pfloat", 1e-7), "max_iter": ("int", 50),
                                                                       "rho": ("pfloat", 1.5)}),
    _e("refattn.scatterbrain.rpca:fixed_budget_decomposition", {"M": ("farray", MAT), "rank": ("int", 1),
                                                                "nnz": ("int", 4)}, {"n_iter": ("int", 5)}),
    _e("refattn.scatterbrain.rpca:shrink", {"X": ("farray", MAT), "tau": ("nnfloat", 0.3)}),
    _e("refattn.scatterbrain.rpca:svt", {"X": ("farray", MAT), "tau": ("nnfloat", 0.3)}),
    _e("refattn.scatterbrain.rpca:planted_low_rank_plus_sparse", {"n": ("int", 6), "rank": ("int", 1),
                                                                  "frac": ("prob", 0.1), "rng": RNG}),
    # SEA
    _e("refattn.sea.attention:sea_attention", QKV, {"n_bins": ("int", 3), "topk": ("int", 2), "m": ("int", 8),
                                                    "rng": RNG, "causal": ("causal", False), "grouped": ("bool", False),
                                                    "chunk_size": ("int", 128)}, expect_neg_inf=True),
    _e("refattn.sea.estimate:row_lengths", {"T": ("int", 5), "S": ("int", 6)}, {"causal": ("causal", False)}),
    _e("refattn.sea.estimate:bin_starts", {"lengths": ("iarray", np.full(5, 6)), "n_bins": ("int", 3)}),
    _e("refattn.sea.estimate:column_bins", {"columns": ("iarray", np.arange(6)), "length": ("int", 6),
                                            "n_bins": ("int", 3)}),
    _e("refattn.sea.estimate:positional_basis", {"S": ("int", 6), "n_basis": ("int", 3)}, {"basis": ("str", "bins")}),
    _e("refattn.sea.estimate:kernel_estimate", {"q": ("farray", Q), "k": ("farray", K)},
       {"n_basis": ("int", 3), "m": ("int", 8), "rng": RNG, "causal": ("causal", False)}, expect_neg_inf=True),
    _e("refattn.sea.estimate:binned_attention", {"q": ("farray", Q), "k": ("farray", K), "n_bins": ("int", 3)},
       {"causal": ("causal", False)}),
    _e("refattn.sea.estimate:compressed_softmax", {"logits": ("farray", Q @ K.T), "lengths": ("iarray", np.full(5, 6)),
                                                   "n_bins": ("int", 3)}, expect_neg_inf=True),
    _e("refattn.sea.mask:upsample", {"estimate": ("farray", _estimate), "lengths": ("iarray", np.full(5, 6)),
                                     "n_keys": ("int", 6)}, expect_neg_inf=True),
    _e("refattn.sea.mask:sea_mask", {"estimate": ("farray", _estimate), "lengths": ("iarray", np.full(5, 6)),
                                     "n_keys": ("int", 6), "topk": ("int", 2)}, {"grouped": ("bool", False)}),
    _e("refattn.sea.mask:kl_decomposition", {"teacher": ("farray", _estimate), "estimate": ("farray", _estimate),
                                             "lengths": ("iarray", np.full(5, 6))}),
    _e("refattn.sea.mask:captured_mass", {"q": ("farray", Q), "k": ("farray", K),
                                          "supports": ("supports", lambda: [_support()])}),
    _e("refattn.sea.decoder:resample_bins", {"E": ("farray", _estimate), "lengths": ("iarray", np.full(5, 6)),
                                             "n_keys": ("int", 6), "n_bins": ("int", 2)}, expect_neg_inf=True),
    _e("refattn.sea.decoder:fixed_decoder", {"E": ("farray", _estimate), "lengths": ("iarray", np.full(5, 6)),
                                             "n_keys": ("int", 6), "n_bins": ("int", 3)}, expect_neg_inf=True),
    _e("refattn.sea.decoder:distill_decoder", {"calibration": ("calibration", _calibration)},
       {"n_bins": ("int", 3), "W": ("farray", W8), "maxiter": ("int", 5)}),
]}

#: Public callables the grid leaves out, and why.
NOT_FUZZED = {
    "refattn.check": "refattn check runs user code in an isolated worker; its own suite fuzzes targets and options",
    "refattn.bench": "benchmark drivers: their inputs are the CLI's, validated and tested in proofs_tests/cli",
    "refattn.evaluation": "the report's internals: reached through the CLI, whose options are tested there",
    "refattn.distributed": "writes an output folder and may start a cluster; its inputs go through input_array and "
                           "the oracle's own checks (tested in test_distributed and cli/test_reference)",
    "refattn.testing:attention_inputs": "a Hypothesis strategy factory (draws are tested in test_testing)",
    "refattn.testing:assert_close_to_reference": "check_close_to_reference with an assert (fuzzed through it)",
    "refattn._validation:as_generator": "the rng check every entry's rng argument goes through (fuzzed there)",
    "refattn.lsh.sparse:union": "takes Support objects only: Support's construction is fuzzed",
    "refattn.scatterbrain.attention:scatterbrain_matrix": "takes a ScatterbrainResult only",
    "refattn.sea.decoder:decoder_loss": "the distillation objective, reached through distill_decoder",
    "refattn.sea.decoder:OracleDecoder": "a decoder object; reached through sea_attention(decoder=...)",
    "refattn.sea.decoder:LogLinearDecoder": "a decoder object; reached through distill_decoder and sea_attention",
    "refattn.performer.features:RandomFeatures.__call__": "reached through every estimator",
    "refattn.precision:Recipe": "a frozen record of recipe()'s validated knobs (recipe is fuzzed)",
    "refattn.tolerance:ToleranceCheck": "the rule's result record, built by compare (fuzzed)",
    "refattn.tolerance:backward_allowance": "the gradients' allowance: its inputs are the backward kind's own "
                                            "validated cases (tested in check/test_backward)",
    "refattn.tolerance:merge_allowance": "the merge's allowance: its inputs are the merge kind's own states, built "
                                         "by partial_states (fuzzed; tested in test_splitkv)",
}

RESULT_TYPES = ("Result", "Test", "Interval", "Check", "Inputs", "Problem", "NotConverged", "Error")


# ---------------------------------------------------------------- mutations by argument kind

def _f(name, make):
    return name, make


def _float_array_mutations(x):
    x = np.asarray(x, dtype=np.float64)
    out = [
        _f("rank+1", lambda: x[None]),
        _f("rank-1", lambda: x[0] if x.ndim else x[None]),
        _f("last dim +1", lambda: np.concatenate([x, np.ones(x.shape[:-1] + (1,))], -1) if x.ndim else x),
        _f("first dim +1", lambda: np.concatenate([x, x[:1]], 0) if x.ndim else x),
        _f("empty first dim", lambda: x[:0] if x.ndim else x),
        _f("empty last dim", lambda: x[..., :0] if x.ndim else x),
        _f("int", lambda: np.round(x).astype(np.int64)),
        _f("bool", lambda: x > 0),
        _f("complex", lambda: x.astype(complex)),
        _f("object", lambda: x.astype(object)),
        _f("str", lambda: x.astype(str)),
        _f("NaN", lambda: np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x)),
        _f("Inf", lambda: np.where(np.arange(x.size).reshape(x.shape) == 0, np.inf, x)),
        _f("-Inf", lambda: np.where(np.arange(x.size).reshape(x.shape) == 0, -np.inf, x)),
        _f("huge (1e300)", lambda: x * 1e300),
        _f("tiny (1e-300)", lambda: x * 1e-300),
        _f("float32", lambda: x.astype(np.float32)),
        _f("float16", lambda: x.astype(np.float16)),
        _f("non-contiguous", lambda: np.repeat(x, 2, axis=-1)[..., ::2] if x.ndim else x),
        _f("read-only", lambda: _readonly(x)),
        _f("list", lambda: x.tolist()),
        _f("ragged list", lambda: [[1.0, 2.0], [3.0]]),
        _f("scalar", lambda: 1.0),
        _f("None", lambda: None),
        _f("string", lambda: "abc"),
    ]
    return out


def _readonly(x):
    y = np.array(x)
    y.setflags(write=False)
    return y


def _int_array_mutations(x):
    x = np.asarray(x)
    return [
        _f("float", lambda: x.astype(float)),
        _f("fractional", lambda: x + 0.5),
        _f("NaN", lambda: np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x.astype(float))),
        _f("negative", lambda: x - 10),
        _f("huge", lambda: x + 2**40),
        _f("2-D", lambda: x[None]),
        _f("empty", lambda: x[:0]),
        _f("bool", lambda: x > 0),
        _f("str", lambda: x.astype(str)),
        _f("list", lambda: x.tolist()),
        _f("non-monotone", lambda: x[::-1].copy()),
        _f("uint8", lambda: x.astype(np.uint8) if x.min() >= 0 else x),
        _f("None", lambda: None),
    ]


def _int_mutations(v):
    return [_f("-1", lambda: -1), _f("0", lambda: 0), _f("2**40", lambda: 2**40), _f("2.5", lambda: 2.5),
            _f("'3'", lambda: "3"), _f("True", lambda: True), _f("None", lambda: None), _f("nan", lambda: float("nan")),
            _f("np.int64", lambda: np.int64(v) if isinstance(v, int) else v), _f("array", lambda: np.array([v, v]))]


def _float_mutations(v):
    return [_f("nan", lambda: float("nan")), _f("inf", lambda: float("inf")), _f("-inf", lambda: float("-inf")),
            _f("-1.0", lambda: -1.0), _f("0.0", lambda: 0.0), _f("'0.5'", lambda: "0.5"), _f("True", lambda: True),
            _f("1j", lambda: 1j), _f("1e300", lambda: 1e300), _f("-1e300", lambda: -1e300),
            _f("array", lambda: np.array([0.5, 0.5])), _f("np.float32", lambda: np.float32(v if v is not None else 1))]


MUTATIONS_BY_KIND = {
    "farray": _float_array_mutations,
    "opt_farray": lambda v: _float_array_mutations(v if v is not None else np.zeros((5, 6))),
    "iarray": _int_array_mutations,
    "mask": lambda v: [_f("int", lambda: np.asarray(v).astype(int)), _f("float", lambda: np.asarray(v) * 1.0),
                       _f("wrong shape", lambda: np.asarray(v)[:-1]), _f("1-D", lambda: np.asarray(v).ravel()),
                       _f("str", lambda: "all"), _f("None", lambda: None), _f("empty", lambda: np.asarray(v)[:0])],
    "opt_mask": lambda v: [_f("wrong shape", lambda: np.ones((4, 6), bool)), _f("float", lambda: np.ones((5, 6))),
                           _f("all False", lambda: np.zeros((5, 6), bool)), _f("str", lambda: "causal")],
    "int": _int_mutations,
    "opt_int": _int_mutations,
    "float": _float_mutations,
    "pfloat": _float_mutations,
    "nnfloat": _float_mutations,
    "opt_pfloat": _float_mutations,
    "prob": lambda v: _float_mutations(v) + [_f("1.0", lambda: 1.0), _f("1.5", lambda: 1.5)],
    "bool": lambda v: [_f("'no'", lambda: "no"), _f("2", lambda: 2), _f("None", lambda: None),
                       _f("np.bool_", lambda: np.bool_(not v)), _f("array", lambda: np.array([1, 0]))],
    "causal": lambda v: [_f("'left'", lambda: "left"), _f("2", lambda: 2), _f("None", lambda: None),
                         _f("'top_left'", lambda: "top_left"), _f("np.bool_", lambda: np.bool_(True)),
                         _f("array", lambda: np.array([True, False]))],
    "str": lambda v: [_f("'bogus'", lambda: "bogus"), _f("3", lambda: 3), _f("None", lambda: None),
                      _f("''", lambda: ""), _f("upper", lambda: str(v).upper())],
    "impl": lambda v: [_f("'flash'", lambda: "flash"), _f("'cuda'", lambda: "cuda"), _f("'numpy'", lambda: "numpy"),
                       _f("'dense'", lambda: "dense"), _f("None", lambda: None), _f("1", lambda: 1)],
    "dtype": lambda v: [_f("float16", lambda: np.float16), _f("'bfloat16'", lambda: "bfloat16"),
                        _f("float32", lambda: np.float32), _f("int32", lambda: np.int32), _f("'foo'", lambda: "foo"),
                        _f("complex", lambda: np.complex128), _f("1", lambda: 1)],
    "precision": lambda v: [_f("'foo'", lambda: "foo"), _f("int32", lambda: np.int32), _f("None", lambda: None),
                            _f("3", lambda: 3), _f("'float64'", lambda: "float64"),
                            _f("'bfloat16'", lambda: "bfloat16")],
    "rng": lambda v: [_f("None", lambda: None), _f("'x'", lambda: "x"), _f("-1", lambda: -1), _f("2.5", lambda: 2.5),
                      _f("True", lambda: True), _f("Generator", lambda: np.random.default_rng(1))],
    "axis": lambda v: [_f("5", lambda: 5), _f("-5", lambda: -5), _f("1.5", lambda: 1.5), _f("'0'", lambda: "0"),
                       _f("None", lambda: None)],
    "window": lambda v: [_f("(-2, 1)", lambda: (-2, 1)), _f("(1,)", lambda: (1,)), _f("'1'", lambda: "1"),
                         _f("(1.5, 1)", lambda: (1.5, 1)), _f("(2**40, 2**40)", lambda: (2**40, 2**40)),
                         _f("None", lambda: None), _f("(None, 0)", lambda: (None, 0))],
    "opt_window": lambda v: [_f("(-2, 1)", lambda: (-2, 1)), _f("(1,)", lambda: (1,)), _f("'1'", lambda: "1"),
                             _f("(1.5, 1)", lambda: (1.5, 1)), _f("(0, 0)", lambda: (0, 0))],
    "shape": lambda v: [_f("longer", lambda: (3,) + tuple(v)), _f("incompatible", lambda: (4, 6)),
                        _f("negative", lambda: (-5, 6)), _f("str", lambda: "5,6"), _f("None", lambda: None)],
    "callable": lambda v: [_f("not callable", lambda: 3), _f("returns NaN", lambda: (lambda u: np.full_like(u, np.nan))),
                           _f("wrong shape", lambda: (lambda u: np.ones(3))), _f("None", lambda: None)],
    "support": lambda v: [_f("tuple", lambda: (np.array([0, 1]), np.array([0]), 6)), _f("None", lambda: None),
                          _f("wrong n_keys", lambda: _support_for(5, 7)), _f("wrong n_queries", lambda: _support_for(4, 6)),
                          _f("empty rows", lambda: _support_for(5, 6, empty=True))],
    "supports": lambda v: [_f("one support", lambda: _support()), _f("[]", lambda: []), _f("[None]", lambda: [None]),
                           _f("wrong size", lambda: [_support_for(4, 6)])],
    "calibration": lambda v: [_f("[]", lambda: []), _f("array", lambda: Q), _f("[(q,)]", lambda: [(Q,)]),
                              _f("mismatched head dims", lambda: [(Q, K[:, :3])]), _f("None", lambda: None)],
}


def _support_for(T, S, empty=False):
    from refattn.lsh import Support

    if empty:
        return Support.from_pairs(np.array([0]), np.array([0]), T, S)
    from refattn.lsh import local_window

    return local_window(T, S, 1, 1)


@dataclass(frozen=True)
class Case:
    entry: str
    argument: str  # "" for the base call
    mutation: str  # "" for the base call

    @property
    def id(self):
        return f"{self.entry}[{self.argument}={self.mutation}]" if self.argument else f"{self.entry}[base]"


def mutations(entry: Entry, argument: str):
    kind, value = entry.args[argument]
    base = value() if callable(value) and kind not in ("callable",) else value
    return MUTATIONS_BY_KIND[kind](base)


def cases(entries=None) -> list[Case]:
    """Every case of the grid: each entry's base call, then each argument's mutations."""
    out = []
    for name in entries or ENTRY_POINTS:
        e = ENTRY_POINTS[name]
        out.append(Case(name, "", ""))
        for arg in e.args:
            out.extend(Case(name, arg, m) for m, _ in mutations(e, arg))
    return out


def build_call(case: Case):
    """``(fn, args, kwargs)`` for ``case``: the base call with one argument replaced."""
    e = ENTRY_POINTS[case.entry]
    values = {}
    for name, (kind, value) in e.args.items():
        values[name] = value() if callable(value) and kind != "callable" else value
        if isinstance(values[name], np.ndarray):
            values[name] = values[name].copy()
    if case.argument:
        make = dict(mutations(e, case.argument))[case.mutation]
        values[case.argument] = make()
    args = [values.pop(n) for n in e.positional]
    return e.resolve(), args, values


@dataclass
class Outcome:
    case: str
    status: str  # clean-error | clean-result | crash | timeout | unclean-error | nonfinite
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def clean(self):
        return self.status.startswith("clean")
