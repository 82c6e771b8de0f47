"""A suite's structure check, its tables and its figure ([`refattn.bench`][refattn.bench])."""

from __future__ import annotations

import json
import math

from refattn.bench.suite import point

__all__ = ["validate_suite", "format_suite", "plot_suite"]


def validate_suite(suite) -> list:
    """Problems with a suite's structure (empty when sound): every (method, T, dtype) of its
    config measured once or skipped with a reason, times and ratios positive and finite, outputs
    finite and of shape (T, H), GEMM rates at start and end, exponents finite, goal verdicts in
    {True, False, None}, and plain JSON. It checks structure, never speed."""
    problems = []
    cfg = suite.get("config", {})
    for key in ("schema", "machine", "date", "config", "methods", "gemm", "results", "skipped", "exponents", "goals"):
        if key not in suite:
            problems.append(f"missing key {key!r}")
    if problems:
        return problems
    for dt in cfg["dtypes"]:
        for when in ("start", "end"):
            if not any(g.get("dtype") == dt and g.get("when") == when and g.get("gflops", 0) > 0 for g in suite["gemm"]):
                problems.append(f"no GEMM rate for {dt} at the {when}")
    for name, info in suite["methods"].items():
        for T in cfg["lengths"]:
            for dt in cfg["dtypes"]:
                key = (name, T, dt)
                got = [r for r in suite["results"] if (r["method"], r["T"], r["dtype"]) == key]
                skip = [x for x in suite["skipped"] if (x["method"], x["T"], x["dtype"]) == key]
                if len(got) + len(skip) != 1:
                    problems.append(f"{key}: measured {len(got)} times, skipped {len(skip)} times")
                problems += [f"{key}: skipped without a reason" for x in skip if not x.get("reason")]
                for r in got:
                    finite = [r.get(f) for f in ("median_s", "gflops", "fraction_of_gemm", "flops")
                              if f == "median_s" or r.get("flops") is not None]
                    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in finite):
                        problems.append(f"{key}: time, flops or ratio not positive and finite: {finite}")
                    sp = r.get("speedup_vs_exact")
                    if sp is not None and not (math.isfinite(sp) and sp > 0):
                        problems.append(f"{key}: speed-up over exact not positive and finite: {sp}")
                    if not (r.get("peak_bytes", -1) >= 0 and r.get("first_call_s", -1) >= 0):
                        problems.append(f"{key}: negative peak memory or first-call time")
                    if r.get("output_shape") != [T, cfg["H"]] or not r.get("output_finite"):
                        problems.append(f"{key}: output shape {r.get('output_shape')} or not finite")
    for e in suite["exponents"]:
        if not (math.isfinite(e["exponent"]) and e["T_from"] < e["T_to"]):
            problems.append(f"exponent of {e['method']} {e['dtype']}: {e}")
    problems += [f"goal verdict {g['met']!r}" for g in suite["goals"] if g.get("met") not in (True, False, None)]
    try:
        json.dumps(suite, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"not plain JSON: {exc}")
    return problems


def _fmt_s(t):
    return f"{t:.3g}" if t is not None else "-"


def format_suite(suite) -> str:
    """Tables: time per (method, T), ratios at the largest T, exponents, goals, skipped points."""
    lines = []
    m = suite["machine"]
    lines.append(f"machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs; {suite['date']}; "
                 f"load average {suite['load_average']['start']} -> {suite['load_average']['end']}")
    if suite.get("note"):
        lines.append(f"note: {suite['note']}")
    for g in suite["gemm"]:
        if "gflops" in g:
            lines.append(f"GEMM {g['dtype']} n={g['n']} ({g['when']}): {g['gflops']:.1f} GFLOP/s")
    Ts = suite["config"]["lengths"]
    w = max([18, *(len(name) + 1 for name in suite["methods"])])  # a column as wide as the longest name
    for dt in suite["config"]["dtypes"]:
        lines.append("")
        lines.append(f"{dt}: median time (s), H = {suite['config']['H']}")
        lines.append(f"{'method':<{w}}" + "".join(f"{T:>9}" for T in Ts))
        for name in suite["methods"]:
            cells = []
            for T in Ts:
                p = point(suite, name, T, dt)
                cells.append(f"{_fmt_s(p['median_s']) if p else '-':>9}")
            lines.append(f"{name:<{w}}" + "".join(cells))
        lines.append(f"{'method':<{w}}{'T':>7} {'GFLOP/s':>8} {'/GEMM':>7} {'vs exact':>9} {'peak MiB':>9} {'compile s':>10}")
        for name in suite["methods"]:
            pts = [r for r in suite["results"] if r["method"] == name and r["dtype"] == dt]
            if not pts:
                continue
            p = max(pts, key=lambda r: r["T"])
            first = min(pts, key=lambda r: r["T"])["first_call_s"]  # the cold-cache point when isolated
            sp = f"{p['speedup_vs_exact']:.2f}x" if p["speedup_vs_exact"] else "-"
            rate = "-" if p["gflops"] is None else f"{p['gflops']:.2f}"
            frac = "-" if p["fraction_of_gemm"] is None else f"{p['fraction_of_gemm']:.1%}"
            lines.append(f"{name:<{w}}{p['T']:>7} {rate:>8} {frac:>7} {sp:>9} "
                         f"{p['peak_bytes'] / 2**20:>9.1f} {first:>10.3f}")
    lines.append("")
    lines.append("scaling exponents (least squares of log t on log T)")
    for e in suite["exponents"]:
        lines.append(f"  {e['method']:<{w}} {e['dtype']}: {e['exponent']:.2f} over T = {e['T_from']} .. {e['T_to']}"
                     f" ({e['points']} points; expected {e['expected']:g})")
    lines.append("")
    lines.append("goals")
    for g in suite["goals"]:
        verdict = {True: "met", False: "NOT MET", None: "-"}[g["met"]]
        lines.append(f"  [{verdict:>7}] {g['goal']} ({g['dtype']}): {g['figure'] or ''}"
                     + (f"  ({g['detail']})" if g["detail"] else ""))
    if suite["skipped"]:
        lines.append("")
        lines.append("skipped points")
        for s in suite["skipped"]:
            lines.append(f"  {s['method']:<{w}} {s['dtype']} T={s['T']}: {s['reason']}")
    return "\n".join(lines)


def plot_suite(suite, path) -> None:
    """Time against T, log-log, one panel per dtype (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dts = suite["config"]["dtypes"]
    fig, axes = plt.subplots(1, len(dts), figsize=(6.5 * len(dts), 5), squeeze=False, sharey=True)
    for ax, dt in zip(axes[0], dts):
        for name in suite["methods"]:
            pts = sorted((r["T"], r["median_s"]) for r in suite["results"] if r["method"] == name and r["dtype"] == dt)
            if pts:
                ax.loglog(*zip(*pts), marker="o", ms=3, label=name, ls="--" if suite["methods"][name].get("oracle") else "-")
        Ts = sorted({r["T"] for r in suite["results"] if r["dtype"] == dt})
        if Ts:
            ax.set_xscale("log", base=2)
            ax.set_xticks(Ts, [str(T) for T in Ts], rotation=45, fontsize=7)
            ax.minorticks_off()
        ax.set_title(f"{dt}, H = {suite['config']['H']}")
        ax.set_xlabel("T (= S)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median time (s)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"refattn bench: {suite['machine'].get('cpu', '?')} ({suite['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
