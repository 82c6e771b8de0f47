r"""`refattn report`'s main table: every method at a matched budget against the exact oracle.

For each head of an [`refattn.evaluation.datasets.AttentionData`][refattn.evaluation.datasets.AttentionData] (by default the embedded MiniLM
attention) and each temperature, every method of the registry `refattn.evaluation.methods.REGISTRY`
runs at ``budget`` stored numbers per query row (the accounting is in [`refattn.evaluation.methods`][refattn.evaluation.methods])
and is compared with the exact oracle [`refattn.exact.attention_probabilities`][refattn.exact.attention_probabilities]:

- ``error_P = |P^ - P|_F / |P|_F``, where ``P^ = run(q, k, I)`` is the method's effective
  attention matrix (every registered method is linear in ``v`` given its draw, so the same
  seeded draw applied to the identity gives it);
- ``error_O = |O^ - O|_F / |O|_F`` with ``O^ = run(q, k, v)``, ``O = P v``;
- ``peak_mb``: the peak of NumPy allocations during ``run(q, k, v)`` (``tracemalloc``;
  buffers allocated inside Numba kernels are not counted), a measured, not a modelled, memory;
- ``seconds``: wall time of ``run(q, k, v)`` after a warm-up call (Numba compiled, caches warm),
  reported beside the exact oracle's time on the same head in the same run. BLAS runs on one
  thread during the comparison (Numba kernels keep their threads).

The exact baselines join the table: the dense oracle (the reference itself, error 0) and the
streaming Numba kernel (online softmax, ``O((T + S) H)`` memory), whose error shows rounding.
The mean row entropy of ``P`` (nats) is recorded for every head: Scatterbrain's figure (Chen et
al. 2021, Fig. 1) plots error against it ([`plot_error_vs_entropy`][refattn.evaluation.report.plot_error_vs_entropy]).
"""

from __future__ import annotations

import textwrap
import time
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from refattn._validation import InputError, check_positive_int
from refattn.evaluation.budget import row_entropy
from refattn.evaluation.figures import data_title, finish, label, legend_outside, pyplot_or_error, style
from refattn.evaluation.methods import REGISTRY, method_rng, output_of
from refattn.exact import attention_probabilities

__all__ = ["MethodRow", "DEFAULT_METHODS", "EXACT_METHODS", "DEFAULT_TEMPERATURES", "run_comparison",
           "summarise", "format_comparison", "legend", "takeaway", "plot_error_vs_entropy", "rows_as_dicts", "summary_as_dicts"]

#: The registry entries in the default report: all but the mixed sparse + low-rank oracle, whose
#: alternating projections take about 30 s per head at T = 512 (ask for it with ``--methods``).
DEFAULT_METHODS = tuple(name for name, m in REGISTRY.items() if m.in_report)
#: The exact oracle's own entries: always in the table (the time baseline).
EXACT_METHODS = tuple(name for name, m in REGISTRY.items() if m.exact)
DEFAULT_TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class MethodRow:
    data: str
    head: str
    temperature: float
    entropy: float
    method: str
    budget: int
    error_P: float
    error_O: float
    peak_mb: float
    seconds: float


