r"""refattn against the tools a user would pick instead, measured side by side in one process
(``refattn bench --peers``, ``benchmarks/peers.py``).

Peers (the optional ``peers`` extra; a family whose peer is missing is skipped with the install
command): PyTorch's ``scaled_dot_product_attention`` for exact attention, ``performer-pytorch``'s
``FastAttention`` for Performer, ``reformer-pytorch``'s ``LSHAttention`` for Reformer. Two more
families compare refattn with a baseline rather than a package: the sparse kernel against the
GEMM rate of the machine, and the Monte Carlo engine against a plain NumPy loop over draws.

Each point builds both callables on the same data (the peer gets tensors sharing the NumPy
memory), calls each once to warm up (compilation, caches), then alternates them, ``A B A B ...``,
``repeats`` times, so both see the same machine state. A point records every time,
min / median / max, ``ratio = median(refattn) / median(peer)`` (below 1: refattn is faster) and the
1-minute load average before and after. Peak memory is measured apart, in a fresh process per
point ([`peak_memory`][refattn.bench.peers.peak_memory]). Before a point the harness waits (up to ``quiet_wait_s``)
for the load average to fall to ``max_load``; a point that started above it is measured again
(up to ``retries`` times) and keeps ``under_load: true`` if it never started quiet.

Settings are matched and stated per family (``settings`` in the JSON); where the peer's defaults
compute a different quantity, the difference is stated rather than hidden. Goals are data
(``GOALS``) judged by [`judge`][refattn.bench.peers.judge]; nothing here
asserts on time.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np

from refattn.bench.measure import PeakMemory, gemm_rate, machine

__all__ = ["PEERS", "GOALS", "peer_versions", "families", "measure_pair", "peak_memory", "add_peak_memory",
           "run_peers", "judge", "format_peers", "plot_peers", "fit_exponent"]

#: family -> (import name, PyPI name) of its peer; None: a baseline, not a package
PEERS = {"exact": ("torch", "torch"), "performer": ("performer_pytorch", "performer-pytorch"),
         "reformer": ("reformer_pytorch", "reformer-pytorch"), "sparse": None, "montecarlo": None}

SETTINGS = {
    "exact": "torch.nn.functional.scaled_dot_product_attention on (1, 1, T, H) tensors (its fused CPU kernel), "
             "same dtype, is_causal at T = S (both alignments coincide); refattn softmax_attention(dtype=..., "
             "implementation='numba')",
    "performer": "performer_pytorch.FastAttention(dim_heads=H, nb_features=m, causal=...) in the same dtype, "
                 "projection drawn once at construction (refattn draws an orthogonal W per call, included in its "
                 "time); its causal path on the CPU is the package's non-CUDA prefix sum; refattn "
                 "performer_attention(m=m, projection='orthogonal', dtype=...)",
    "reformer": "reformer_pytorch.LSHAttention(bucket_size=64, n_hashes=rounds) with shared QK, float64 like "
                "refattn, the package's defaults otherwise (a chunk also attends across buckets, a pair found by "
                "several rounds counts once per round); refattn reformer_attention(n_buckets=T/64, chunk=64, "
                "rounds=..., shared_qk=True): same bucket only, each pair once",
    "sparse": "refattn sparse_attention on a block-structured support (blocks of 64: each query block sees its "
              "own key block and the one before); useful flops 4 nnz H against the float64 GEMM rate",
    "montecarlo": "refattn kernel_samples(positive features, m = d = 64, one pair) against a NumPy loop that, "
                  "per draw, draws W and evaluates the same estimator",
}

#: Goals judged on a run: kind "ratio_max" (every point's ratio <= value), "ratio_min" (>=), "stable"
#: (refattn's max / min time <= value), "gemm_fraction" (refattn's fraction of the GEMM rate >= value),
#: "exponent_max" (refattn's fitted time exponent <= value), "causal_over_bidirectional" (<= value),
#: "peak_bound" (peak bytes <= the family's bound).
GOALS = [
    {"id": "exact-f64", "family": "exact", "where": {"dtype": "float64"}, "kind": "ratio_max", "value": 1.0,
     "goal": "exact oracle (float64) at least as fast as torch SDPA float64"},
    {"id": "exact-gemm", "family": "exact", "where": {"dtype": "float64", "causal": False}, "kind": "gemm_fraction",
     "value": 0.6, "goal": "exact oracle (float64) at >= 60% of the float64 GEMM rate"},
    {"id": "exact-f32", "family": "exact", "where": {"dtype": "float32"}, "kind": "ratio_max", "value": 1.5,
     "goal": "float32 compute path within 1.5x of torch float32"},
    {"id": "performer-bidir", "family": "performer", "where": {"causal": False}, "kind": "ratio_max", "value": 1.0,
     "goal": "Performer bidirectional at or below performer-pytorch (float32 and float64)"},
    {"id": "performer-stable", "family": "performer", "where": {"causal": False}, "kind": "stable", "value": 1.3,
     "goal": "Performer bidirectional times stable (max / min of repeats <= 1.3)"},
    {"id": "performer-causal-peer", "family": "performer", "where": {"causal": True}, "kind": "ratio_max",
     "value": 0.2, "goal": "Performer causal >= 5x ahead of performer-pytorch causal"},
    {"id": "performer-causal-own", "family": "performer", "where": {}, "kind": "causal_over_bidirectional",
     "value": 1.5, "goal": "Performer causal <= 1.5x its own bidirectional time"},
    {"id": "reformer-peer", "family": "reformer", "where": {}, "kind": "ratio_max", "value": 1.0,
     "goal": "Reformer at or below reformer-pytorch (1 and 4 rounds)"},
    {"id": "reformer-exponent", "family": "reformer", "where": {}, "kind": "exponent_max", "value": 1.15,
     "goal": "Reformer's fitted scaling exponent <= 1.15"},
    {"id": "sparse-gemm", "family": "sparse", "where": {}, "kind": "gemm_fraction", "value": 0.15,
     "goal": "sparse kernel on a block-structured support at >= 15% of the float64 GEMM rate"},
    {"id": "mc-gaussian", "family": "montecarlo", "where": {"projection": "gaussian"}, "kind": "ratio_max",
     "value": 0.1, "goal": "Monte Carlo engine >= 10x a NumPy loop (Gaussian features)"},
    {"id": "mc-orthogonal", "family": "montecarlo", "where": {"projection": "orthogonal"}, "kind": "ratio_max",
     "value": 1 / 3, "goal": "Monte Carlo engine >= 3x a NumPy loop (orthogonal features)"},
    {"id": "memory", "family": "exact", "where": {}, "kind": "peak_bound", "value": None,
     "goal": "peak memory O((T + S) H) for the oracle (<= 8 (T + S) H itemsize + 64 MiB)"},
    {"id": "memory-performer", "family": "performer", "where": {}, "kind": "peak_bound", "value": None,
     "goal": "peak memory O(T m) for Performer (<= 8 T m itemsize + 64 MiB)"},
]

_MIB = 1 << 20


def peer_versions() -> dict:
    """``{import name: installed version or None}`` of every peer package (read from the installed
    distributions' metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    out = {}
    for spec in PEERS.values():
        if spec is None:
            continue
        try:
            out[spec[0]] = version(spec[1]) if find_spec(spec[0]) is not None else None
        except PackageNotFoundError:
            out[spec[0]] = None
    return out


def _inputs(T, H, dtype, seed, n=3):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal((T, H)) * 0.5).astype(dtype) for _ in range(n))


