"""refattn's pytest plugin (refattn.pytest_plugin) in a user's project: a kernel's property test passes
with a correct kernel and fails with a planted bug; the seed sweep and the session's statistical
budget work as documented (and the budget is calibrated, with its power twin); ``for_kernel`` never
draws a keyword the kernel does not take; bad options are one-line errors.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from refattn import testing
from refattn.testing import attention_inputs

pytest_plugins = ["pytester"]

KERNEL = textwrap.dedent('''
    import numpy as np

    def forward(q, k, v, causal=False, mask=None):
        """A plain NumPy kernel: softmax(q k^T / sqrt(H)) v, bottom-right causal like flash-attn."""
        q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
        s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) * SCALE_ERROR
        T, S = s.shape[-2:]
        if causal:
            i, j = np.indices((T, S))
            s = np.where(j <= i + (S - T) + ALIGNMENT_ERROR, s, -np.inf)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        m = s.max(axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        p = np.exp(s - m)
        tot = p.sum(axis=-1, keepdims=True)
        return np.where(tot > 0, (p / np.where(tot > 0, tot, 1)) @ v, 0.0)
''')

TEST_FILE = textwrap.dedent('''
    import numpy as np
    from hypothesis import given, settings
    from refattn.testing import assert_close_to_reference, attention_inputs
    from mykernel import forward

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(attention_inputs(for_kernel=forward, dtypes=(np.float64,), max_batch_dims=0))
    def test_forward_matches_the_oracle(x):
        out = forward(x.q, x.k, x.v, **x.kernel_kwargs)
        assert_close_to_reference(out, x.q, x.k, x.v, **x.kwargs)

    def test_oracle_fixture_gives_output_lse_and_gradients(oracle):
        rng = np.random.default_rng(0)
        q, k, v = rng.normal(size=(4, 8)), rng.normal(size=(6, 8)), rng.normal(size=(6, 2))
        ref = oracle(q, k, v, causal=True)
        assert np.allclose(forward(q, k, v, causal=True), ref.out)
        dq, dk, dv = ref.grads(np.ones((4, 2)))
        assert dq.shape == q.shape and ref.lse.shape == (4,)
''')


def _project(pytester, scale_error=1.0, alignment_error=0):
    pytester.makepyfile(mykernel=KERNEL.replace("SCALE_ERROR", repr(scale_error))
                        .replace("ALIGNMENT_ERROR", str(alignment_error)))
    pytester.makepyfile(test_kernel=TEST_FILE)
    pytester.syspathinsert()


def test_a_correct_kernel_passes(pytester):
    _project(pytester)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


@pytest.mark.parametrize("bug", [{"scale_error": 1.1}, {"alignment_error": 1}], ids=["scale", "alignment"])
def test_a_planted_bug_fails(pytester, bug):
    """Power twins: a 10% scale error, and causal attention seeing one key too many (the other
    alignment when T > S) are both caught by the same project's property test."""
    _project(pytester, **bug)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)  # the property test and the oracle-fixture test both see it
    result.stdout.fnmatch_lines(["*test_forward_matches_the_oracle*"])


BLOCKED_KERNEL = textwrap.dedent('''
    import numpy as np

    def forward(q, k, v, causal=False, mask=None, key_lengths=None):
        """Blocked online softmax over keys in blocks of 4 (FlashAttention's recurrence), bottom-right
        causal; SCALE_ERROR plants a fault."""
        q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
        T, S = q.shape[-2], k.shape[-2]
        i, j = np.indices((T, S))
        allowed = np.ones((T, S), bool) if not causal else j <= i + (S - T)
        if mask is not None:
            allowed = allowed & mask
        if key_lengths is not None:
            allowed = allowed & (j < np.asarray(key_lengths)[..., None, None])
        shape = np.broadcast_shapes(q.shape[:-1] + (S,), allowed.shape)[:-1]
        m = np.full(shape + (1,), -np.inf)
        l = np.zeros(shape + (1,))
        acc = np.zeros(shape + (v.shape[-1],))
        for b in range(0, S, 4):
            s = q @ np.swapaxes(k[..., b:b + 4, :], -1, -2) / np.sqrt(q.shape[-1]) * SCALE_ERROR
            s = np.where(allowed[..., b:b + 4], s, -np.inf)
            new = np.maximum(m, s.max(axis=-1, keepdims=True))
            ref = np.where(np.isfinite(new), new, 0.0)
            p = np.exp(s - ref)
            alpha = np.where(np.isfinite(m), np.exp(m - ref), 0.0)
            l = alpha * l + p.sum(axis=-1, keepdims=True)
            acc = alpha * acc + p @ v[..., b:b + 4, :]
            m = new
        return np.where(l > 0, acc / np.where(l > 0, l, 1.0), 0.0)
''')

