r"""Tools for your own test suites: the FlashAttention tolerance rule, Hypothesis
strategies for attention inputs, and statistical assertions.

>>> from refattn.testing import assert_close_to_reference, attention_inputs

The tolerance rule is refattn's one rule ([`refattn.tolerance`][refattn.tolerance], the same numbers as
``refattn check``): an output passes when every entry is within the larger of the FlashAttention
allowance ``2 max|O_p - O_64| + 4 eps_p max|O_64|`` and the rigorous rounding allowance of a
correct kernel of its precision ``p``.
"""

from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass, field

import numpy as np

from refattn._validation import InputError, InputTypeError, as_float_array, check_bool, check_positive_int, check_real
from refattn.exact import softmax_attention
from refattn.precision import as_dtype, as_precision
from refattn.stats import bootstrap_variance_interval, z_test_mean
from refattn.tolerance import ToleranceCheck, check_attention_output, compare

__all__ = [
    "ToleranceCheck",
    "TILE_LENGTHS",
    "TILE_HEAD_DIMS",
    "tolerance_check",
    "check_close_to_reference",
    "assert_close_to_reference",
    "assert_unbiased",
    "assert_variance_matches",
    "AttentionInputs",
    "attention_inputs",
]


def tolerance_check(actual, ref64, ref_lo, *, atol=None, precision=None, allowance=0.0) -> ToleranceCheck:
    """The rule on given arrays: [`refattn.tolerance.compare`][refattn.tolerance.compare] (``precision`` defaults to
    ``ref_lo``'s stored precision; ``allowance``, the rigorous allowance, to none)."""
    return compare(actual, ref64, ref_lo, precision=precision, allowance=allowance, atol=atol)


def check_close_to_reference(actual, q, k, v, *, dtype=None, atol=None, **attention_kwargs) -> ToleranceCheck:
    """The rule for an attention output against refattn's oracle
    ([`refattn.tolerance.check_attention_output`][refattn.tolerance.check_attention_output]).

    ``dtype`` is the kernel's compute precision (any name of [`refattn.precision`][refattn.precision]; default:
    ``actual``'s stored precision, so a bfloat16 array is judged at bfloat16 and a float32 result
    upcast to float64 is judged as float64 unless ``dtype`` says otherwise);
    ``attention_kwargs`` (``scale``, ``causal``, ``mask``, ``bias``, ``key_lengths``, ``window``,
    ``softcap``, ``alibi_slopes``) are passed to the oracle.
    """
    dtype = None if dtype is None else as_precision(dtype, "dtype")
    return check_attention_output(actual, q, k, v, precision=dtype, atol=atol, **attention_kwargs)


def assert_close_to_reference(actual, q, k, v, *, dtype=None, atol=None, name="out", **attention_kwargs):
    """Assert that ``actual`` passes the FlashAttention rule against refattn's oracle.

    Prints the numbers first, so a failing log holds what a reviewer needs.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(5, 8)) for _ in range(3))
    >>> out32 = softmax_attention(q, k, v, dtype=np.float32)   # a float32 "kernel"
    >>> r = assert_close_to_reference(out32, q, k, v)  # doctest: +ELLIPSIS
    out: PASS: ...
    """
    result = check_close_to_reference(actual, q, k, v, dtype=dtype, atol=atol, **attention_kwargs)
    print(f"{name}: {result.summary()}")
    if not result.passed:
        raise AssertionError(f"{name}: {result.summary()}")
    return result


class _SessionAlpha:
    """A statistical test's share of the session budget (set by refattn's pytest plugin)."""

    def __init__(self, alpha, declared):
        self.alpha, self.declared, self.used = alpha, declared, 0
        self.explicit, self.explicit_count = 0.0, 0  # assertions given their own alpha=: counted at it
        self.overspent = ""  # set once: the test then fails whatever it does with the exception

    def take(self, name):
        if self.used >= self.declared:
            self.overspent = (f"{name}: this test made {self.used + 1} statistical assertions but declared "
                              f"{self.declared} (@pytest.mark.statistical(assertions=N)): its share of the "
                              f"session's false-failure budget would be overspent")
            raise AssertionError(self.overspent)
        self.used += 1
        return self.alpha

    def spend(self, alpha):
        self.explicit += alpha
        self.explicit_count += 1