def _exact(T, H, dtype, causal, seed):
    import torch

    from refattn.exact import softmax_attention

    q, k, v = _inputs(T, H, dtype, seed)
    tq, tk, tv = (torch.from_numpy(a)[None, None] for a in (q, k, v))

    def peer():
        with torch.inference_mode():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    ref = lambda: softmax_attention(q, k, v, causal=causal, dtype=dtype, implementation="numba")  # noqa: E731
    return ref, peer, {"flops": 4.0 * T * T * H * (0.5 if causal else 1.0),
                       "bound_bytes": 8 * 2 * T * H * np.dtype(dtype).itemsize + 64 * _MIB}


def _performer(T, H, dtype, causal, seed, m=256):
    import torch
    from performer_pytorch import FastAttention

    from refattn.performer import performer_attention

    q, k, v = _inputs(T, H, dtype, seed)
    torch.manual_seed(seed)
    fa = FastAttention(dim_heads=H, nb_features=m, causal=causal).to(torch.float64 if dtype == np.float64
                                                                      else torch.float32)
    tq, tk, tv = (torch.from_numpy(a)[None, None] for a in (q, k, v))
    draws = iter(range(seed, seed + 10**9))

    def peer():
        with torch.inference_mode():
            return fa(tq, tk, tv)

    ref = lambda: performer_attention(q, k, v, m=m, rng=next(draws), causal=causal, dtype=dtype)  # noqa: E731
    return ref, peer, {"m": m, "bound_bytes": 8 * T * m * np.dtype(dtype).itemsize + 64 * _MIB}


