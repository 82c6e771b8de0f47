"""`refattn report`: the exact oracle's paths compared on embedded inputs.

The report compares the implementations of exact attention with each other (the dense
float64 oracle, the NumPy and Numba streaming kernels, the low-precision dense paths, the
float64 oracle against the arbitrary-precision mpmath oracle on small adversarial
problems) and every method of the registry ([`refattn.evaluation.methods`][refattn.evaluation.methods]) that is neither
the oracle nor an oracle bound against it, at `ESTIMATOR_BUDGET` numbers per row, one
seeded draw per head (causal problems: the methods with a causal form).

The embedded inputs are generated from fixed seeds ([`default_problems`][refattn.evaluation.exact_paths.default_problems]), so every
machine reports on the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from refattn.evaluation.methods import REGISTRY, run_heads
from refattn.exact import softmax_attention
from refattn.precise import softmax_attention_mp

__all__ = ["ReportRow", "default_problems", "run_report", "format_table"]


@dataclass
class ReportRow:
    problem: str
    method: str
    reference: str
    max_abs_error: float
    max_rel_error: float  # max |err| / max |ref|
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


def _row(problem, method, reference, out, ref, seconds):
    err = np.abs(np.asarray(out, dtype=np.float64) - ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    abs_err = float(err.max()) if err.size else 0.0
    return ReportRow(problem, method, reference, abs_err, abs_err / scale if scale else abs_err, seconds)


def run_report(seq_len: int = 512, seed: int = 0, progress: bool | None = None):
    """Compute the report rows (a list of `ReportRow`)."""
    from tqdm.auto import tqdm

    # compile the Numba kernel outside the timings
    w = np.ones((2, 4))
    softmax_attention(w, w, w, implementation="numba")
    rows = []
    problems = list(default_problems(seq_len, seed))
    for name, q, k, v, kw, tiny in tqdm(problems, desc="report", disable=not progress if progress is not None else None):
        ref, t_ref = _timed(lambda: softmax_attention(q, k, v, implementation="dense", **kw))
        if tiny:
            mp, t_mp = _timed(lambda: softmax_attention_mp(q, k, v, **kw))
            rows.append(_row(name, "dense float64", "mpmath (50 digits)", ref, mp, t_ref))
            rows.append(_row(name, "mpmath (50 digits)", "mpmath (50 digits)", mp, mp, t_mp))
            ref_name, base = "mpmath (50 digits)", mp
        else:
            rows.append(_row(name, "dense float64", "dense float64", ref, ref, t_ref))
            ref_name, base = "dense float64", ref
        for impl in ("numpy", "numba"):
            out, t = _timed(lambda: softmax_attention(q, k, v, implementation=impl, **kw))
            rows.append(_row(name, f"streaming {impl} float64", ref_name, out, base, t))
        for dt in (np.float32, np.float16):
            out, t = _timed(lambda: softmax_attention(q.astype(dt), k.astype(dt), v.astype(dt),
                                                      implementation="dense", dtype=dt, **kw))
            rows.append(_row(name, f"dense {np.dtype(dt).name}", ref_name, out, base, t))
        if not tiny:
            rows.extend(_estimator_rows(name, q, k, v, kw, base, ref_name, seed))
    return rows


#: Stored numbers per query row for the estimators' rows (each method's budget rule:
#: [`refattn.evaluation.methods`][refattn.evaluation.methods]).
ESTIMATOR_BUDGET = 128


def _estimator_rows(name, q, k, v, kw, base, ref_name, seed):
    """Every non-oracle method of the registry at `ESTIMATOR_BUDGET`, head by head (one draw per
    head); causal problems use the methods with a causal form, padded keys are cut off per sequence."""
    rows = []
    causal = bool(kw.get("causal", False))
    lengths = kw.get("key_lengths")
    for label, method in REGISTRY.items():
        if method.exact or method.oracle or (causal and not method.causal):
            continue
        if lengths is None:
            run = lambda: run_heads(method, q, k, v, budget=min(ESTIMATOR_BUDGET, k.shape[-2]),  # noqa: E731
                                    seed=seed, causal=causal)
        else:
            run = lambda: np.stack([run_heads(method, q[b], k[b, :n], v[b, :n],  # noqa: E731
                                              budget=min(ESTIMATOR_BUDGET, int(n)), seed=seed + b, causal=causal)
                                    for b, n in enumerate(np.asarray(lengths).reshape(-1))])
        out, t = _timed(run)
        rows.append(_row(name, f"{label} b={ESTIMATOR_BUDGET}", ref_name, out, base, t))
    return rows


def format_table(rows) -> str:
    head = f"{'problem':<16} {'method':<30} {'reference':<20} {'max abs err':>12} {'max rel err':>12} {'time (s)':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.problem:<16} {r.method:<30} {r.reference:<20} {r.max_abs_error:>12.3e} "
            f"{r.max_rel_error:>12.3e} {r.seconds:>9.4f}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows):
    return [asdict(r) for r in rows]
