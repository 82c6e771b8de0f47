"""The sweep: every bench entry at every (T, dtype), ratios measured in the same run, fitted
exponents, and goals given as data ([`refattn.bench`][refattn.bench]).

Goals are never built in: a project states its own (refattn's are in ``benchmarks/goals.json``)
as a list of dicts, each with ``goal`` (the sentence shown) and ``kind``:

- ``fraction_of_gemm``: ``method``, ``T``, ``min``, optional ``dtypes``: the method's useful flop
  rate over the same-dtype GEMM rate;
- ``time_ratio``: ``a``, ``b``, ``T`` and ``max`` or ``min``: ``time(a) / time(b)``;
- ``peak_below``: ``method``, ``T``, ``bound``: peak memory below an expression in ``T``, ``H``,
  ``budget`` and ``itemsize`` (``+ - * / **`` and numbers only), e.g. ``"T * T * itemsize"``;
- ``crossover``: ``method``: the smallest measured T from which it beats the exact oracle
  (reported, no verdict);
- ``exponent``: ``methods`` (a list, or ``"all"``), ``tol``: the fitted exponent within ``tol``
  of the method's expected one (at most ``1 + tol`` for linear-time methods).

A goal is judged only at its own ``T``: measured elsewhere it is reported without a verdict.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import time

import numpy as np

from refattn._validation import InputError
from refattn.bench.measure import CAUSAL, entry, machine, run_case
from refattn.evaluation.methods import REGISTRY

__all__ = ["default_entries", "default_lengths", "run_suite", "refresh", "gemm_gflops", "point", "add_ratios",
           "fit_exponent", "exponents", "evaluate_goals", "load_goals", "EXACT_BASELINE", "GIB"]

GIB = 2**30
#: The entry every speed-up is measured against.
EXACT_BASELINE = "exact streaming"


def default_entries():
    """Every registry method, plus Performer's causal form (its chunked prefix sums are a kernel of their own)."""
    return [*REGISTRY, "performer" + CAUSAL]


def _describe(name):
    m, causal = entry(name)
    return {"budget_rule": m.budget_rule + (" (causal)" if causal else ""), "expected_exponent": m.expected_exponent,
            "max_T": m.max_T, "oracle": m.oracle, "exact": m.exact}


def default_lengths(T_min=1024, T_max=131072):
    """Powers of two from ``T_min`` to ``T_max`` (both rounded into that doubling ladder)."""
    out, T = [], T_min
    while T <= T_max:
        out.append(T)
        T *= 2
    return out