#: The recipe as docs/testing.md shows it (Hypothesis' default settings, no derandomize).
RECIPE_FILE = textwrap.dedent('''
    import numpy as np
    from hypothesis import given, settings
    from refattn.testing import assert_close_to_reference, attention_inputs
    from mykernel import forward

    @settings(deadline=None)
    @given(attention_inputs(for_kernel=forward, dtypes=(np.float64,)))
    def test_forward_matches_the_oracle(x):
        out = forward(x.q, x.k, x.v, **x.kernel_kwargs)
        assert_close_to_reference(out, x.q, x.k, x.v, **x.kwargs)
''')


def _recipe_outcomes(pytester, seeds, scale_error=1.0):
    pytester.makepyfile(mykernel=BLOCKED_KERNEL.replace("SCALE_ERROR", repr(scale_error)))
    pytester.makepyfile(test_recipe=RECIPE_FILE)
    pytester.syspathinsert()
    failed = []
    for s in seeds:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--hypothesis-seed={s}", "-q")
        if result.ret != 0:
            failed.append(int(s))
    return failed


def test_the_docs_recipe_passes_a_correct_kernel_on_fresh_hypothesis_seeds(pytester, seed):
    """The recipe of docs/testing.md, with a blocked online-softmax kernel (whose rounding differs from
    the oracle's), passes on 4 --hypothesis-seed values drawn from the `seed` fixture's generator (the
    slow twin runs 100); the same kernel with a 1% scale error fails on every one of 2 (power twin)."""
    seeds = np.random.default_rng([seed, 33]).integers(0, 2**31, size=4)
    assert _recipe_outcomes(pytester, seeds) == []
    assert _recipe_outcomes(pytester, seeds[:2], scale_error=1.01) == [int(s) for s in seeds[:2]]


@pytest.mark.slow
def test_the_docs_recipe_on_100_hypothesis_seeds(pytester):
    seeds = np.random.default_rng(2026).integers(0, 2**31, size=100)
    assert _recipe_outcomes(pytester, seeds) == []


def test_seed_sweep_and_the_budget_summary(pytester):
    pytester.makepyfile(test_stat=textwrap.dedent('''
        import numpy as np, pytest
        from refattn.testing import assert_unbiased

        def centred(rng, size):  # mean exactly 0: these assertions test the mechanism, not luck
            x = rng.normal(size=size)
            return x - x.mean(axis=0)

        @pytest.mark.statistical
        def test_null(seed):
            assert_unbiased(centred(np.random.default_rng(seed), (200, 3)), 0.0)

        @pytest.mark.statistical(assertions=2)
        def test_two(seed):
            rng = np.random.default_rng([seed, 1])
            assert_unbiased(centred(rng, 100), 0.0)
            assert_unbiased(centred(rng, 100), 0.0)

        @pytest.mark.statistical
        def test_overspent():
            rng = np.random.default_rng(2)
            assert_unbiased(centred(rng, 100), 0.0)
            assert_unbiased(centred(rng, 100), 0.0)
    '''))
    result = pytester.runpytest("-p", "no:cacheprovider", "--refattn-seeds", "0-4", "--refattn-alpha", "0.01")
    result.assert_outcomes(passed=10, failed=1)  # 5 seeds x 2 tests, and the overspent one
    result.stdout.fnmatch_lines(["*made 2 statistical assertions but declared 1*",
                                 "*11 statistical tests collected, 16 statistical assertions ran;*",
                                 "*family-wise false-failure bound: 0.01 <= 0.01*"])


