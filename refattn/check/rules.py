r"""The anchors' tolerance rules beside refattn's, and the audit: which rule catches which real bug.

Each rule judges one output ``out`` of a kernel against ``ref64`` (the float64 oracle on the
inputs the kernel was given) and ``ref_lo`` (the reference computed in the kernel's precision,
[`refattn.precision.kernel_reference`][refattn.precision.kernel_reference]); it returns True for a pass.
The rules are the ones the field's test suites apply (each function names its source):

- `flash_attention_rule`: ``max|out - r| <= rtol max|ref_lo - r| + atol`` with ``r`` the reference
  rounded to the kernel's precision, ``rtol = 2`` (3 with a softcap) and
  ``atol = 2 max|fl(fl(r + 0.3) - 0.3) - r|`` (plus ``3e-4`` for gradients with a softcap):
  flash-attention's ``hopper/test_flash_attn.py`` and ``tests/cute/test_flash_attn.py``;
- `flex_attention_rule`: the mean absolute errors ``e = mean|out - ref64|`` and
  ``e_r = mean|ref_lo - ref64|`` with ``|e - e_r| <= 1e-7 + f e_r`` (``f = 1.1`` for float16 and
  bfloat16, 10 otherwise), NaN failing: PyTorch's ``test/inductor/test_flex_attention.py``
  (``_check_equal``, ``torch.testing.assert_close`` on the two means);
- `sdpa_rule`: ``max|out - ref64| <= max(1e-5, 5 max|ref_lo - ref64|)``: PyTorch's
  ``test/test_transformers.py`` (``_check_equal`` with the default fudge factor 5);
- `fixed_rule`: ``|out - ref| <= atol + rtol |ref|`` entrywise (``torch.testing.assert_close``;
  flashinfer's and vLLM's kernel tests use ``1e-3`` and ``1e-2``);
- `cosine_rule`: cosine similarity of the flattened outputs ``>= 0.99`` (flashinfer's
  ``_assert_cos_similarity``, flash-attention's FP8 tests).

refattn's own rule ([`refattn.tolerance`][refattn.tolerance]) is applied by the checker itself:
[`audit`][refattn.check.rules.audit] runs ``refattn check`` on each entry and judges every call the
checker made by each anchor rule, so every rule sees the same inputs and outputs.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from refattn.check.exact import oracle_kwargs
from refattn.precision import round_to

__all__ = ["flash_attention_rule", "flex_attention_rule", "fixed_rule", "cosine_rule", "ANCHOR_RULES", "audit",
           "sdpa_rule"]

def _f64(a):
    return np.asarray(a, np.float64)


def flash_attention_rule(out, ref64, ref_lo, precision, *, softcap=False, grad=False):
    """flash-attention's rule (module docstring). ``softcap``: the problem caps its logits (rtol 3);
    ``grad``: ``out`` is a gradient (with a softcap, 3e-4 more)."""
    out, ref64, ref_lo = _f64(out), _f64(ref64), _f64(ref_lo)
    if not out.size:
        return True
    r = _f64(round_to(ref64, precision))
    # torch adds the Python scalar in float32 ("opmath") and rounds the sum to the tensor's dtype
    wide = np.float64 if precision == "float64" else np.float32
    up = _f64(round_to(r.astype(wide) + wide(0.3), precision))
    shifted = _f64(round_to(up.astype(wide) - wide(0.3), precision))
    atol = 2 * float(np.max(np.abs(shifted - r))) + (3e-4 if softcap and grad else 0.0)
    rtol = 3.0 if softcap else 2.0
    with np.errstate(invalid="ignore"):
        err = float(np.max(np.where(np.isnan(out), np.inf, np.abs(out - r))))
    return bool(err <= rtol * float(np.max(np.abs(ref_lo - r))) + atol)


def flex_attention_rule(out, ref64, ref_lo, precision, **_):
    """FlexAttention's rule (module docstring)."""
    out, ref64, ref_lo = _f64(out), _f64(ref64), _f64(ref_lo)
    if not out.size:
        return True
    with np.errstate(invalid="ignore"):
        e, e_r = float(np.mean(np.abs(out - ref64))), float(np.mean(np.abs(ref_lo - ref64)))
    if np.isnan(e) or np.isnan(e_r):
        return False
    f = 1.1 if precision in ("float16", "bfloat16") else 10.0
    return bool(abs(e - e_r) <= 1e-7 + f * e_r)