def _measured(fn):
    """``(fn(), seconds, peak MB)``: one call, timed, with its peak NumPy/Python allocation
    (tracemalloc, started before the clock; its per-allocation hook is inside the time)."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, seconds, peak / 1e6


def _rel(a, b):
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


def run_comparison(data, *, budget=64, methods=DEFAULT_METHODS, temperatures=(1.0,), seed=0, progress=None):
    """Rows (`MethodRow`) for every temperature x head x method.

    Parameters
    ----------
    data : AttentionData
        Heads ``q (N, T, H)``, ``k (N, S, H)``, ``v (N, S, Hv)``; scale ``1/sqrt(H)``.
    budget : int
        Stored numbers per query row, ``4 <= budget <= S``.
    methods : sequence of str
        Names in `refattn.evaluation.methods.REGISTRY`.
    temperatures : sequence of float
        Logits are divided by each (queries scaled by ``1/temperature``).
    seed : int
        Seeds every method's draw (one stream per seed, method and head).
    progress : bool or None
        Show a progress bar (``None``: only on a terminal).
    """
    from tqdm.auto import tqdm

    T, S = data.q.shape[1], data.k.shape[1]
    if T != S:
        raise InputError(f"q, k: the matched-budget comparison assumes as many queries as keys, got T = {T}, S = {S}")
    if S < 4:
        raise InputError(f"k: the comparison needs at least 4 keys, got {S}")
    budget = check_positive_int(budget, "budget", minimum=4)
    if budget > S:
        raise InputError(f"budget: {budget} exceeds the number of keys {S}")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise InputError(f"methods: unknown {unknown[0]!r}; expected names from {sorted(REGISTRY)}")
    temps = []
    for t in temperatures:
        t = float(t)
        if not (np.isfinite(t) and t > 0):
            raise InputError(f"temperature: must be finite and > 0, got {t}")
        temps.append(t)
    scale = 1.0 / np.sqrt(data.q.shape[-1])
    eye = np.eye(S)
    rows = []
    names = EXACT_METHODS + tuple(m for m in methods if m not in EXACT_METHODS)
    total = len(temps) * data.q.shape[0] * len(names)
    # BLAS on one thread (Numba kernels keep theirs): at these sizes BLAS threads only add overhead,
    # and on a shared 2-core machine OpenBLAS's spinning threads made SVDs up to 300x slower
    with threadpool_limits(limits=1, user_api="blas"), \
            tqdm(total=total, desc="report", unit="run", disable=(not progress) if progress is not None else None) as bar:
        for temp in temps:
            d = data if temp == 1.0 else data.tempered(temp)
            for h in range(d.q.shape[0]):
                q, k, v = d.q[h], d.k[h], d.v[h]
                P = attention_probabilities(q, k)  # (T, S), the oracle
                O = P @ v
                base = dict(data=data.name, head=d.heads[h], temperature=temp, entropy=row_entropy(P), budget=budget)
                for name in names:
                    method = REGISTRY[name]

                    def call(values):  # the same seeded draw for every call: one stream per (seed, method, head)
                        return output_of(method.run(q, k, values, budget=budget, scale=scale,
                                                    rng=method_rng(seed, name, h)))
                    # a warm-up (Numba compiles, caches fill), then the timed call, whose peak memory is
                    # the column's, then P^ from the same draw applied to I
                    call(v)
                    out, t, mb = _measured(lambda: call(v))
                    rows.append(MethodRow(**base, method=name, error_P=_rel(call(eye), P), error_O=_rel(out, O),
                                          peak_mb=mb, seconds=t))
                    bar.update(1)
    return rows


def summarise(rows):
    """Per (temperature, method): mean entropy, mean and worst errors, worst peak memory, median time,
    and the median of the per-head time ratio to the dense oracle."""
    ref_t = {(r.temperature, r.head): r.seconds for r in rows if r.method == "exact dense"}
    groups = {}
    for r in rows:
        groups.setdefault((r.temperature, r.method), []).append(r)
    out = []
    for (temp, method), rs in groups.items():
        eP = [r.error_P for r in rs]
        out.append({
            "temperature": temp, "method": method, "heads": len(rs), "budget": rs[0].budget,
            "entropy": float(np.mean([r.entropy for r in rs])),
            "error_P_mean": float(np.mean(eP)) if not np.isnan(eP).all() else float("nan"),
            "error_O_mean": float(np.mean([r.error_O for r in rs])),
            "error_O_max": float(np.max([r.error_O for r in rs])),
            "peak_mb": float(np.max([r.peak_mb for r in rs])),
            "seconds_median": float(np.median([r.seconds for r in rs])),
            "time_vs_dense": float(np.median([r.seconds / ref_t[(temp, r.head)] for r in rs])),
        })
    return out


def format_comparison(rows, provenance=()) -> str:
    """The report table: one line per (temperature, method), averaged over heads, then its legend and
    the takeaway computed from the numbers ([`takeaway`][refattn.evaluation.report.takeaway])."""
    summary = summarise(rows)
    first = rows[0]
    lines = [f"data: {first.data}, {len({r.head for r in rows})} heads, budget {first.budget} numbers per row"]
    lines += [f"  {p}" for p in provenance if p.split(":")[0] in ("model", "text", "layers", "heads")]
    width = max(len("method"), *(len(s["method"]) for s in summary))  # never truncate a name
    head = (f"{'temp':>5} {'entropy':>7} {'method':<{width}} {'err P (mean)':>12} {'err O (mean)':>12} "
            f"{'err O (max)':>11} {'peak MB':>8} {'time (ms)':>9} {'x dense':>8}")
    lines += [head, "-" * len(head)]
    for s in summary:
        eP = "-" if np.isnan(s["error_P_mean"]) else f"{s['error_P_mean']:.3e}"
        lines.append(f"{s['temperature']:>5g} {s['entropy']:>7.3f} {s['method']:<{width}} {eP:>12} "
                     f"{s['error_O_mean']:>12.3e} {s['error_O_max']:>11.3e} {s['peak_mb']:>8.2f} "
                     f"{1e3 * s['seconds_median']:>9.2f} {s['time_vs_dense']:>8.2f}")
    notes = [textwrap.fill(line, 110, subsequent_indent=" " * (len(line) - len(line.lstrip()) + 2), break_on_hyphens=False)
             for line in ["", *legend(summary), "", *takeaway(summary)]]
    return "\n".join(lines + notes)


def _kind(method):
    m = REGISTRY.get(method)
    return "exact" if m is not None and m.exact else "oracle" if m is not None and m.oracle else "estimator"


def legend(summary) -> list[str]:
    """What the table's columns and rows are (lines), for the methods present in ``summary``."""
    methods = list(dict.fromkeys(s["method"] for s in summary))
    oracles = [m for m in methods if _kind(m) == "oracle"]
    estimators = [m for m in methods if _kind(m) == "estimator"]
    lines = ["legend:"]
    if oracles:
        lines.append(f"  oracles ({', '.join(oracles)}): they read the exact P, so they bound what a sparse or "
                     "low-rank method can reach at this budget; they are not methods you can run")
    if estimators:
        lines.append(f"  estimators ({', '.join(estimators)}): see only q, k, v, as a kernel does")
    lines += [
        "  err P: |P^ - P|_F / |P|_F, P^ the method's attention matrix (its output for v = I); err O: the same for "
        "the output O = P v",
        "  err P above 1: P^ is further from P than the zero matrix; at a budget far below the number of keys an "
        "estimator's entrywise noise exceeds P's many small entries, while err O (what a model uses) averages it out",
        "  temp: the logits are divided by it (1: the model's own); entropy: the mean row entropy of P in nats "
        "(0: one-hot rows; log S: uniform rows)",
        "  peak MB: NumPy allocations during the timed call (tracemalloc); time: the median over heads of one call "
        "after a warm-up; x dense: time / the dense oracle's time on the same head",
    ]
    configs = [f"    {m}: {REGISTRY[m].budget_rule}" for m in methods if m in REGISTRY and not REGISTRY[m].exact]
    if configs:
        lines += ["  configurations (b = the budget):", *configs]
    return lines