def test_the_budget_cannot_be_dodged(pytester):
    """An overspent assertion fails its test even when the test catches the exception (a retry loop
    that would hide a biased estimator); an explicit alpha= inside a marked test is counted in the
    session's bound; ``statistical(3)`` declares 3 assertions, as ``assertions=3`` does."""
    pytester.makepyfile(test_dodge=textwrap.dedent('''
        import numpy as np, pytest
        from refattn.testing import assert_unbiased

        def centred(rng, size):
            x = rng.normal(size=size)
            return x - x.mean(axis=0)

        @pytest.mark.statistical
        def test_retry_loop():
            rng = np.random.default_rng(0)
            for _ in range(5):
                try:
                    assert_unbiased(centred(rng, 50), 0.0)
                except AssertionError:
                    continue

        @pytest.mark.statistical(3)
        def test_three_positional():
            rng = np.random.default_rng(1)
            for _ in range(3):
                assert_unbiased(centred(rng, 50), 0.0)

        @pytest.mark.statistical
        def test_explicit_alpha():
            assert_unbiased(centred(np.random.default_rng(2), 50), 0.0, alpha=0.5)
    '''))
    result = pytester.runpytest("-p", "no:cacheprovider", "--refattn-alpha", "0.01")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_retry_loop*", "*declared 1*",
                                 "*family-wise false-failure bound: 0.5* > (explicit alpha= beyond the budget) 0.01*"])


def test_a_huge_seed_range_is_a_usage_error(pytester):
    pytester.makepyfile(test_x="def test_x(seed):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--refattn-seeds", "0-10000000000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--refattn-seeds: expected*at most 100000 seeds*"])


@pytest.mark.parametrize("option, message", [
    (["--refattn-seeds", "a-b"], "--refattn-seeds: expected*"),
    (["--refattn-seeds", ""], "--refattn-seeds: no non-negative seeds*"),
    (["--refattn-alpha", "1.5"], "--refattn-alpha: must lie in (0, 1)*"),
    (["--refattn-alpha", "x"], "--refattn-alpha: expected a number*"),
])
def test_bad_options_are_one_line_errors(pytester, option, message):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_without_alpha_outside_a_marked_test_is_an_error():
    with pytest.raises(TypeError, match="^alpha: pass alpha="):
        testing.assert_unbiased(np.zeros((5, 2)), 0.0)


def _sessions_failing(share, n_sessions=300, n_tests=40, seed=0):
    """Sessions of n_tests null statistical assertions, each run through assert_unbiased with the
    given budget share (set as the plugin sets it); how many sessions had a false failure."""
    rng = np.random.default_rng(seed)
    failing = 0
    for _ in range(n_sessions):
        failed = False
        for _ in range(n_tests):
            token = testing._SESSION_ALPHA.set(testing._SessionAlpha(share, 1))
            try:
                testing.assert_unbiased(rng.normal(size=30), 0.0)
            except AssertionError:
                failed = True
            finally:
                testing._SESSION_ALPHA.reset(token)
        failing += failed
    return failing


@pytest.mark.statistical
def test_the_session_budget_is_calibrated(seed):
    """At a session budget of 0.05 split over 40 null tests (the plugin's share, 0.05/40), the
    family-wise false-failure rate over 300 sessions is at most 0.05: failing sessions are at
    most the 1 - 1e-6 quantile of Binomial(300, 0.05). Power twin: each test at the whole 0.05 (no
    split) fails in about 1 - 0.95^40 = 87% of sessions, above that bound. False-failure <= 1e-6."""
    bound = int(stats.binom.ppf(1 - 1e-6, 300, 0.05))
    assert _sessions_failing(0.05 / 40, seed=seed) <= bound
    assert _sessions_failing(0.05, seed=seed) > bound


SIGNATURES = [
    lambda q, k, v: None,
    lambda q, k, v, causal=False: None,
    lambda q, k, v, causal="bottom_right", mask=None: None,
    lambda q, k, v, is_causal=False, seqlens_k=None: None,
    lambda q, k, v, window=None, softcap=None, key_lengths=None: None,
    lambda q, k, v, **options: None,
    lambda q, k, v, bias=None, causal=True: None,
]
NAMES = [None, None, None, {"causal": "is_causal", "key_lengths": "seqlens_k"}, None, None, None]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_for_kernel_draws_only_what_the_kernel_takes(data):
    """Property: over several signatures (with and without a name mapping), the kernel's keywords
    are always among the ones it accepts, and causal is a bool when the kernel's default is one."""
    import inspect

    i = data.draw(st.integers(0, len(SIGNATURES) - 1))
    fn, names = SIGNATURES[i], NAMES[i]
    x = data.draw(attention_inputs(for_kernel=fn, names=names, max_len=6, max_head_dim=4, max_batch_dims=1))
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        assert set(x.kernel_kwargs) <= set(params) - {"q", "k", "v"}
    if i in (1, 3) and x.kernel_kwargs:
        assert all(isinstance(value, bool) for key, value in x.kernel_kwargs.items() if "causal" in key)
    assert set(x.kwargs) <= set(testing.KERNEL_OPTIONS)