def _reformer(T, H, rounds, seed, bucket=64):
    import torch
    from reformer_pytorch import LSHAttention

    from refattn.lsh.attention import reformer_attention

    q, v = _inputs(T, H, np.float64, seed, n=2)
    torch.manual_seed(seed)
    att = LSHAttention(bucket_size=bucket, n_hashes=rounds, causal=False).double()
    tq, tv = (torch.from_numpy(a)[None] for a in (q, v))
    draws = iter(range(seed, seed + 10**9))

    def peer():
        with torch.inference_mode():
            return att(tq, tv)

    def ref():
        return reformer_attention(q, None, v, n_buckets=T // bucket, chunk=bucket, rounds=rounds, rng=next(draws),
                                  shared_qk=True)

    return ref, peer, {"bucket": bucket}


def _sparse(T, H, seed, block=64):
    from refattn.lsh.sparse import block_sparse, sparse_attention

    q, k, v = _inputs(T, H, np.float64, seed)
    nb = -(-T // block)
    layout = np.eye(nb, dtype=bool) | np.eye(nb, k=-1, dtype=bool)
    sup = block_sparse(T, T, block, layout)
    ref = lambda: sparse_attention(q, k, v, sup)  # noqa: E731
    return ref, None, {"flops": 4.0 * sup.nnz * H, "nnz": int(sup.nnz), "block": block}


def _montecarlo(projection, n_draws, seed, d=64, m=64):
    from refattn.montecarlo import kernel_samples
    from refattn.performer.projections import orthogonal_projection

    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, d)) * (0.5 / math.sqrt(math.sqrt(d)))

    def loop():
        gen = np.random.default_rng(seed + 1)
        out = np.empty(n_draws)
        for t in range(n_draws):
            W = gen.standard_normal((m, d)) if projection == "gaussian" else orthogonal_projection(m, d, gen)
            px = np.exp(W @ x - x @ x / 2) / math.sqrt(m)
            py = np.exp(W @ y - y @ y / 2) / math.sqrt(m)
            out[t] = px @ py
        return out

    def ref():
        return kernel_samples(x, y, projection=projection, m=m, n_draws=n_draws, rng=seed + 1)

    return ref, loop, {"n_draws": n_draws, "d": d, "m": m}


def families(lengths, quick=False):
    """Every point of a run: ``(family, params)``."""
    pts = []
    for T in lengths:
        for dt in ("float64", "float32"):
            for causal in (False, True):
                pts.append(("exact", {"T": T, "H": 64, "dtype": dt, "causal": causal}))
        for dt in ("float32", "float64"):
            for causal in (False, True):
                pts.append(("performer", {"T": T, "H": 64, "dtype": dt, "causal": causal}))
        for rounds in (1, 4):
            pts.append(("reformer", {"T": T, "H": 64, "rounds": rounds}))
        pts.append(("sparse", {"T": T, "H": 64}))
    for projection in ("gaussian", "orthogonal"):
        pts.append(("montecarlo", {"projection": projection, "n_draws": 200 if quick else 20000}))
    return pts


def _build(family, p, seed):
    if family == "exact":
        return _exact(p["T"], p["H"], np.dtype(p["dtype"]).type, p["causal"], seed)
    if family == "performer":
        return _performer(p["T"], p["H"], np.dtype(p["dtype"]).type, p["causal"], seed)
    if family == "reformer":
        return _reformer(p["T"], p["H"], p["rounds"], seed)
    if family == "sparse":
        return _sparse(p["T"], p["H"], seed)
    return _montecarlo(p["projection"], p["n_draws"], seed)


