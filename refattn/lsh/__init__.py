"""Locality-sensitive hashing and the sparse attention built on it.

- [`hashes`][refattn.lsh.hashes]: SimHash, Reformer's angular hash, cross-polytope, E2LSH, SMYRF's
  asymmetric transform, sortLSH's order;
- [`sparse`][refattn.lsh.sparse]: the CSR [`Support`][refattn.lsh.sparse.Support], its builders (windows, blocks, top-k,
  buckets, chunks, balanced clusters, unions) and exact attention on a support;
- [`attention`][refattn.lsh.attention]: Reformer, SMYRF and HyperAttention;
- [`theory`][refattn.lsh.theory]: collision probabilities.

Derivations: the docs' LSH page.
"""

from refattn.lsh.attention import (
    LSHAttentionResult,
    hyper_attention,
    reformer_attention,
    smyrf_attention,
    smyrf_clusters,
)
from refattn.lsh.hashes import (
    angular_hash,
    angular_rotations,
    cross_polytope_hash,
    cross_polytope_rotations,
    e2lsh,
    e2lsh_draw,
    gray_rank,
    simhash,
    simhash_planes,
    smyrf_transform,
    sort_order,
)
from refattn.lsh.sparse import (
    Support,
    balanced_clusters,
    block_sparse,
    bucket_support,
    chunked_bucket_support,
    local_window,
    sparse_attention,
    support_probabilities,
    topk_support,
    union,
)

__all__ = [
    "LSHAttentionResult", "reformer_attention", "smyrf_attention", "smyrf_clusters", "hyper_attention",
    "simhash_planes", "simhash", "angular_rotations", "angular_hash", "cross_polytope_rotations",
    "cross_polytope_hash", "e2lsh_draw", "e2lsh", "smyrf_transform", "gray_rank", "sort_order",
    "Support", "sparse_attention", "local_window", "block_sparse", "topk_support", "bucket_support",
    "chunked_bucket_support", "balanced_clusters", "union", "support_probabilities",
]
