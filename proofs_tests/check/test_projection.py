"""The projection kind (refattn.check.projection): refattn's Gaussian and orthogonal samplers pass,
and each planted defect (plain QR, fixed-norm rows, a 2 percent row scale) fails its named check.

Statistical: the correct samplers are judged at alpha = 1e-6 each (false-failure probability <= 1e-6
per sampler and seed); the defects at the default alpha = 1e-3, each on two seeds (miss rates measured
by the slow tests of proofs_tests/check/test_planted.py).
"""

import pytest

from refattn.check.planted import CATALOGUE, CORRECT


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "projection"))
def test_correct_projection_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "projection"))
def test_planted_projection_defects_are_caught(name, seed, caught):
    caught(name, seed)


def _float32(kind, *, skew=1.0):
    """refattn's sampler of ``kind`` returning float32 (PyTorch's default dtype); ``skew`` stretches
    the first column (a planted fault the float32 allowance must not hide)."""
    import numpy as np

    from refattn.performer import projection

    def fn(m, d, seed):
        W = projection(kind, m, d, np.random.default_rng(seed))
        W[:, 0] *= skew
        return W.astype(np.float32)
    return fn


@pytest.mark.statistical
@pytest.mark.parametrize("kind", ["orthogonal", "regular", "gaussian"])
def test_float32_samplers_pass_at_float32_rounding(kind, seed):
    """Rounding to float32 moves orthogonality and norms by ~1e-7: allowed (1000 eps of float32).
    False-failure probability <= 1e-6 per sampler (alpha = 1e-6)."""
    from refattn.check import check

    rep = check(_float32(kind), "projection", projection=kind, seed=seed, alpha=1e-6, isolate=False)
    assert rep.passed, rep.format_table()


def test_a_float32_sampler_that_is_not_orthogonal_still_fails():
    """Power twin: 1% stretch of one column breaks orthogonality far beyond float32's allowance."""
    from refattn.check import check

    rep = check(_float32("orthogonal", skew=1.01), "projection", projection="orthogonal", n_draws=50,
                isolate=False)
    assert "orthogonal blocks" in {v.check for v in rep.failures}


def _sign_fixed_qr_float32_as_float64(m, d, seed):
    """performer-pytorch's recipe: Gaussian blocks orthogonalised by sign-fixed QR in float32, scaled by
    chi_d norms, returned upcast to float64 (``.double()``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-m // d)):
        Q, R = np.linalg.qr(rng.standard_normal((d, d)).astype(np.float32))
        Q = Q * np.sign(np.diag(R))[None, :]
        blocks.append(Q.T)
    W = np.concatenate(blocks)[:m] * np.sqrt(rng.chisquare(d, size=(m, 1))).astype(np.float32)
    return W.astype(np.float32).astype(np.float64)


@pytest.mark.statistical
def test_float32_sampler_returned_as_float64_is_judged_at_float32(seed):
    """A float32 sampler upcast to float64 is judged at the precision of its values (float32): its
    blocks are orthogonal to ~1e-7, within float32's allowance, though not float64's.
    False-failure probability <= 1e-6 (alpha = 1e-6)."""
    from refattn.check import check

    rep = check(_sign_fixed_qr_float32_as_float64, "projection", projection="orthogonal", seed=seed, alpha=1e-6,
                isolate=False)
    assert rep.passed, rep.format_table()


def test_a_genuine_float64_sampler_is_still_held_to_float64():
    """Power twin: the same rows plus noise of 1e-9 (no longer float32 numbers: a genuinely float64
    sampler) with float32-level orthogonality fail the float64 allowance."""
    import numpy as np

    from refattn.check import check

    def noisy(m, d, seed):
        W = _sign_fixed_qr_float32_as_float64(m, d, seed)
        return W + 1e-9 * np.random.default_rng(seed + 1).standard_normal(W.shape)

    rep = check(noisy, "projection", projection="orthogonal", n_draws=50, isolate=False)
    assert "orthogonal blocks" in {v.check for v in rep.failures}, rep.format_table()