def _fixed_mmap_threshold():
    """glibc raises its mmap threshold after large frees, so a freed 100 MB array is kept in the heap
    and the next call reuses resident pages: its peak would read 0. A fixed threshold (128 KiB, via
    ``mallopt``) returns large blocks to the system on free, so each call's resident peak is its
    own. Returns whether it was set (glibc only)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _load():
    return os.getloadavg()[0]


def _wait_quiet(max_load, wait_s):
    t0 = time.monotonic()
    while _load() > max_load and time.monotonic() - t0 < wait_s:
        time.sleep(2.0)
    return _load()


def _summary(ts):
    return {"times_s": ts, "min_s": min(ts), "median_s": statistics.median(ts), "max_s": max(ts)}


def measure_pair(ref, peer, repeats):
    """Warm up both, then ``A B A B ...`` ``repeats`` times. ``peer`` may be None (a baseline-only point).
    Peak memory is measured apart, in a fresh process ([`peak_memory`][refattn.bench.peers.peak_memory])."""
    ref()
    if peer is not None:
        peer()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref()
        ta.append(time.perf_counter() - t0)
        if peer is not None:
            t0 = time.perf_counter()
            peer()
            tb.append(time.perf_counter() - t0)
    out = {"refattn": _summary(ta)}
    if peer is not None:
        out["peer"] = _summary(tb)
        out["ratio"] = out["refattn"]["median_s"] / out["peer"]["median_s"]
    return out


def _memory_child():
    """Entry point of the memory subprocess: one JSON ``[family, params, seed]`` in argv, one JSON line out."""
    import json
    import sys

    family, params, seed = json.loads(sys.argv[1])
    fixed = _fixed_mmap_threshold()  # before any large allocation: no freed heap chunk for a later call to reuse
    ref, peer, _ = _build(family, params, seed)
    ref()  # warm-up: caches, compilation
    if peer is not None:
        peer()
    out = {"fixed_mmap_threshold": fixed}
    for name, fn in (("refattn", ref), ("peer", peer)):
        if fn is not None:
            with PeakMemory() as pm:
                fn()
            out[name] = pm.peak_bytes
            out["method"] = pm.method
    print(json.dumps(out))


def peak_memory(family, params, seed, timeout=1800):
    """Peak resident bytes of one warm call of refattn and of the peer, in a fresh process whose glibc
    mmap threshold is fixed (large blocks return to the system on free, so the call's peak is its
    own, not hidden by pages an earlier call left resident). Timing runs never have that setting
    (it costs every call page faults). ``{"refattn": bytes, "peer": bytes, ...}`` or ``{"error": ...}``."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from refattn.bench.peers import _memory_child; _memory_child()",
           json.dumps([family, params, seed])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_peers(lengths=(4096, 16384, 65536), *, repeats=3, seed=0, max_load=1.5, quiet_wait_s=90.0, retries=1,
              quick=False, only=None, progress=None, checkpoint=None, memory=True):
    """Measure every point of [`families`][refattn.bench.peers.families] (``only``: a subset of families);
    returns the JSON-ready run with the goals judged."""
    import json
    from pathlib import Path

    say = progress or (lambda line: None)
    versions = peer_versions()
    run = {"kind": "peers", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "versions": versions,
           "config": {"lengths": list(lengths), "repeats": repeats, "seed": seed, "max_load": max_load,
                      "quick": quick},
           "memory": {"method": "peak resident set of one warm call above its start (VmHWM reset), in a fresh "
                                "process with glibc's mmap threshold fixed at 128 KiB", "measured": memory},
           "settings": SETTINGS, "gemm": [gemm_rate(np.float64, n=512 if quick else 4096)], "points": [],
           "skipped": []}
    for family, params in families(lengths, quick):
        if only and family not in only:
            continue
        spec = PEERS[family]
        if spec is not None and versions.get(spec[0]) is None:
            run["skipped"].append({"family": family, **params, "reason": f"{spec[1]} is not installed"})
            continue
        for attempt in range(retries + 1):
            load0 = _wait_quiet(max_load, quiet_wait_s)
            ref, peer, meta = _build(family, params, seed)
            res = measure_pair(ref, peer, repeats)
            del ref, peer
            point = {"family": family, **params, **meta, **res, "load_before": load0, "load_after": _load(),
                     "attempt": attempt, "under_load": load0 > max_load}
            if not point["under_load"]:
                break
        mem = peak_memory(family, params, seed) if memory else {}
        for side in ("refattn", "peer"):
            if side in point:
                point[side]["peak_bytes"] = mem.get(side)
        if "error" in mem:
            point["memory_error"] = mem["error"]
        run["points"].append(point)
        say(_line(point))
        if checkpoint:
            Path(checkpoint).write_text(json.dumps(run, indent=1))
    run["gemm"].append(gemm_rate(np.float64, n=512 if quick else 4096))
    run["goals"] = judge(run)
    return run


