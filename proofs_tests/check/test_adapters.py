"""Adapters (refattn.check.adapters): a framework's attention into the checker's contract in one call.
The JAX and PyTorch examples of the docs' check page run here when the extras are installed (they
skip otherwise); the signature the checker reads is tested without them. Deterministic.
"""

import inspect

import pytest

from refattn.check.adapters import jax_backward, jax_forward, torch_backward, torch_forward
from refattn.check.loader import accepts


@pytest.mark.parametrize("make", [torch_forward, jax_forward])
def test_the_adapter_shows_the_checker_the_keywords_it_maps(make):
    fn = make(lambda q, k, v, is_causal=False: q, keywords={"causal": "is_causal", "mask": "attn_mask"})
    assert list(inspect.signature(fn).parameters)[:3] == ["q", "k", "v"]
    assert accepts(fn, "causal") and accepts(fn, "mask") and not accepts(fn, "window_size")
    grads = (torch_backward if make is torch_forward else jax_backward)(lambda q, k, v: q, keywords={})
    assert list(inspect.signature(grads).parameters) == ["q", "k", "v", "dout"]


@pytest.mark.parametrize("make", [torch_forward, torch_backward, jax_forward, jax_backward])
def test_adapters_reach_the_worker_pickled_not_forked(make):
    """An adapter is a module-level object that pickles with its function, so the checker's worker is
    a fresh process that imports the framework itself; inherited by fork from a process whose JAX or
    torch threads hold a lock, it deadlocked until the start timeout (seen with JAX on 2 cores)."""
    import pickle
    from functools import partial

    from refattn.check.isolation import Worker
    from refattn.exact import softmax_attention

    adapter = make(partial(softmax_attention, implementation="dense"), dtype="float32", keywords={"causal": "causal"})
    again = pickle.loads(pickle.dumps(adapter))
    assert inspect.signature(again) == inspect.signature(adapter) and again.__name__ == adapter.__name__
    assert Worker._plan(adapter)[0][0] == "pickled"


def _in_a_fresh_process(framework, call):
    """Run ``proofs_tests.check._frameworks.<call>`` in a new interpreter (skipped without the framework):
    its threads never reach this process, whose checks fork workers for closures."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed (pip install -e '.[frameworks-cpu]')")
    proc = subprocess.run([sys.executable, "-c", f"from proofs_tests.check import _frameworks as f; f.{call}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_jax_dot_product_attention_in_float32_and_bfloat16():
    """jax.nn.dot_product_attention, (B, T, N, H), values with the head dim of q and k, causal top-left:
    a row that sees no key gets uniform weights over the masked keys (its mask is a large negative
    number, not -inf), so under the default convention (zeros) exactly the fully masked rows fail,
    named, and every other case passes at float32; with ``empty_rows="any"`` it passes at bfloat16.
    (The tile sizes and the other alignment: the slow twin below.)"""
    _in_a_fresh_process("jax", "jax_forward_small()")


@pytest.mark.slow
def test_jax_at_tile_sizes_and_claimed_bottom_right():
    """At the default tile sizes it passes with ``empty_rows="any"``; claimed bottom-right, exactly the
    causal cases with T != S fail, each diagnosed as the other alignment."""
    _in_a_fresh_process("jax", "jax_forward_tiles()")


def test_jax_gradients_through_the_backward_adapter():
    """Its gradients pass with ``empty_rows="any"`` (no gradient flows from a row that sees no key;
    under the default, zeros, the masked rows' uniform weights reach dv: the slow twin)."""
    _in_a_fresh_process("jax", "jax_backward_checks('any')")


@pytest.mark.slow
def test_jax_gradients_under_the_zeros_convention_fail_on_the_masked_rows_alone():
    _in_a_fresh_process("jax", "jax_backward_checks('zeros')")


def test_torch_scaled_dot_product_attention_in_float32():
    _in_a_fresh_process("torch", "torch_float32()")


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16", "float16"])
def test_torch_sdpa_passes_at_each_precision_with_its_claims(precision):
    """torch's scaled_dot_product_attention (CPU), (B, N, T, H), causal top-left: a correct kernel at
    each precision passes the default grid (tiles, masks, fully masked rows, no keys), with grouped
    query heads through enable_gqa; claimed bottom-right, its T != S causal cases fail, named. The
    false alarms over 30 seeds are in benchmarks/results/rule_audit.json (scripts/rule_audit.py)."""
    _in_a_fresh_process("torch", f"torch_sdpa({precision!r})")


def test_results_come_back_as_numpy():
    _in_a_fresh_process("jax", "jax_results_numpy()")


def test_a_closure_in_a_process_that_runs_jax_is_refused_not_forked():
    """A fork of a process with JAX's threads deadlocks: a callable that can only be forked (a closure)
    is a failing load that says what to pass instead, at once."""
    _in_a_fresh_process("jax", "jax_closure_is_refused()")