def sdpa_rule(out, ref64, ref_lo, precision, *, fudge=5.0, **_):
    """PyTorch SDPA's rule (module docstring): a NaN fails where the low-precision reference has none."""
    out, ref64, ref_lo = _f64(out), _f64(ref64), _f64(ref_lo)
    if not out.size:
        return True
    with np.errstate(invalid="ignore"):
        e, e_r = float(np.max(np.abs(out - ref64))), float(np.max(np.abs(ref_lo - ref64)))
    if np.isnan(e):
        return bool(np.isnan(e_r))
    return bool(e <= max(1e-5, fudge * e_r))


def fixed_rule(out, ref64, ref_lo, precision, *, atol, rtol, **_):
    """``torch.testing.assert_close(out, ref64, atol=atol, rtol=rtol)``: ``|out - ref| <= atol + rtol |ref|``
    entrywise, NaN unequal to everything."""
    out, ref64 = _f64(out), _f64(ref64)
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(out - ref64) <= atol + rtol * np.abs(ref64)))


def cosine_rule(out, ref64, ref_lo, precision, *, threshold=0.99, **_):
    """Cosine similarity of the flattened ``out`` and ``ref64`` at least ``threshold`` (two zero arrays
    count as similar); NaN fails."""
    a, b = _f64(out).ravel(), _f64(ref64).ravel()
    if not np.all(np.isfinite(a)):
        return False
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return bool(na == nb)
    return bool(a @ b / (na * nb) >= threshold)


#: name -> rule(out, ref64, ref_lo, precision, *, softcap, grad) -> passed
ANCHOR_RULES = {
    "flash-attention": flash_attention_rule,
    "FlexAttention": flex_attention_rule,
    "PyTorch SDPA": sdpa_rule,
    "atol = rtol = 1e-2": partial(fixed_rule, atol=1e-2, rtol=1e-2),
    "atol = rtol = 1e-3": partial(fixed_rule, atol=1e-3, rtol=1e-3),
    "cosine >= 0.99": cosine_rule,
}


