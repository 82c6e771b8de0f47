r"""The one tolerance rule: is an attention output correct for a kernel of its precision?

``refattn check`` (``--kind exact``, ``--kind backward``), [`refattn.testing`][refattn.testing] and the pytest
plugin's ``oracle`` fixture all judge outputs by [`compare`][refattn.tolerance.compare], so the same output gets
the same verdict and the same printed numbers wherever it is judged. Two allowances, and an
output passes when every entry is within the larger of them:

- **the FlashAttention rule** (Dao et al. 2022, the test suite of flash-attention): a kernel of
  precision ``p`` may be twice as far from the float64 oracle ``O_64`` as the reference at that
  precision ``O_p`` ([`refattn.precision.kernel_reference`][refattn.precision.kernel_reference]) is, plus a floor of
  ``4 eps_p max|O_64|``,
  ``max|O - O_64| <= 2 max|O_p - O_64| + 4 eps_p max|O_64|``;
- **the rigorous rounding allowance** (derived, the docs' testing page, "The tolerance rule"):
  per row ``i``, ``A_{p,i} + A_{64,i}``, where ``A_{p,i}`` bounds the error of *any* correct
  kernel of precision ``p`` (dense, blocked online softmax with any block size, log-space,
  split-KV combines: the forward error bound of [`refattn.exact.forward_error_bound`][refattn.exact.forward_error_bound] at
  ``p``, with its cancellation term ``max_j |v_j|``) and ``A_{64,i}`` the oracle's. By the triangle
  inequality a correct kernel always satisfies it, so no correct kernel fails where the FlashAttention
  rule alone is too tight (uniform attention whose output cancels to ``~0``, logits far apart,
  float64 kernels, for which ``O_p = O_64``). When the inputs are not exactly representable at
  ``p``, the measured move of the oracle under their rounding is added (the kernel sees the
  rounded inputs).

The [`ToleranceCheck`][refattn.tolerance.ToleranceCheck] holds the error, the bound at the worst entry and its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn import precision as _prec
from refattn._validation import InputError, InputTypeError, as_float_array, check_real
from refattn.exact import attention_probabilities, forward_error_bound, softmax_attention
from refattn.problem import sum_to_shape

__all__ = ["ToleranceCheck", "CLAIMS", "compare", "check_attention_output", "rounding_allowance", "backward_allowance",
           "merge_allowance", "MERGE_FACTOR",
           "FLOOR_EPS"]

#: The FlashAttention rule's floor, in machine epsilons of the precision times ``max |O_64|``.
FLOOR_EPS = 4.0


@dataclass(frozen=True)
class ToleranceCheck:
    """The numbers of one application of the rule (one array).

    ``error``: ``max |actual - ref64|``; ``error_lo``: ``max |ref_lo - ref64|``; ``floor``; ``allowance``:
    the rigorous allowance at the entry where ``error / bound`` is largest (``worst_error`` is the
    error there); ``bound``: the larger of the two allowances there. ``passed``: every entry is
    within its bound."""

    error: float
    error_lo: float
    floor: float
    allowance: float
    precision: str
    worst_error: float = 0.0
    all_within: bool = True

    @property
    def flash_bound(self) -> float:
        """The FlashAttention rule's allowance ``2 error_lo + floor`` (the same for every entry)."""
        return 2.0 * self.error_lo + self.floor

    @property
    def bound(self) -> float:
        """The allowance at the worst entry: the larger of the FlashAttention bound and the rigorous one."""
        return max(self.flash_bound, self.allowance)

    @property
    def passed(self) -> bool:
        return bool(self.all_within)

    # kept for callers that name it by its old field (the precision's name)
    @property
    def dtype(self) -> str:
        return self.precision

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        where = "" if self.worst_error == self.error else f" (worst entry: error {self.worst_error:.3e})"
        return (
            f"{verdict}: max|out - ref64| = {self.error:.3e}{where}, bound = max(2 * {self.error_lo:.3e} "
            f"(max|ref_{self.precision} - ref64|) + {self.floor:.3e} (floor), {self.allowance:.3e} "
            f"(rounding allowance)) = {self.bound:.3e}"
        )

    def to_dict(self) -> dict:
        return {"error": self.error, "error_lo": self.error_lo, "floor": self.floor, "allowance": self.allowance,
                "bound": self.bound, "precision": self.precision, "passed": self.passed}


def _as_output(actual, name="actual"):
    """The output under test as a float64 array (NaN and Inf allowed: they fail, with ``error = inf``)."""
    try:
        a = np.asarray(actual)
    except Exception as exc:
        raise InputTypeError(f"{name}: cannot be converted to an array ({exc})") from None
    _prec.precision_of(a, name)  # a TypeError naming the argument for non-float outputs
    return _prec.widen(a).astype(np.float64)