#: The running statistical test's budget share, or None outside a marked test (refattn.pytest_plugin).
_SESSION_ALPHA: contextvars.ContextVar = contextvars.ContextVar("refattn_session_alpha", default=None)


def _alpha(alpha, name):
    """``alpha`` as given, else the running test's share of the session budget."""
    state = _SESSION_ALPHA.get()
    if alpha is not None:
        alpha = check_real(alpha, "alpha", minimum=0.0, maximum=1.0, low_open=True, high_open=True)
        if state is not None:  # inside a marked test: it spends the session's budget too, and says so
            state.spend(alpha)
        return alpha
    if state is None:
        raise InputTypeError("alpha: pass alpha=..., or call this inside a test marked @pytest.mark.statistical "
                             "in a run with --refattn-alpha (the session's budget)")
    return state.take(name)


def assert_unbiased(samples, truth, *, alpha: float | None = None, axis: int = 0, name: str = "estimate"):
    """Assert ``E[samples] == truth`` entrywise ([`refattn.stats.z_test_mean`][refattn.stats.z_test_mean]).

    The false-failure probability of this assertion is at most ``alpha`` (family-wise). Without
    ``alpha``, inside a test marked ``statistical`` of a run with ``--refattn-alpha``, it takes the
    test's share of the session's budget ([`refattn.pytest_plugin`][refattn.pytest_plugin]).
    """
    alpha = _alpha(alpha, name)
    result = z_test_mean(samples, truth, alpha=alpha, axis=axis)
    if not result.passed:
        raise AssertionError(f"{name}: mean differs from truth: {result.summary()}")
    return result


def _example_rng(rng):
    """``rng`` as given; ``None`` inside a Hypothesis example: a generator seeded from Python's ``random``, which
    Hypothesis seeds for every example and replays, so a failing example replays its resamples too."""
    if rng is not None:
        return rng
    try:
        from hypothesis.control import currently_in_test_context
    except ImportError:  # pragma: no cover - hypothesis is a test dependency
        currently_in_test_context = None
    if currently_in_test_context is not None and currently_in_test_context():
        import random

        return np.random.default_rng(random.getrandbits(64))
    raise InputTypeError("rng: pass a Generator or an int seed (None draws from the Hypothesis example, inside "
                         "a @given test only)")