def run_suite(*, methods=None, lengths=None, dtypes=("float64", "float32"), H=64, seed=0, budget=128, repeats=3,
              large_T=32768, large_T_repeats=1, max_memory_bytes=4 * GIB, gemm_n=4096, isolate=True,
              timeout=1800, fit_from=4096, note=None, progress=None, checkpoint=None, goals=None) -> dict:
    """Run the sweep; return the JSON-ready suite (results, skipped, GEMM rates, exponents, goals).

    ``methods``: bench entries (default [`default_entries`][refattn.bench.suite.default_entries]: every registry method, and
    Performer's causal form); ``budget``: stored numbers per query row (each method's budget rule,
    capped at ``T``); ``goals``: goal definitions ([`evaluate_goals`][refattn.bench.suite.evaluate_goals]); ``lengths``: the T values (default
    1024 .. 131072, each method up to its ``max_T``); ``progress``: a callable given one line
    per finished point; ``checkpoint``: a path where the partial suite (``"complete": false``,
    re-derivable with [`refresh`][refattn.bench.suite.refresh]) is rewritten after every point, so a long sweep that is
    stopped keeps what it measured.
    """
    names = default_entries() if methods is None else list(methods)
    for name in names:
        entry(name)  # a ValueError naming the unknown entry
    lengths = default_lengths() if lengths is None else sorted(int(T) for T in lengths)
    dtypes = [np.dtype(d).name for d in dtypes]
    say = progress or (lambda line: None)
    load = (lambda: list(os.getloadavg())) if hasattr(os, "getloadavg") else (lambda: None)
    started = time.time()
    suite = {
        "schema": "refattn.bench/2",
        "complete": False,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "wall_s": None,
        "load_average": {"start": load(), "end": None},
        "note": note,
        "config": {"H": H, "seed": seed, "lengths": lengths, "dtypes": dtypes, "repeats": repeats,
                   "large_T": large_T, "large_T_repeats": large_T_repeats, "max_memory_bytes": max_memory_bytes,
                   "gemm_n": gemm_n, "isolated": bool(isolate), "fit_from": fit_from, "budget": budget},
        "methods": {n: _describe(n) for n in names},
        "goal_definitions": list(goals or []),
        "gemm": [],
        "results": [],
        "skipped": [],
    }
    gemm, results, skipped = suite["gemm"], suite["results"], suite["skipped"]

    def save():
        if checkpoint:
            tmp = f"{checkpoint}.tmp"
            with open(tmp, "w") as f:
                json.dump(suite, f, indent=1)
            os.replace(tmp, checkpoint)

    for dt in dtypes:
        gemm.append({**run_case({"kind": "gemm", "dtype": dt, "n": gemm_n}, isolate, timeout), "when": "start"})
        say(f"GEMM {dt} n={gemm_n}: {gemm[-1].get('gflops', float('nan')):.1f} GFLOP/s")
    for dt in dtypes:
        itemsize = np.dtype(dt).itemsize
        for T in lengths:
            for name in names:
                m, _ = entry(name)
                base = {"method": name, "T": T, "H": H, "dtype": dt}
                if T > m.max_T:
                    skipped.append({**base, "reason": f"beyond this method's sweep range (max_T = {m.max_T})"})
                    continue
                need = m.peak_bytes(T, H, itemsize, min(budget, T)) if m.peak_bytes else None
                if need is not None and need > max_memory_bytes:
                    skipped.append({**base, "reason": f"predicted peak memory {need / GIB:.1f} GiB exceeds the cap "
                                                      f"of {max_memory_bytes / GIB:.1f} GiB", "predicted_bytes": need})
                    continue
                reps = repeats if T < large_T else large_T_repeats
                cold = not any(r["method"] == name and r["dtype"] == dt for r in results)  # first point
                r = run_case({"kind": "point", "method": name, "T": T, "H": H, "dtype": dt, "seed": seed,
                               "repeats": reps, "budget": budget, "cold": cold}, isolate, timeout)
                if "error" in r:
                    skipped.append({**base, "reason": f"failed: {r['error']}"})
                    say(f"{name:<18} {dt} T={T:<7} FAILED: {r['error']}")
                    continue
                results.append({**r, "load_average_after": load()})
                save()
                say(f"{name:<18} {dt} T={T:<7} {r['median_s']:9.4f} s  peak {r['peak_bytes'] / 2**20:8.1f} MiB")
    for dt in dtypes:
        gemm.append({**run_case({"kind": "gemm", "dtype": dt, "n": gemm_n}, isolate, timeout), "when": "end"})
    suite.update(complete=True, wall_s=time.time() - started)
    suite["load_average"]["end"] = load()
    refresh(suite)
    save()
    return suite


def refresh(suite, goals=None) -> dict:
    """(Re)compute the derived figures of a suite from its measurements: ratios, exponents, goals.

    A saved JSON can be re-derived with other goals (``refattn bench --from-json --goals``);
    ``goals=None`` keeps the suite's own ``goal_definitions``.
    """
    if goals is not None:
        suite["goal_definitions"] = list(goals)
    add_ratios(suite)
    suite["exponents"] = exponents(suite, fit_from=suite["config"]["fit_from"])
    suite["goals"] = evaluate_goals(suite, suite.get("goal_definitions", []))
    return suite