def compare(actual, ref64, ref_lo, *, precision=None, allowance=0.0, atol=None, floor_at=None) -> ToleranceCheck:
    """The rule on given arrays (module docstring).

    ``precision``: the kernel's (default: ``ref_lo``'s stored precision); ``allowance``: the rigorous
    allowance, a scalar, an array of ``actual``'s shape, or of its shape without the last axis (one
    per row); ``atol`` replaces the floor; ``floor_at``: the precision of the floor's epsilon (default
    ``precision``; an FP8 kernel's output precision). Shapes must agree exactly (no broadcasting: a shape
    mismatch is a bug in the implementation under test, not a tolerance question).
    """
    a = _as_output(actual)
    r = as_float_array(ref64, "ref64").astype(np.float64)
    try:
        lo_arr = np.asarray(ref_lo)
    except ValueError:  # a ragged nest of lists
        raise InputTypeError("ref_lo: cannot be converted to an array (ragged?)") from None
    p = _prec.precision_of(lo_arr, "ref_lo") if precision is None else _prec.as_precision(precision, "precision",
                                                                                          allowed=CLAIMS)
    at = p if floor_at is None else _prec.as_precision(floor_at, "floor_at", allowed=CLAIMS)
    lo = as_float_array(lo_arr, "ref_lo").astype(np.float64)
    if a.shape != r.shape:
        raise AssertionError(f"actual: shape mismatch: actual {a.shape} vs reference {r.shape}")
    if lo.shape != r.shape:
        raise InputError(f"ref_lo: shape {lo.shape} differs from ref64's {r.shape}")
    allow = np.asarray(as_float_array(allowance, "allowance"), dtype=np.float64)
    if allow.ndim == r.ndim - 1 and allow.ndim:
        allow = allow[..., None]
    try:
        allow = np.broadcast_to(allow, r.shape)
    except ValueError:
        raise InputError(f"allowance: shape {np.shape(allowance)} matches neither the output's {r.shape} nor "
                         "its rows'") from None
    if np.any(allow < 0):
        raise InputError("allowance: must be >= 0")
    if atol is not None:
        floor = check_real(atol, "atol", minimum=0.0)
    else:
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        floor = FLOOR_EPS * _prec.eps(at) * scale + _prec.tiny("float64")
    error_lo = float(np.max(np.abs(lo - r))) if r.size else 0.0
    flash = 2.0 * error_lo + floor
    if not r.size:
        return ToleranceCheck(0.0, 0.0, floor, 0.0, p)
    with np.errstate(invalid="ignore"):
        err = np.where(np.isfinite(a), np.abs(a - r), np.inf)
    bound = np.maximum(flash, allow)
    ratio = err / bound
    w = np.unravel_index(int(np.argmax(ratio)), r.shape)
    return ToleranceCheck(float(err.max()), error_lo, floor, float(allow[w]), p, float(err[w]),
                          bool(np.all(err <= bound)))


#: Every precision a kernel may claim to the rule: the compute precisions and the FP8 formats.
CLAIMS = _prec.PRECISIONS + _prec.STORAGE_PRECISIONS


def rounding_allowance(q, k, v, precision, *, p_scale=None, output=None, **options) -> np.ndarray:
    """Per row ``(..., T)``: the rigorous allowance ``A_p + A_64`` for an output of a kernel of
    ``precision`` against the float64 oracle, plus the oracle's measured move when the inputs are
    rounded to ``precision`` (module docstring). ``p_scale``, ``output``: the kernel's
    [`recipe`][refattn.precision.recipe] (storage precisions). The softmax options are the oracle's."""
    p = _prec.as_precision(precision, "precision", allowed=CLAIMS)
    recipe = {} if p == "float64" else {"p_scale": p_scale, "output": output}
    allow = forward_error_bound(q, k, v, **options) if p == "float64" else (
        forward_error_bound(q, k, v, dtype=p, **recipe, **options) + forward_error_bound(q, k, v, **options))
    if p != "float64":
        rounded = [_prec.round_to(x, p, name) for x, name in ((q, "q"), (k, "k"), (v, "v"))]
        given = [as_float_array(x, name).astype(np.float64) for x, name in ((q, "q"), (k, "k"), (v, "v"))]
        if any(not np.array_equal(a, b) for a, b in zip(rounded, given)):
            moved = np.abs(softmax_attention(*rounded, **options) - softmax_attention(*given, **options))
            allow = allow + moved.max(axis=-1, initial=0.0) + forward_error_bound(*rounded, **options)
    return allow