def assert_variance_matches(samples, expected, *, alpha: float | None = None, rng=None, n_boot: int = 2000,
                            axis: int = 0, method: str = "normal", name: str = "estimate"):
    """Assert the bootstrap ``1 - alpha`` interval of ``Var[samples]`` contains ``expected``.

    ``alpha`` is split over the entries (Bonferroni). The default ``method="normal"``
    (bootstrap standard error) serves the small ``alpha`` of a test suite; see
    [`refattn.stats.bootstrap_variance_interval`][refattn.stats.bootstrap_variance_interval]. Coverage is asymptotic: use inputs
    whose fourth moment is finite and moderate, and a large sample.
    """
    alpha = _alpha(alpha, name)
    x = as_float_array(samples, "samples")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise InputError(f"axis: expected an axis of samples (shape {x.shape}), got {axis!r}")
    m = max(1, x.size // max(1, x.shape[axis]))  # entries tested
    res = bootstrap_variance_interval(x, alpha=alpha / m, rng=_example_rng(rng), n_boot=n_boot, axis=axis,
                                      method=method)
    expected = as_float_array(expected, "expected")
    try:
        if np.broadcast_shapes(expected.shape, np.shape(res.variance)) != np.shape(res.variance):
            raise ValueError
    except ValueError:
        raise InputError(f"expected: shape {expected.shape} does not broadcast to the entries' "
                         f"{np.shape(res.variance)}") from None
    inside = res.contains(expected)
    if not np.all(inside):
        bad = np.argwhere(~np.asarray(inside))[0] if np.ndim(inside) else ()
        exp = np.broadcast_to(np.asarray(expected, dtype=float), np.shape(res.variance))
        b = tuple(bad)
        raise AssertionError(
            f"{name}: expected variance {exp[b]:.6g} outside the bootstrap interval (level 1 - {alpha / m:.3g}) "
            f"[{np.asarray(res.low)[b]:.6g}, {np.asarray(res.high)[b]:.6g}] at entry {b} "
            f"(sample variance {np.asarray(res.variance)[b]:.6g}, n = {res.n}, {res.n_boot} resamples)"
        )
    return res


# ---------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------


@dataclass
class AttentionInputs:
    """One drawn attention problem: arrays plus the keyword arguments of the oracle."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kwargs: dict = field(default_factory=dict)
    #: The same options under the kernel's keyword names (``attention_inputs(for_kernel=..., names=...)``).
    kernel_kwargs: dict | None = None
    #: ``(q, k, v)`` in the kernel's layout (``attention_inputs(layout="BTNH")``); the oracle's otherwise.
    kernel_args: tuple | None = None

    def __post_init__(self):
        if self.kernel_kwargs is None:
            self.kernel_kwargs = dict(self.kwargs)
        if self.kernel_args is None:
            self.kernel_args = (self.q, self.k, self.v)

    def __repr__(self) -> str:  # Hypothesis prints this on failure: keep it readable
        return (
            f"AttentionInputs(q{self.q.shape} {self.q.dtype}, k{self.k.shape}, v{self.v.shape}, "
            f"kwargs={ {k: (v.shape if hasattr(v, 'shape') else v) for k, v in self.kwargs.items()} })"
        )


#: The oracle's options a kernel may take, and how attention_inputs draws each.
KERNEL_OPTIONS = ("causal", "mask", "key_lengths", "window", "softcap", "bias")


def _kernel_options(fn, names):
    """``{option: how}`` for the options ``fn`` takes (all of them without ``fn``)."""
    if names is not None and not (isinstance(names, dict) and all(isinstance(a, str) and isinstance(b, str)
                                                                    for a, b in names.items())):
        raise InputTypeError(f"names: expected a dict of refattn option -> kernel keyword, got {names!r}")
    unknown = set(names or {}) - set(KERNEL_OPTIONS)
    if unknown:
        raise InputError(f"names: unknown refattn options {sorted(unknown)}; expected some of {KERNEL_OPTIONS}")
    if fn is None:
        return {"causal": "name", "mask": True, "key_lengths": True}
    if not callable(fn):
        raise InputTypeError(f"for_kernel: expected the kernel (a callable), got {type(fn).__name__}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"for_kernel: cannot read the signature of {fn!r} ({exc}); pass names= and "
                             "masks=/causal= instead") from None
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    takes = {}
    for option in KERNEL_OPTIONS:
        keyword = (names or {}).get(option, option)
        if keyword in params or anything:
            default = params[keyword].default if keyword in params else None
            takes[option] = ("bool" if isinstance(default, bool) else "name") if option == "causal" else True
    return takes


#: The lengths of ``attention_inputs(sizes="tiles")``: 1, and one short of, at and past each
#: multiple of 64 (the tiles of fused kernels) up to 257.
TILE_LENGTHS = (1,) + tuple(n for m in range(64, 257, 64) for n in (m - 1, m, m + 1))
#: Its head dims: the ones fused kernels specialise for.
TILE_HEAD_DIMS = (16, 32, 64, 96, 128, 192, 256)


def attention_inputs(
    *,
    sizes: str = "small",
    max_len: int | None = None,
    max_head_dim: int | None = None,
    max_batch_dims: int = 2,
    dtypes=(np.float64, np.float32, np.float16),
    logit_std=(0.0, 8.0),
    masks: bool = True,
    causal: bool = True,
    allow_empty: bool = False,
    for_kernel=None,
    names=None,
    layout: str = "BNTH",
    grouped_heads: bool = False,
):
    """Hypothesis strategy for attention problems ([`AttentionInputs`][refattn.testing.AttentionInputs]).

    Shapes: ``sizes="small"`` (the default): ``T``, ``S`` in ``[1, max_len]`` (``[0, max_len]``
    with ``allow_empty``; ``max_len`` 33 unless given), head dims in ``[1, max_head_dim]`` (17);
    ``sizes="tiles"``: the lengths that cross the 64- and 128-row tiles of fused kernels
    (`TILE_LENGTHS`: 1 and one short of, at and past each multiple of 64 up to ``max_len``, 257
    unless given) and head dims from `TILE_HEAD_DIMS` up to ``max_head_dim`` (128), with windows
    wider than a tile. Then 0 to ``max_batch_dims`` leading dims of size 1 to 3 (with size-1 dims
    that broadcast). Sizes 1 and odd sizes are drawn often (Hypothesis favours boundaries). Values: ``q``, ``k`` Gaussian scaled so that the logits ``s q.k`` have
    standard deviation ``logit_std`` (a float or a ``(low, high)`` range: a temperature
    control; 0 gives uniform attention, 8 nearly one-hot). With ``masks``: optional boolean
    mask (possibly fully masking rows), key lengths; with ``causal``: an alignment.
    Arrays are drawn from a NumPy generator seeded by Hypothesis, so examples shrink by seed.

    ``for_kernel``: the kernel under test. Its signature is read and only the options it takes are
    drawn (``causal``, ``mask``, ``key_lengths``, ``window``, ``softcap``), ``causal`` as a bool
    when its default is one (``True`` = bottom-right, as flash-attn) and by alignment name
    otherwise; ``names`` maps refattn's option names to the kernel's keywords
    (``{"key_lengths": "seqlens_k", "causal": "is_causal"}``). The drawn case then holds
    ``kwargs`` for the oracle and ``kernel_kwargs`` for the kernel::

        @given(attention_inputs(for_kernel=my_kernel))
        def test_my_kernel(x):
            out = my_kernel(x.q, x.k, x.v, **x.kernel_kwargs)
            assert_close_to_reference(out, x.q, x.k, x.v, **x.kwargs)

    ``dtypes`` may include ``"bfloat16"`` (arrays of ``ml_dtypes.bfloat16``). ``layout`` is the
    kernel's: ``"BNTH"`` (refattn's ``(..., T, H)``, the default) or ``"BTNH"`` (flash-attn's
    ``(batch, T, heads, H)``): with ``"BTNH"`` every case has one batch and one heads axis, no mask
    (flash-style kernels take none), and ``x.kernel_args`` holds ``q, k, v`` in that layout (the
    oracle's ``x.q, x.k, x.v`` stay ``(B, N, T, H)``; compare ``np.swapaxes(out, -3, -2)``).
    ``grouped_heads``: grouped-query attention: the kernel's ``k``, ``v`` have ``N_kv`` heads, a
    divisor of the ``N`` query heads (query head ``h`` reads kv head ``h // (N / N_kv)``); the
    oracle's ``x.k``, ``x.v`` have them repeated to ``N``.
    """
    if layout not in ("BNTH", "BTNH"):
        raise InputError(f"layout: expected 'BNTH' or 'BTNH', got {layout!r}")
    grouped_heads = check_bool(grouped_heads, "grouped_heads")
    if sizes not in ("small", "tiles"):
        raise InputError(f"sizes: expected 'small' or 'tiles', got {sizes!r}")
    tiles = sizes == "tiles"
    # sizes bounded so a drawn problem fits in memory (T * S * H of at most about 2^26 float64s)
    max_len = check_positive_int((257 if tiles else 33) if max_len is None else max_len, "max_len", minimum=1,
                                 maximum=4096)
    max_head_dim = check_positive_int((128 if tiles else 17) if max_head_dim is None else max_head_dim,
                                      "max_head_dim", minimum=1, maximum=1024)
    lengths = [n for n in TILE_LENGTHS if n <= max_len] + ([0] if allow_empty else [])
    head_dims = [h for h in TILE_HEAD_DIMS if h <= max_head_dim] or [max_head_dim]
    max_batch_dims = check_positive_int(max_batch_dims, "max_batch_dims", minimum=0, maximum=4)
    bounds = logit_std if isinstance(logit_std, tuple) else (logit_std,)
    if len(bounds) not in (1, 2):
        raise InputError(f"logit_std: expected a number or a (low, high) pair, got {logit_std!r}")
    bounds = tuple(check_real(b, "logit_std", minimum=0.0) for b in bounds)
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise InputError(f"logit_std: low {bounds[0]} exceeds high {bounds[1]}")
    logit_std = bounds if len(bounds) == 2 else bounds[0]
    from hypothesis import strategies as st

    takes = _kernel_options(for_kernel, names)
    lo_len = 0 if allow_empty else 1

    @st.composite
    def strategy(draw):
        length = st.sampled_from(lengths) if tiles else st.integers(lo_len, max_len)
        head_dim = st.sampled_from(head_dims) if tiles else st.integers(1, max_head_dim)
        T, S, H, Hv = draw(length), draw(length), draw(head_dim), draw(head_dim)
        nb = 2 if layout == "BTNH" or grouped_heads else draw(st.integers(0, max_batch_dims))
        batch = tuple(draw(st.integers(1, 3)) for _ in range(nb))
        if grouped_heads:  # N query heads, N_kv | N kv heads
            n_kv = draw(st.integers(1, 2))
            batch = (batch[0], n_kv * draw(st.integers(1, 3)))
        # each of q, k, v may broadcast over some batch dims
        def bshape(tail):
            if layout == "BTNH" or grouped_heads:  # whole (B, N): such kernels do not broadcast
                return batch + tail
            return tuple(draw(st.sampled_from([b, 1])) for b in batch) + tail

        seed = draw(st.integers(0, 2**32 - 1))
        dtype = as_dtype(as_precision(draw(st.sampled_from(list(dtypes))), "dtypes"))
        if isinstance(logit_std, tuple):
            std = draw(st.floats(*logit_std, allow_nan=False, allow_infinity=False))
        else:
            std = float(logit_std)
        rng = np.random.default_rng(seed)
        # s q.k with q, k ~ N(0, I_H) and s = 1/sqrt(H) has standard deviation 1.
        q = (rng.standard_normal(bshape((T, H))) * std).astype(dtype)
        k = rng.standard_normal(bshape((S, H))).astype(dtype)
        v = rng.standard_normal(bshape((S, Hv))).astype(dtype)
        kwargs = {}
        if causal and takes.get("causal") and draw(st.booleans()):
            kind = takes["causal"]
            kwargs["causal"] = True if kind == "bool" else draw(st.sampled_from([True, "bottom_right", "top_left"]))
        if masks and takes.get("mask") and layout == "BNTH" and draw(st.booleans()):
            density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
            kwargs["mask"] = rng.random(bshape((T, S))) < density
        if masks and takes.get("key_lengths") and draw(st.booleans()):  # per batch item (all heads) in BTNH
            kwargs["key_lengths"] = rng.integers(0, S + 1, size=(batch[0], 1) if layout == "BTNH" else bshape(()))
        if for_kernel is not None and takes.get("window") and draw(st.booleans()):
            side = st.integers(-1, 160) if tiles else st.integers(-1, 4)  # wider than a tile: bands cross blocks
            kwargs["window"] = (draw(side), draw(side))
        if for_kernel is not None and takes.get("softcap") and draw(st.booleans()):
            kwargs["softcap"] = draw(st.sampled_from([5.0, 30.0]))
        if for_kernel is not None and takes.get("bias") and draw(st.booleans()):
            kwargs["bias"] = rng.standard_normal(bshape((T, S)))  # an additive bias (ALiBi-like, relative positions)
        rename = dict(names or {})
        kernel_kwargs = {rename.get(key, key): value for key, value in kwargs.items()}
        if layout == "BTNH" and "key_lengths" in kwargs:
            kernel_kwargs[rename.get("key_lengths", "key_lengths")] = kwargs["key_lengths"][:, 0]  # (B,)
        args = (q, k, v)
        if grouped_heads:  # the kernel gets every group's first head; the oracle the repeated kv heads
            group = batch[1] // n_kv
            kk, vv = k[:, ::group], v[:, ::group]
            k, v = np.repeat(kk, group, axis=1), np.repeat(vv, group, axis=1)
            args = (q, kk, vv)
        if layout == "BTNH":
            args = tuple(np.swapaxes(a, -3, -2) for a in args)
        return AttentionInputs(q, k, v, kwargs, kernel_kwargs, args)

    return strategy()