# ----------------------------------------------------------------------------- derived figures
def gemm_gflops(suite, dtype) -> float:
    """The same-dtype GEMM rate of the run: the better of its start and end measurements."""
    rates = [g["gflops"] for g in suite["gemm"] if g.get("dtype") == dtype and "gflops" in g]
    return max(rates) if rates else float("nan")


def point(suite, method, T, dtype):
    """The measured point, or None."""
    return next((r for r in suite["results"] if r["method"] == method and r["T"] == T and r["dtype"] == dtype), None)


def add_ratios(suite) -> None:
    """Add ``fraction_of_gemm`` (None without a flop model) and ``speedup_vs_exact`` (the exact streaming
    oracle at the same T and dtype) to every result."""
    for r in suite["results"]:
        r["fraction_of_gemm"] = None if r.get("gflops") is None else r["gflops"] / gemm_gflops(suite, r["dtype"])
        ex = point(suite, EXACT_BASELINE, r["T"], r["dtype"])
        r["speedup_vs_exact"] = ex["median_s"] / r["median_s"] if ex else None


def fit_exponent(lengths, times):
    r"""Least-squares slope ``p`` of ``log t = log c + p log T`` and its intercept ``log c``.

    Needs at least two distinct ``T``; times must be positive.
    """
    T = np.asarray(lengths, dtype=np.float64).ravel()
    t = np.asarray(times, dtype=np.float64).ravel()
    if T.size != t.size:
        raise InputError(f"times: {t.size} values for {T.size} lengths")
    if not (np.all(np.isfinite(T)) and np.all(T > 0)):
        raise InputError("lengths: must be positive and finite")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise InputError("times: must be positive and finite")
    if np.unique(T).size < 2:
        raise InputError("lengths: need at least two distinct T to fit an exponent")
    p, logc = np.polyfit(np.log(T), np.log(t), 1)
    return float(p), float(logc)


def exponents(suite, fit_from=4096) -> list:
    """The fitted exponent per (method, dtype) over the measured ``T >= fit_from`` (with the range);
    when fewer than two such points exist, over all measured points (the range says which)."""
    out = []
    for name in suite["methods"]:
        for dt in suite["config"]["dtypes"]:
            pts = sorted((r["T"], r["median_s"]) for r in suite["results"] if r["method"] == name and r["dtype"] == dt)
            use = [p for p in pts if p[0] >= fit_from]
            if len(use) < 2:
                use = pts
            if len(use) < 2:
                continue
            p, _ = fit_exponent([t for t, _ in use], [s for _, s in use])
            out.append({"method": name, "dtype": dt, "exponent": p, "T_from": use[0][0], "T_to": use[-1][0],
                        "points": len(use), "expected": suite["methods"][name]["expected_exponent"]})
    return out


# ----------------------------------------------------------------------------- goals
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