def check_attention_output(actual, q, k, v, *, precision=None, rows=None, atol=None, p_scale=None, output=None,
                           **options) -> ToleranceCheck:
    """The rule for an attention output ``actual`` of ``(q, k, v)`` under the oracle's ``options``
    (``scale``, ``causal``, ``mask``, ``bias``, ``key_lengths``, ``window``, ``softcap``,
    ``alibi_slopes``).

    ``precision``: the kernel's compute precision (default: the output's stored precision, so a
    bfloat16 output is judged at bfloat16; an output upcast to float64 needs it said), or an FP8
    format for a kernel that reads FP8 inputs and rounds ``P`` to it (`CLAIMS`). ``p_scale``,
    ``output``: an FP8 kernel's [`recipe`][refattn.precision.recipe] (defaults: FlashAttention 3's,
    ``P`` scaled by 2^8 before its cast, the output in bfloat16); the rule's floor is then at the
    output's precision, as flash-attention's own FP8 tests take it (their reference dtype for e4m3
    is bfloat16). ``rows``: a boolean mask over the queries, ``(T,)`` or broadcastable to the output's
    rows ``(..., T)``: only those rows are judged (rows that see no key, judged by their own convention).
    """
    try:
        given = np.asarray(actual)
    except ValueError:  # a ragged nest of lists
        raise InputTypeError("actual: cannot be converted to an array (ragged?)") from None
    p = _prec.precision_of(given, "actual") if precision is None else _prec.as_precision(precision, "precision",
                                                                                           allowed=CLAIMS)
    if p not in _prec.PRECISIONS and precision is None:
        raise InputTypeError(f"precision: an output stored in {p} needs its kernel's precision said (precision=)")
    ref64 = softmax_attention(q, k, v, **options)
    recipe = {} if p == "float64" else {"p_scale": p_scale, "output": output}
    if p == "float64" and (p_scale is not None or output is not None):
        raise InputError("p_scale, output: the recipe of a storage precision (float16, bfloat16 or FP8)")
    ref_lo = ref64 if p == "float64" else _prec.kernel_reference(q, k, v, p, **recipe, **options)
    allow = rounding_allowance(q, k, v, p, **recipe, **options)
    floor_at = p if p == "float64" else _prec.recipe(p, **recipe).output
    a = _as_output(actual)
    if a.shape != ref64.shape:
        raise InputError(f"actual: expected the output's shape {ref64.shape} for these q, k, v, got {a.shape}")
    if rows is not None and a.shape == ref64.shape:
        sel = np.broadcast_to(np.asarray(rows, dtype=bool), ref64.shape[:-1])  # the rows judged, (..., T)
        return compare(a[sel], ref64[sel], ref_lo[sel], precision=p, allowance=allow[sel], atol=atol,
                       floor_at=floor_at)
    return compare(a, ref64, ref_lo, precision=p, allowance=allow, atol=atol, floor_at=floor_at)


def backward_allowance(q, k, v, dout, kw, u, dlse=None):
    """Bounds (max over entries) on the rounding error of ``(dq, dk, dv)`` computed in unit roundoff
    ``u`` by the dense formulas in any order (derived: the product bound ``|fl(AB) - AB| <= gamma_n
    |A| |B|``, ``gamma_n = n u / (1 - n u)``, Higham 2002, Sec. 3.5, chained through the backward;
    the probabilities' error is the forward bound's, ``(e^{2 Delta_i} - 1 + 2 gamma_{S+2}) P``, with
    ``Delta_i`` the logits' error, as [`refattn.exact.forward_error_bound`][refattn.exact.forward_error_bound]).

    The rule's rigorous allowance for gradients: a correct backward of unit roundoff ``u`` and the
    float64 one each meet theirs, so they differ by at most the sum (the triangle inequality).
    ``dlse``: the lse's upstream gradient, which shifts ``delta`` to ``delta - dlse`` (one more
    subtraction: ``u (|delta| + |dlse|)`` more in delta's error)."""
    q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (q, k, v, dout))
    H, S, T, Hv = q.shape[-1], k.shape[-2], q.shape[-2], v.shape[-1]
    gamma = lambda n: n * u / (1 - n * u)  # noqa: E731
    scale = 1.0 / np.sqrt(H)
    p = attention_probabilities(q, k, **kw)  # (..., T, S)
    absl = scale * np.abs(q) @ np.swapaxes(np.abs(k), -1, -2)  # |s q.k| bounds
    delta = np.max(np.where(p > 0, gamma(H + 2) * absl, 0.0), axis=-1, keepdims=True, initial=0.0)  # (..., T, 1)
    ep = (np.expm1(2 * delta) + 2 * gamma(S + 2)) * p  # |P^ - P|
    av, ado = np.abs(v), np.abs(dout)
    o = p @ v
    eo = ep @ av + gamma(S) * p @ av
    dp = dout @ np.swapaxes(v, -1, -2)
    edp = gamma(Hv) * ado @ np.swapaxes(av, -1, -2)
    d = np.sum(dout * o, axis=-1, keepdims=True)
    ed = np.sum(ado * eo, axis=-1, keepdims=True) + gamma(Hv) * np.sum(ado * np.abs(o), axis=-1, keepdims=True)
    if dlse is not None:
        g = np.asarray(dlse, np.float64)[..., None]
        ed = ed + u * (np.abs(d) + np.abs(g))
        d = d - g
    gap = np.abs(dp - d)
    eds = ep * gap + p * (edp + ed) + 2 * u * p * gap  # |dS^ - dS|
    ads = p * gap
    edq = scale * (eds @ np.abs(k) + gamma(S) * ads @ np.abs(k)) + u * np.abs(scale * ads @ np.abs(k))
    edk = scale * (np.swapaxes(eds, -1, -2) @ np.abs(q) + gamma(T) * np.swapaxes(ads, -1, -2) @ np.abs(q))
    edv = np.swapaxes(ep, -1, -2) @ ado + gamma(T) * np.swapaxes(p, -1, -2) @ ado
    if kw.get("sinks") is None:
        return edq, edk, edv
    # dsinks = -sum_i P_i,z delta_i: the sink's probability within the probabilities' relative error, delta's
    # error ed, and the sum of T terms (derived like the rest; the docs' exact-attention page, "Attention sinks")
    _, lse = attention_probabilities(q, k, return_lse=True, **kw)
    z = np.broadcast_to(np.asarray(kw["sinks"], np.float64), lse.shape[:-1])[..., None]  # (..., 1)
    fin = np.isfinite(lse)
    pz = np.where(fin, np.exp(z - np.where(fin, lse, 0.0)), 0.0)[..., None]  # (..., T, 1)
    epz = (np.expm1(2 * delta) + 2 * gamma(S + 3)) * pz
    edz = np.sum(epz * np.abs(d) + pz * ed + gamma(T + 1) * pz * np.abs(d), axis=(-2, -1))
    return edq, edk, edv, sum_to_shape(edz, np.shape(kw["sinks"]))