def takeaway(summary) -> list[str]:
    """Lines computed from the numbers: the best estimator by error of O at each temperature, which
    oracle wins (and where they cross in a temperature sweep), and where to read more."""
    temps = sorted({s["temperature"] for s in summary})
    by = {(s["temperature"], s["method"]): s for s in summary}
    lines = ["takeaway:"]
    for temp in temps:
        ests = [s for s in summary if s["temperature"] == temp and _kind(s["method"]) == "estimator"]
        if ests:
            best = min(ests, key=lambda s: s["error_O_mean"])
            lines.append(f"  temperature {temp:g}: the most accurate estimator here is {best['method']} "
                         f"(err O {best['error_O_mean']:.3g}, err P {best['error_P_mean']:.3g})")
    pairs = [(t, by[(t, "best sparse")], by[(t, "best low-rank")]) for t in temps
             if (t, "best sparse") in by and (t, "best low-rank") in by]
    if pairs:
        winner = ["sparse" if sp["error_P_mean"] < lr["error_P_mean"] else "low-rank" for _, sp, lr in pairs]
        if len(pairs) == 1:
            t, sp, lr = pairs[0]
            why = ("the rows are peaked: their largest entries hold most of the mass" if winner[0] == "sparse"
                   else "the rows are flat: a few smooth directions describe them")
            lines.append(f"  the {winner[0]} oracle beats the other (err P {sp['error_P_mean']:.3g} sparse vs "
                         f"{lr['error_P_mean']:.3g} low-rank): {why}; a sweep (--temperature-sweep) shows where "
                         "the two cross")
        else:
            crossings = [i for i in range(len(pairs) - 1) if winner[i] != winner[i + 1]]
            if not crossings:
                lines.append(f"  the {winner[0]} oracle wins at every temperature swept")
            for i in crossings:
                (t0, sp0, _), (t1, sp1, _) = pairs[i], pairs[i + 1]
                lines.append(f"  the sparse and low-rank oracles cross between temperature {t0:g} and {t1:g} "
                             f"(entropy {sp0['entropy']:.2f} to {sp1['entropy']:.2f} nats): {winner[i]} wins below, "
                             f"{winner[i + 1]} above; Scatterbrain combines the two for the rows in between")
    lines.append("  more: the docs' page 'The report and its data' (docs/report.md)")
    return lines