def _bound(expr, names):
    """Evaluate ``expr`` (numbers, ``+ - * / **``, parentheses and the keys of ``names``) safely."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise InputError(f"bound: {expr!r} may use numbers, + - * / ** and {sorted(names)} only")
    return float(ev(ast.parse(str(expr), mode="eval")))


def _largest_common(suite, names, dtype, want):
    """``want`` if every entry in ``names`` was measured there, else their largest common T (or None)."""
    sets = [{r["T"] for r in suite["results"] if r["method"] == n and r["dtype"] == dtype} for n in names]
    common = set.intersection(*sets) if sets else set()
    if want in common:
        return want
    return max(common) if common else None


def _verdict(goal, dtype, T, met, figure, detail=""):
    want = goal.get("T")
    if T is not None and want is not None and T != want:  # indicative only: no verdict away from the goal's size
        detail = (detail + "; " if detail else "") + f"measured at T = {T}, not the goal's T = {want}: no verdict"
        met = None
    return {"goal": goal["goal"], "kind": goal["kind"], "dtype": dtype, "T": T,
            "met": None if met is None else bool(met), "figure": figure, "detail": detail}


def _compare(value, goal):
    if "max" in goal and value > goal["max"]:
        return False
    if "min" in goal and value < goal["min"]:
        return False
    return True


def evaluate_goals(suite, goals) -> list:
    """Each goal (module docstring) as met / not met / None (not measured, or not at its T), per dtype."""
    out = []
    for goal in goals:
        kind = goal.get("kind")
        dtypes = [d for d in suite["config"]["dtypes"] if d in goal.get("dtypes", suite["config"]["dtypes"])]
        if kind == "exponent":
            wanted = goal.get("methods", "all")
            for e in suite.get("exponents", []):
                if wanted != "all" and e["method"] not in wanted:
                    continue
                tol = float(goal.get("tol", 0.2))
                met = e["exponent"] <= 1 + tol if e["expected"] == 1.0 else abs(e["exponent"] - e["expected"]) <= tol
                detail = f"fit over T = {e['T_from']} .. {e['T_to']} ({e['points']} points)"
                if e["points"] < 3:
                    met, detail = None, detail + ": fewer than 3 points, no verdict"
                out.append({"goal": f"{e['method']}: {goal['goal']}", "kind": kind, "dtype": e["dtype"], "T": None,
                            "met": None if met is None else bool(met), "figure": f"{e['exponent']:.2f}",
                            "detail": detail + f"; expected {e['expected']:g}"})
            continue
        for dt in dtypes:
            if kind == "crossover":
                rows = sorted((r["T"], r["speedup_vs_exact"]) for r in suite["results"]
                              if r["method"] == goal["method"] and r["dtype"] == dt and r["speedup_vs_exact"])
                if rows:
                    faster = [T for T, s in rows if s > 1]
                    fig = f"faster from T = {min(faster)}" if faster else f"not faster up to T = {rows[-1][0]}"
                    out.append({"goal": goal["goal"], "kind": kind, "dtype": dt, "T": None, "met": None,
                                "figure": fig, "detail": f"measured T = {rows[0][0]} .. {rows[-1][0]}"})
                continue
            names = [goal["a"], goal["b"]] if kind == "time_ratio" else [goal["method"]]
            T = _largest_common(suite, names, dt, goal.get("T"))
            if T is None:
                out.append(_verdict(goal, dt, None, None, None, "not measured"))
                continue
            p = point(suite, names[0], T, dt)
            if kind == "time_ratio":
                val = p["median_s"] / point(suite, names[1], T, dt)["median_s"]
                out.append(_verdict(goal, dt, T, _compare(val, goal), f"{val:.2f}"))
            elif kind == "fraction_of_gemm":
                val = p.get("fraction_of_gemm")
                out.append(_verdict(goal, dt, T, None if val is None else _compare(val, goal),
                                    None if val is None else f"{val:.0%} of {gemm_gflops(suite, dt):.1f} GFLOP/s"))
            elif kind == "peak_below":
                bound = _bound(goal["bound"], {"T": T, "H": p["H"], "budget": p.get("budget", 0),
                                               "itemsize": np.dtype(dt).itemsize})
                below = p["peak_bytes"] < bound
                out.append(_verdict(goal, dt, T, below, f"peak {p['peak_bytes'] / 2**20:.0f} MiB "
                                    f"{'<' if below else '>='} {goal['bound']} = {bound / 2**20:.0f} MiB"))
            else:
                raise InputError(f"goals: unknown kind {kind!r} in {goal.get('goal')!r}")
    return out


def load_goals(path) -> list:
    """Goal definitions from a JSON file (a list of dicts, module docstring)."""
    with open(path) as f:
        goals = json.load(f)
    if not isinstance(goals, list) or not all(isinstance(g, dict) and "goal" in g and "kind" in g for g in goals):
        raise InputError(f"goals: {path} must hold a JSON list of objects with 'goal' and 'kind'")
    return goals
