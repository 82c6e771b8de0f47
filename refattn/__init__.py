"""refattn: a reference implementation of efficient attention, and its theory test suite.

The exact oracle (:mod:`refattn.exact`), its arbitrary-precision judge
(:mod:`refattn.precise`), input conventions (:mod:`refattn.problem`), statistical
verdicts (:mod:`refattn.stats`) and tools for your own tests (:mod:`refattn.testing`).
"""

from refattn.exact import attention_backward, attention_probabilities, softmax_attention
from refattn.precise import attention_backward_mp, softmax_attention_mp
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
