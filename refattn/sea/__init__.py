"""SEA: sparse attention on an estimated attention mask (Lee et al. 2024).

- [`estimate`][refattn.sea.estimate]: the compressed estimate ``A~`` in linear time (step 1);
- [`decoder`][refattn.sea.decoder]: decoders from the estimate to compressed logits (fixed, oracle, learned);
- [`mask`][refattn.sea.mask]: top-k on the estimate, upsampled to key columns, and what a mask loses (steps 2-3);
- [`attention`][refattn.sea.attention]: the whole pipeline, exact attention on the mask (step 4);
- [`metrics`][refattn.sea.metrics]: SEA against Performer and a window at the same memory, and its figure.

Derivations: the docs' SEA page.
"""

from refattn.sea.attention import SEAResult, sea_attention
from refattn.sea.decoder import (
    LogLinearDecoder,
    OracleDecoder,
    decoder_loss,
    distill_decoder,
    fixed_decoder,
    resample_bins,
)
from refattn.sea.estimate import (
    bin_starts,
    binned_attention,
    column_bins,
    compressed_softmax,
    kernel_estimate,
    positional_basis,
    row_lengths,
)
from refattn.sea.mask import captured_mass, kl_decomposition, sea_mask, upsample

__all__ = [
    "SEAResult", "sea_attention",
    "resample_bins", "fixed_decoder", "OracleDecoder", "LogLinearDecoder", "distill_decoder", "decoder_loss",
    "row_lengths", "bin_starts", "column_bins", "positional_basis", "kernel_estimate", "binned_attention",
    "compressed_softmax", "upsample", "sea_mask", "kl_decomposition", "captured_mass",
]