def add_peak_memory(run, *, progress=None):
    """Measure (again) every point's peak memory ([`peak_memory`][refattn.bench.peers.peak_memory]) in a
    saved run, in place; memory does not depend on the load, so this may run apart from the timing."""
    say = progress or (lambda line: None)
    keys = ("T", "H", "dtype", "causal", "rounds", "projection", "n_draws")
    for point in run["points"]:
        params = {k: point[k] for k in keys if k in point}
        mem = peak_memory(point["family"], params, run["config"]["seed"])
        for side in ("refattn", "peer"):
            if side in point:
                point[side]["peak_bytes"] = mem.get(side)
        point.pop("memory_error", None)
        if "error" in mem:
            point["memory_error"] = mem["error"]
        say(_line(point))
    run["goals"] = judge(run)
    return run


def fit_exponent(Ts, times):
    """Least-squares slope of ``log t`` on ``log T`` (None with fewer than two lengths)."""
    if len(set(Ts)) < 2:
        return None
    return float(np.polyfit(np.log(Ts), np.log(times), 1)[0])


def _matches(point, where):
    return all(point.get(k) == v for k, v in where.items())


def judge(run):
    """Each goal of ``GOALS``: met (True / False) or None (no point measured), with
    the figures it was judged on."""
    gemm64 = max(g["gflops"] for g in run["gemm"])
    out = []
    for g in GOALS:
        pts = [p for p in run["points"] if p["family"] == g["family"] and _matches(p, g["where"])]
        met, detail = None, "not measured in this run"
        if pts:
            kind = g["kind"]
            if kind in ("ratio_max", "ratio_min"):
                vals = [p["ratio"] for p in pts if "ratio" in p]
                worst = max(vals) if kind == "ratio_max" else min(vals)
                met = worst <= g["value"] if kind == "ratio_max" else worst >= g["value"]
                detail = f"worst ratio {worst:.3g} (goal {'<=' if kind == 'ratio_max' else '>='} {g['value']:.3g})"
            elif kind == "stable":
                vals = [p["refattn"]["max_s"] / p["refattn"]["min_s"] for p in pts]
                met, detail = max(vals) <= g["value"], f"worst max/min {max(vals):.3g} (goal <= {g['value']})"
            elif kind == "gemm_fraction":
                vals = [p["flops"] / p["refattn"]["median_s"] / 1e9 / gemm64 for p in pts]
                met = min(vals) >= g["value"]
                detail = f"fraction of the float64 GEMM rate ({gemm64:.0f} GFLOP/s): {min(vals):.2f} to {max(vals):.2f}"
            elif kind == "exponent_max":
                exps = {}
                for rounds in sorted({p["rounds"] for p in pts}):
                    sel = sorted((p["T"], p["refattn"]["median_s"]) for p in pts if p["rounds"] == rounds)
                    exps[rounds] = fit_exponent(*zip(*sel))
                known = [e for e in exps.values() if e is not None]
                met = (max(known) <= g["value"]) if known else None
                detail = "exponent by rounds: " + ", ".join(f"{r}: {e:.2f}" if e is not None else f"{r}: -"
                                                            for r, e in exps.items())
            elif kind == "causal_over_bidirectional":
                vals = []
                for p in pts:
                    if p["causal"]:
                        twin = [b for b in pts if not b["causal"] and b["T"] == p["T"] and b["dtype"] == p["dtype"]]
                        if twin:
                            vals.append(p["refattn"]["median_s"] / twin[0]["refattn"]["median_s"])
                if vals:
                    met, detail = max(vals) <= g["value"], f"worst {max(vals):.3g} (goal <= {g['value']})"
            elif kind == "peak_bound":
                known = [p for p in pts if p["refattn"].get("peak_bytes") is not None]
                if known:
                    met = all(p["refattn"]["peak_bytes"] <= p["bound_bytes"] for p in known)
                worst = max(pts, key=lambda p: (p["refattn"].get("peak_bytes") or 0) / p["bound_bytes"])
                detail = (f"largest peak {(worst['refattn'].get('peak_bytes') or 0) / _MIB:.0f} MiB against its bound "
                          f"{worst['bound_bytes'] / _MIB:.0f} MiB (T = {worst['T']})" if known
                          else "no peak measured")
            if any(p["under_load"] for p in pts):
                detail += "; some points started above the load limit"
        out.append({"id": g["id"], "goal": g["goal"], "met": met, "detail": detail,
                    "quiet": bool(pts) and not any(p["under_load"] for p in pts)})
    return out