def plot_error_vs_entropy(rows, path=None, *, title=None):
    """Scatterbrain's figure (Chen et al. 2021, Fig. 1): error of ``P`` against the row entropy of ``P``.

    One line per method through its means over heads (one marker per temperature), oracles solid
    and estimators dashed ([`style`][refattn.evaluation.figures.style]); faint markers of the same
    shape are the single heads. The title names the data (real or synthetic) and the budget. With
    ``path``, writes a PNG and returns the path; without, returns the open figure. Needs matplotlib
    (``pip install matplotlib``).
    """
    plt = pyplot_or_error()
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    methods = [m for m in dict.fromkeys(r.method for r in rows) if m not in EXACT_METHODS]
    summary = summarise(rows)
    for m in methods:
        st = style(m)
        ax.scatter([r.entropy for r in rows if r.method == m], [r.error_P for r in rows if r.method == m],
                   s=10, alpha=0.25, color=st["color"], marker=st["marker"], linewidths=0)
        means = sorted((s["entropy"], s["error_P_mean"]) for s in summary if s["method"] == m)
        ax.plot([p[0] for p in means], [p[1] for p in means], ms=5, label=label(m), **st)
    ax.scatter([], [], s=10, alpha=0.4, color="#555555", label="faint markers: single heads")
    r0 = rows[0]
    ax.set_xlabel("mean row entropy of P (nats; temperature rises to the right)")
    ax.set_ylabel("relative Frobenius error of P")
    ax.set_yscale("log")
    ax.set_title(title or f"{data_title(r0.data)}\nbudget {r0.budget} numbers per row", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax, title="solid: oracle, dashed: estimator")
    return finish(fig, path)


def _finite_or_none(d):
    return {k: (None if isinstance(x, float) and np.isnan(x) else x) for k, x in d.items()}


def rows_as_dicts(rows):
    """Rows as JSON-ready dicts (NaN, e.g. the streaming kernel's error of P, becomes None)."""
    return [_finite_or_none(asdict(r)) for r in rows]


def summary_as_dicts(rows):
    return [_finite_or_none(s) for s in summarise(rows)]
