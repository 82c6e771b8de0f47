"""`refattn report --exact-paths`: the exact oracle's own paths, each against its derived error bound.

Only exact attention is here (the estimators are the main report's rows): the dense float64
oracle, the NumPy and Numba streaming kernels, the float32 and float16 dense paths, and the
float64 oracle against the arbitrary-precision mpmath oracle on small adversarial problems.
Each row's error is checked row by row against [`forward_error_bound`][refattn.exact.forward_error_bound]
(derived in the docs' *Exact attention* page, "Forward error of the oracle"):

| path | reference | bound on each row's max abs error |
|---|---|---|
| dense float64 | mpmath (50 digits) | the float64 bound |
| streaming float64 | dense float64 | twice the float64 bound (each is within it of the exact value) |
| dense float32 / float16 | dense float64 on the same inputs rounded to that dtype | the low-precision bound plus the float64 bound |

A row passes (PASS) when every query row is within its bound; the reference itself is marked ``-``.

The embedded inputs are generated from fixed seeds ([`default_problems`][refattn.evaluation.exact_paths.default_problems]), so every
machine reports on the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from refattn.exact import forward_error_bound, softmax_attention
from refattn.mpmath_oracle import softmax_attention_mp

__all__ = ["ReportRow", "default_problems", "run_report", "format_table"]


@dataclass
class ReportRow:
    """One path on one problem: its largest error against ``reference``, the largest of its per-row
    bounds, and the verdict (``PASS``: every query row within its own bound; ``-``: the reference)."""

    problem: str
    method: str
    reference: str
    max_abs_error: float
    max_rel_error: float  # max |err| / max |ref|
    bound: float  # the largest per-row bound (NaN for the reference itself)
    verdict: str  # "PASS", "FAIL", or "-" for the reference itself
    seconds: float


def default_problems(seq_len: int = 512, seed: int = 0):
    """The embedded problems: ``(name, q, k, v, kwargs, tiny)``.

    - ``gaussian``: 4 heads, T = S = ``seq_len``, H = 64, logits of standard deviation 2;
    - ``gaussian-causal``: the same, causal (bottom-right);
    - ``padded``: 2 sequences with key lengths ``seq_len`` and ``seq_len // 3``;
    - ``adversarial`` (tiny, for the mpmath oracle): logits 1e4 apart, a near-tie, a
      row of equal logits, a fully masked row.
    """
    rng = np.random.default_rng(seed)
    T, H = seq_len, 64
    q = rng.standard_normal((4, T, H)) * 2.0
    k = rng.standard_normal((4, T, H))
    v = rng.standard_normal((4, T, H))
    yield "gaussian", q, k, v, {}, False
    yield "gaussian-causal", q, k, v, {"causal": True}, False
    yield "padded", q[:2], k[:2], v[:2], {"key_lengths": np.array([T, T // 3])}, False
    qa = np.array([[1e4, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, -2.0]])
    ka = np.array([[1.0, 0.0], [1.0 - 1e-12, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.0]])
    va = rng.standard_normal((5, 3))
    mask = np.ones((4, 5), dtype=bool)
    mask[3] = False
    yield "adversarial", qa, ka, va, {"scale": 1.0, "mask": mask}, True


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _row(problem, method, reference, out, ref, seconds, bound=None):
    """One row; ``bound`` (per query row, shape ``out.shape[:-1]``) gives the verdict: every row's max
    abs error within its bound. ``None``: the reference itself."""
    err = np.abs(np.asarray(out, dtype=np.float64) - ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    abs_err = float(err.max()) if err.size else 0.0
    if bound is None:
        return ReportRow(problem, method, reference, abs_err, abs_err / scale if scale else abs_err, float("nan"), "-",
                         seconds)
    row_err = err.max(axis=-1) if err.size else np.zeros(bound.shape)
    verdict = "PASS" if bool(np.all(row_err <= bound)) else "FAIL"
    return ReportRow(problem, method, reference, abs_err, abs_err / scale if scale else abs_err,
                     float(np.max(bound)) if bound.size else 0.0, verdict, seconds)


def run_report(seq_len: int = 512, seed: int = 0, progress: bool | None = None):
    """Compute the report rows (a list of [`ReportRow`][refattn.evaluation.exact_paths.ReportRow])."""
    from tqdm.auto import tqdm

    # compile the Numba kernel outside the timings
    w = np.ones((2, 4))
    softmax_attention(w, w, w, implementation="numba")
    rows = []
    problems = list(default_problems(seq_len, seed))
    for name, q, k, v, kw, tiny in tqdm(problems, desc="report", disable=not progress if progress is not None else None):
        ref, t_ref = _timed(lambda: softmax_attention(q, k, v, implementation="dense", **kw))
        b64 = forward_error_bound(q, k, v, **kw)
        if tiny:
            mp, t_mp = _timed(lambda: softmax_attention_mp(q, k, v, **kw))
            rows.append(_row(name, "dense float64", "mpmath (50 digits)", ref, mp, t_ref, bound=b64))
            rows.append(_row(name, "mpmath (50 digits)", "mpmath (50 digits)", mp, mp, t_mp))
        else:
            rows.append(_row(name, "dense float64", "dense float64", ref, ref, t_ref))
        for impl in ("numpy", "numba"):
            out, t = _timed(lambda: softmax_attention(q, k, v, implementation=impl, **kw))
            rows.append(_row(name, f"streaming {impl} float64", "dense float64", out, ref, t, bound=2 * b64))
        for dt in (np.float32, np.float16):
            ql, kl, vl = (x.astype(dt) for x in (q, k, v))
            out, t = _timed(lambda: softmax_attention(ql, kl, vl, implementation="dense", dtype=dt, **kw))
            ref_rounded = softmax_attention(ql, kl, vl, implementation="dense", **kw)  # float64 on the rounded inputs
            bound = forward_error_bound(ql, kl, vl, dtype=dt, **kw) + forward_error_bound(ql, kl, vl, **kw)
            rows.append(_row(name, f"dense {np.dtype(dt).name}", f"dense float64 ({np.dtype(dt).name} inputs)",
                             out, ref_rounded, t, bound=bound))
    return rows


def format_table(rows) -> str:
    """The table: each path's largest error against its reference, the largest per-row bound, and
    the verdict (every query row within its bound)."""
    widths = [max(len(h), *(len(getattr(r, f)) for r in rows)) for h, f in
              (("problem", "problem"), ("method", "method"), ("reference", "reference"))]
    head = (f"{'problem':<{widths[0]}} {'method':<{widths[1]}} {'reference':<{widths[2]}} {'max abs err':>12} "
            f"{'max rel err':>12} {'bound':>10} {'verdict':>7} {'time (s)':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        bound = "-" if np.isnan(r.bound) else f"{r.bound:.2e}"
        lines.append(
            f"{r.problem:<{widths[0]}} {r.method:<{widths[1]}} {r.reference:<{widths[2]}} {r.max_abs_error:>12.3e} "
            f"{r.max_rel_error:>12.3e} {bound:>10} {r.verdict:>7} {r.seconds:>9.4f}"
        )
    lines.append("bound: the derived forward-error bound (forward_error_bound), the largest over query rows; "
                 "PASS: every query row's error is within its own bound")
    return "\n".join(lines)


def rows_as_dicts(rows):
    return [{k: (None if isinstance(x, float) and np.isnan(x) else x) for k, x in asdict(r).items()} for r in rows]