class _Recorder:
    """``fn`` wrapped: every call's arguments and result kept (copies), in call order."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []
        import inspect

        self.__signature__ = inspect.signature(fn)
        self.__name__ = getattr(fn, "__name__", "fn")

    def __call__(self, *args, **kw):
        try:
            result = self.fn(*args, **kw)
        except Exception as e:  # a call that raised fails every rule
            self.calls.append((tuple(np.array(a) for a in args), dict(kw), e))
            raise
        self.calls.append((tuple(np.array(a) for a in args), dict(kw), result))
        return result


def _references(call, precision, kind, options=None):
    """``[(out, ref64, ref_lo)]`` for one recorded call: the output (or each gradient) and its references,
    read as the check's ``options`` claim: ``causal=True`` in the claimed alignment, ``(B, T, N, H)``
    arrays for the BTNH layout, and (``empty_rows="any"``) the rows that see no key left out."""
    from refattn.exact import attention_backward, softmax_attention
    from refattn.precision import kernel_reference

    options = options or {}
    alignment = options.get("alignment", "bottom_right")
    args, kw, result = call
    if options.get("layout") == "BTNH":  # to (B, N, T, H), the oracle's batch-first order
        swap = lambda a: np.swapaxes(a, 1, 2) if np.ndim(a) == 4 else a  # noqa: E731
        args, result = tuple(swap(a) for a in args), (tuple(swap(r) for r in result)
                                                      if isinstance(result, tuple) else swap(result))
    q, k, v = (np.asarray(a, np.float64) for a in args[:3])
    if q.ndim == 4 and k.shape[1] != q.shape[1]:  # grouped queries
        g = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    okw = oracle_kwargs(kw, q.ndim, alignment)
    if okw.get("key_lengths") is not None:  # the oracle never reads the (poisoned) padding: zero it
        pad = np.arange(k.shape[-2]) >= np.asarray(okw["key_lengths"])[..., None]
        k, v = np.where(pad[..., None], 0.0, k), np.where(pad[..., None], 0.0, v)
    if kind == "backward":
        dout = np.asarray(args[3], np.float64)
        refs = attention_backward(q, k, v, dout, **okw)
        refs_lo = refs if precision == "float64" else attention_backward(q, k, v, dout, dtype=precision, **okw)
        if len(refs) and q.ndim == 4 and np.shape(result[1]) != refs[1].shape:
            g = refs[1].shape[1] // np.shape(result[1])[1]
            refs, refs_lo = ((r[0],) + tuple(x.reshape(x.shape[0], -1, g, *x.shape[2:]).sum(axis=2) for x in r[1:])
                             for r in (refs, refs_lo))
        return [(np.asarray(o, np.float64), r, lo) for o, r, lo in zip(result, refs, refs_lo)]
    ref64, lse64 = softmax_attention(q, k, v, return_lse=True, **okw)
    ref_lo, lse_lo = (ref64, lse64) if precision == "float64" else \
        kernel_reference(q, k, v, precision, return_lse=True, **okw)
    if not isinstance(result, tuple):
        out = np.asarray(result, np.float64)
        if options.get("empty_rows") == "any" and out.shape == ref64.shape:  # not judged: the kernel's convention
            seen = np.broadcast_to(np.isfinite(lse64), out.shape[:-1])
            return [(out[seen], ref64[seen], ref_lo[seen])]
        return [(out, ref64, ref_lo)]
    lse = np.asarray(result[1], np.float64).reshape(lse64.shape)
    seen = np.isfinite(lse64)  # a row that sees no key: its output is judged, its lse is -inf
    return [(np.asarray(result[0], np.float64), ref64, ref_lo), (lse[seen], lse64[seen], lse_lo[seen])]


def audit(entries, seeds, *, rules=None):
    """For each entry of ``entries`` (name -> ``(fn, kind, options)``, ``options`` for
    [`refattn.check.check`][refattn.check.check]) and each seed: refattn's verdict, and each rule of
    ``rules`` (default `ANCHOR_RULES`) applied to every call the checker made (a run fails a rule
    when any output of any call fails it, or any call raised; an output of the wrong shape fails
    every rule). Returns ``{name: {"runs": n, "refattn": runs failed, rule: runs failed}}``."""
    from refattn.check import check

    rules = ANCHOR_RULES if rules is None else rules
    table = {}
    for name, (fn, kind, options) in entries.items():
        row = {"runs": 0, "refattn": 0, **{r: 0 for r in rules}}
        precision = options.get("precision", "float64")
        for s in seeds:
            rec = _Recorder(fn)
            rep = check(rec, kind, seed=int(s), isolate=False, **options)
            row["runs"] += 1
            row["refattn"] += not rep.passed
            failed = set()
            for call in rec.calls:
                if isinstance(call[2], Exception):
                    failed.update(rules)
                    continue
                try:
                    judged = _references(call, precision, kind, options)
                except (ValueError, TypeError, IndexError):
                    continue  # a call the oracle cannot pose as given (the checker judged it)
                capped, grad = bool(call[1].get("softcap")), kind == "backward"
                for rule_name, rule in rules.items():
                    if rule_name not in failed and not all(
                            np.shape(o) == np.shape(r64) and rule(o, r64, rlo, precision, softcap=capped, grad=grad)
                            for o, r64, rlo in judged):
                        failed.add(rule_name)
            for r in failed:
                row[r] += 1
        table[name] = row
    return table