#: The merge allowance's factor over its first-order terms: 2 for the second-order terms, over
#: ``ln 2`` for a merge computed in base 2 (its exponents are ``1 / ln 2`` times the natural ones).
MERGE_FACTOR = 2.0 / np.log(2.0)


def merge_allowance(outs, lses, u):
    """Bounds on the rounding error of a merge of states ``(outs (P, ..., Hv), lses (P, ...))`` (natural
    log, ``-inf`` for an empty state) computed in unit roundoff ``u``: ``(A_out (..., Hv), A_lse (...))``.

    Derived (the docs' serving page, "The merge's rounding"): with ``m = max_c lse_c``, the merged
    ``lse`` and weights ``w_c = exp(lse_c - lse)``, a merge in any of the stable orders (``exp(lse_c - m)``
    then a sum and a division, as vLLM and flashinfer; or ``exp(lse_c - lse)`` after ``lse``, as
    flash-attn's combine) makes each weight's relative error at most
    ``eta_c = u a_c + E + 2u + gamma_P``, ``a_c = |lse_c| + |m| + |lse| + 2``, ``E = u sum_c w_c a_c +
    (P - 1) u`` (an exponent's rounding is ``u`` times its magnitude, the exponential adds ``u``, the
    sum ``(P - 1) u``; Higham 2002, Sec. 3.1), so ``|O^ - O| <= sum_c w_c |O_c| eta_c + u |O|`` and
    ``|lse^ - lse| <= u (|m| + |lse| + log P + 1) + E``; both times `MERGE_FACTOR`."""
    o = np.asarray(outs, np.float64)
    l = np.asarray(lses, np.float64)
    P = l.shape[0]
    gamma = P * u / (1 - P * u)
    fin = np.isfinite(l)
    lc = np.where(fin, l, -np.inf)
    top = np.max(lc, axis=0)
    seen = np.isfinite(top)
    ref = np.where(seen, top, 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(seen, ref + np.log(np.sum(np.where(fin, np.exp(lc - ref), 0.0), axis=0)), 0.0)
        w = np.where(fin, np.exp(lc - lse), 0.0)
    a = np.where(fin, np.abs(np.where(fin, l, 0.0)) + np.abs(ref) + np.abs(lse) + 2.0, 0.0)
    big_e = u * np.sum(w * a, axis=0) + (P - 1) * u
    eta = u * a + big_e + 2 * u + gamma
    out = np.sum(w[..., None] * np.where(fin[..., None], o, 0.0), axis=0)
    a_out = np.sum((w * eta)[..., None] * np.abs(np.where(fin[..., None], o, 0.0)), axis=0) + u * np.abs(out)
    a_lse = u * (np.abs(ref) + np.abs(lse) + np.log(P) + 1.0) + big_e
    return MERGE_FACTOR * a_out, MERGE_FACTOR * np.where(seen, a_lse, 0.0)
