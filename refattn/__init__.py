"""refattn: a reference implementation of efficient attention, and its theory test suite.

The exact oracle ([`refattn.exact`][refattn.exact]), its arbitrary-precision judge
([`refattn.mpmath_oracle`][refattn.mpmath_oracle]), input conventions ([`refattn.problem`][refattn.problem]), statistical
verdicts ([`refattn.stats`][refattn.stats]) and tools for your own tests ([`refattn.testing`][refattn.testing]).
"""

from refattn.exact import attention_backward, attention_probabilities, softmax_attention
from refattn.mpmath_oracle import attention_backward_mp, softmax_attention_mp
from refattn.problem import causal_mask

__version__ = "0.1.0"

__all__ = [
    "softmax_attention",
    "attention_probabilities",
    "attention_backward",
    "softmax_attention_mp",
    "attention_backward_mp",
    "causal_mask",
    "__version__",
]
