"""refattn.check.repeatable (``--determinism``, ``--batch-invariance``): correct kernels keep their
bits in every layout, the planted nondeterministic and batch-variant kernels fail with their
diagnosis, a kernel that takes no batch is skipped with a reason. Deterministic (the planted
nondeterministic kernel draws a fresh key order each call: it differs on every call pair)."""

import numpy as np
import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, exact_attention, key_order_attention

BITS = ("determinism", "batch invariance")


def _bits(rep):
    return {v.check: v for v in rep.verdicts if v.check in BITS}


@pytest.mark.parametrize("layout", ["TH", "BTH", "BNTH", "BTNH"])
def test_a_correct_kernel_keeps_its_bits_in_every_layout(layout):
    def fn(q, k, v, causal=False, mask=None):
        if layout == "BTNH":  # (B, T, N, H): the heads axis second-to-last
            q, k, v = (np.swapaxes(a, 1, 2) for a in (q, k, v))
            return np.swapaxes(exact_attention(q, k, v, causal=causal, mask=mask), 1, 2)
        return exact_attention(q, k, v, causal=causal, mask=mask)

    rep = check(fn, "exact", layout=layout, sizes="small", determinism=True, batch_invariance=True, isolate=False)
    bits = _bits(rep)
    assert set(bits) == set(BITS) and all(v.passed for v in bits.values()), rep.format_table()
    assert "--determinism --batch-invariance" in rep.command


@pytest.mark.parametrize("name, fault", [("keys summed in a new order each call", "different outputs"),
                                         ("key order from the batch size", "depends on the rest of the batch")])
def test_planted_bit_defects_fail_only_their_check(name, fault):
    planted = CATALOGUE[name]
    rep = check(planted.fn, "exact", sizes="small", isolate=False, **planted.options)
    assert [v.check for v in rep.failures] == [planted.fails], rep.format_table()  # accurate: the grid passes
    assert fault in rep.failures[0].meaning


def test_a_kernel_without_batch_dims_is_skipped_with_the_reason():
    def two_d_only(q, k, v):
        if q.ndim != 2:
            raise ValueError("2-D inputs only")
        return key_order_attention(q, k, v)

    bits = _bits(check(two_d_only, "exact", sizes="small", batch_invariance=True, determinism=True, isolate=False))
    assert bits["batch invariance"].passed is None and "does not take a batch" in bits["batch invariance"].meaning
    assert bits["determinism"].passed is None


def test_the_flags_belong_to_the_exact_kind():
    with pytest.raises(ValueError, match="^determinism: a bit-level check applies to --kind exact"):
        check(exact_attention, "backward", determinism=True)
    with pytest.raises(TypeError, match="^determinism"):
        check(exact_attention, "exact", determinism="yes")