def test_for_kernel_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="^for_kernel: expected the kernel"):
        attention_inputs(for_kernel=3)
    with pytest.raises(TypeError, match="^names: expected a dict"):
        attention_inputs(for_kernel=lambda q, k, v: 0, names=["causal"])
    with pytest.raises(ValueError, match="^names: unknown refattn options"):
        attention_inputs(for_kernel=lambda q, k, v: 0, names={"dropout": "p"})


def _flash_style(q, k, v, causal=False, key_lengths=None):
    """A kernel in flash-attn's layout (B, T, N, H) with per-batch key lengths (B,)."""
    from refattn import softmax_attention

    kl = None if key_lengths is None else np.asarray(key_lengths)[:, None]
    out = softmax_attention(np.swapaxes(q, 1, 2), np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2), causal=causal,
                            key_lengths=kl)
    return np.swapaxes(out, 1, 2)


@settings(max_examples=30, deadline=None)
@given(attention_inputs(for_kernel=_flash_style, layout="BTNH", dtypes=(np.float64,), max_len=8, max_head_dim=4))
def test_a_btnh_kernel_gets_its_layout(x):
    """layout="BTNH": the kernel's arrays are (B, T, N, H), its key lengths (B,), no mask; the oracle
    keeps (B, N, T, H), and the kernel's output swapped back matches it."""
    from refattn.testing import assert_close_to_reference

    q, k, v = x.kernel_args
    assert q.ndim == 4 and q.shape[1] == x.q.shape[2] and q.shape[2] == x.q.shape[1]
    assert "mask" not in x.kernel_kwargs
    if "key_lengths" in x.kernel_kwargs:
        assert x.kernel_kwargs["key_lengths"].shape == (q.shape[0],)
    out = _flash_style(q, k, v, **x.kernel_kwargs)
    assert_close_to_reference(np.swapaxes(out, 1, 2), x.q, x.k, x.v, **x.kwargs)


def test_rng_none_inside_a_hypothesis_example_replays():
    """assert_variance_matches(rng=None) inside @given draws its resamples from the seed Hypothesis
    gives Python's random for each example: running the examples again gives the same draws, so a
    failure replays exactly; outside Hypothesis rng is required."""
    seen = []

    @settings(max_examples=5, derandomize=True, database=None, deadline=None)
    @given(st.integers(0, 10))
    def record(i):
        seen.append(testing._example_rng(None).random())

    record()
    first = list(seen)
    seen.clear()
    record()
    assert seen == first and len(first) == 5
    with pytest.raises(TypeError, match="^rng: pass a Generator"):
        testing.assert_variance_matches(np.ones((10, 2)), 0.0, alpha=0.1)


def test_layout_bad_input():
    with pytest.raises(ValueError, match="^layout: expected 'BNTH' or 'BTNH'"):
        attention_inputs(layout="NHD")


def _gqa_kernel(q, k, v, causal=False):
    """Grouped-query attention in the (B, N, T, H) layout: query head h reads kv head h // (N / N_kv)."""
    from refattn import softmax_attention

    group = q.shape[1] // k.shape[1]
    return softmax_attention(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), causal=causal)


@settings(max_examples=30, deadline=None)
@given(attention_inputs(for_kernel=_gqa_kernel, grouped_heads=True, dtypes=(np.float64,), max_len=8,
                        max_head_dim=4))
def test_grouped_heads_give_the_kernel_fewer_kv_heads(x):
    """grouped_heads=True: the kernel's k, v have N_kv heads dividing the N query heads; the oracle's
    are those heads repeated per group, so a correct GQA kernel matches it."""
    from refattn.testing import assert_close_to_reference

    q, k, v = x.kernel_args
    assert q.shape[1] % k.shape[1] == 0 and x.k.shape[1] == q.shape[1]
    assert_close_to_reference(_gqa_kernel(q, k, v, **x.kernel_kwargs), x.q, x.k, x.v, **x.kwargs)