def _label(p):
    extra = {"exact": lambda: f"{p['dtype']}{' causal' if p['causal'] else ''}",
             "performer": lambda: f"{p['dtype']}{' causal' if p['causal'] else ''} m={p['m']}",
             "reformer": lambda: f"{p['rounds']} round{'s' if p['rounds'] > 1 else ''}",
             "sparse": lambda: f"blocks of {p['block']}",
             "montecarlo": lambda: f"{p['projection']}, {p['n_draws']} draws"}[p["family"]]()
    size = f"T={p['T']:>6}" if "T" in p else " " * 8
    return f"{p['family']:<10} {size}  {extra:<24}"


def _line(p):
    r = p["refattn"]
    text = f"{_label(p)} refattn {r['median_s']:9.4f} s [{r['min_s']:.4f}-{r['max_s']:.4f}]"
    if "peer" in p:
        text += f"  peer {p['peer']['median_s']:9.4f} s  ratio {p['ratio']:6.3f}"
    elif "flops" in p:
        text += f"  {p['flops'] / r['median_s'] / 1e9:7.1f} GFLOP/s"
    mem = f"{r['peak_bytes'] / _MIB:7.1f} MiB" if r.get("peak_bytes") is not None else "      ?"
    return text + f"  peak {mem}  load {p['load_before']:.2f}" + ("  UNDER LOAD" if p["under_load"] else "")


def format_peers(run) -> str:
    """The run as text: every point, then the goals."""
    rates = ", ".join(f"{g['gflops']:.0f}" for g in run["gemm"])
    lines = [f"refattn against its peers: {run['machine'].get('cpu', '?')}, {run['machine'].get('cpus')} CPUs, "
             f"{run['date']}",
             "peers: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in run["versions"].items()),
             "ratio = refattn median / peer median (below 1: refattn faster); calls interleaved after a warm-up",
             f"float64 GEMM rate: {rates} GFLOP/s (start, end)", ""]
    lines += [_line(p) for p in run["points"]]
    for s in run["skipped"]:
        lines.append(f"skipped {s['family']}: {s['reason']}")
    lines += ["", "goals:"]
    for g in run["goals"]:
        mark = {True: "met", False: "NOT MET", None: "n/a"}[g["met"]]
        lines.append(f"  [{mark:>7}] {g['goal']}: {g['detail']}")
    return "\n".join(lines)


def plot_peers(run, path):
    """Ratio against T per comparison (log-log), the parity line at 1 (needs matplotlib)."""
    from refattn.evaluation.figures import finish, pyplot_or_error

    plt = pyplot_or_error()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, family in zip(axes, ("exact", "performer", "reformer")):
        series = {}
        for p in run["points"]:
            if p["family"] == family and "ratio" in p:
                series.setdefault(_label(p).split("T=")[1].split(None, 1)[1].strip(), []).append((p["T"], p["ratio"]))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(1.0, color="k", lw=1, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title({"exact": "exact vs torch SDPA", "performer": "Performer vs performer-pytorch",
                      "reformer": "Reformer vs reformer-pytorch"}[family])
        ax.set_xlabel("T (= S), H = 64")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("time ratio refattn / peer (below 1: refattn faster)")
    fig.suptitle(f"refattn against its peers, {run['machine'].get('cpu', '?')}, {run['date']}", fontsize=9)
    finish(fig, path)
