r"""Checking other implementations: exact and statistical verdicts for a user's callable.

>>> from refattn.check import check
>>> report = check("mypkg.attn:flash_forward", kind="exact")   # doctest: +SKIP
>>> print(report.format_table()); report.passed                # doctest: +SKIP

``kind`` and the callable contract (the docs' check page):

| kind | callable | module |
|---|---|---|
| exact | ``fn(q, k, v[, causal=, mask=]) -> out`` | [`refattn.check.exact`][refattn.check.exact] |
| backward | ``fn(q, k, v, dout[, causal=, mask=]) -> (dq, dk, dv)`` | [`refattn.check.backward`][refattn.check.backward] |
| kernel | ``fn(q, k, seed[, m=]) -> K_hat (T, S)`` | [`refattn.check.kernel`][refattn.check.kernel] |
| attention | ``fn(q, k, v, seed[, m=, causal=, key_lengths=]) -> out (T, Hv)`` | [`refattn.check.attention`][refattn.check.attention] |
| projection | ``fn(m, d, seed) -> W (m, d)`` | [`refattn.check.projection`][refattn.check.projection] |
| hash | ``fn(x, seed) -> bucket ids (T,)`` | [`refattn.check.hashing`][refattn.check.hashing] |

Outputs may be anything `numpy.asarray` converts (torch, cupy, jax arrays). Every
statistical verdict of a run shares one family-wise false-alarm probability ``alpha``
(default 1e-3; Bonferroni within a check, Holm across checks: [`refattn.check.verdict`][refattn.check.verdict]).
Power against a catalogue of planted defects is measured in proofs_tests/check/test_planted.py
([`refattn.check.planted`][refattn.check.planted]).
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np

from refattn._validation import InputError, InputTypeError, check_bool, check_positive_int
from refattn.check._run import DEFAULT_MAX_BIAS, DEFAULT_MAX_VARIANCE_RATIO, Run
from refattn.check.attention import check_attention
from refattn.check.backward import BACKWARD_PRECISIONS, check_backward
from refattn.check.exact import DEFAULT_HEAD_DIMS, DEFAULT_SIZES, EMPTY_ROWS, LAYOUTS, SIZES, check_exact
from refattn.check.hashing import HASH_FAMILIES, check_hash, hash_draws
from refattn.check.isolation import Worker, WorkerError, default_memory_limit
from refattn.check.kernel import check_kernel
from refattn.check.loader import LoadFailure, TargetError, describe_target, load_target
from refattn.check.projection import check_projection
from refattn.check.verdict import CheckReport, Verdict
from refattn.precision import PRECISIONS

__all__ = ["check", "KINDS", "DEFAULT_DRAWS", "DEFAULT_TIMEOUT", "TargetError", "CheckReport", "Verdict"]

KINDS = ("exact", "backward", "kernel", "attention", "projection", "hash")
DEFAULT_DRAWS = {"exact": 0, "backward": 0, "kernel": 2000, "attention": 1000, "projection": 2000,
                 "hash": 1000}  # hash: at least; the default is chosen for power (refattn.check.hashing.hash_draws)
#: Seconds one call of the callable may take (isolated runs), and the most it may be set to (a week).
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 7 * 24 * 3600.0
#: The largest address-space limit (bytes) a worker may be given: 2^62, far above any machine's memory.
MAX_MEMORY_LIMIT = float(2**62)


def check(target, kind, *, method="positive", projection=None, m=None, A=None, family="simhash", bits=1, buckets=8,
          width=1.0, alignment="bottom_right", alpha=1e-3, seed=0, n_draws=None, budget=None,
          progress=False, isolate=True, timeout=DEFAULT_TIMEOUT, memory_limit="auto",
          precision="float64", layout="TH", gqa=False, self_attention=False, equal_head_dims=False,
          rounds=None, max_bias=DEFAULT_MAX_BIAS, max_variance_ratio=DEFAULT_MAX_VARIANCE_RATIO, sizes=DEFAULT_SIZES,
          head_dims=DEFAULT_HEAD_DIMS, empty_rows="zeros", probe_head_dims=False, determinism=False,
          batch_invariance=False) -> CheckReport:
    """Check the callable ``target`` (a callable, ``"pkg.mod:fn"`` or ``"path/file.py:fn"``).

    ``target`` is imported and executed as code, with the rights of the user who runs the check:
    check only code you would run. It runs in a worker process ([`refattn.check.isolation`][refattn.check.isolation])
    unless ``isolate=False``: a crash, a hang, an exit, an allocation beyond ``memory_limit`` or a
    write into its inputs becomes a failing verdict, and what it prints is captured
    (``report.output``), never mixed into the checker's output.

    Parameters
    ----------
    kind : {"exact", "backward", "kernel", "attention", "projection", "hash"}
    method : {"positive", "hyperbolic", "trigonometric", "favorpp"}
        The random-feature estimator ``fn`` implements (kernel, attention; ``favorpp``, FAVOR++,
        for the kernel kind).
    projection : {"gaussian", "orthogonal", "regular"}, optional
        Its projection (default ``"orthogonal"`` for kernel/attention; for ``kind="projection"``
        the claim checked: ``"orthogonal"`` adds the orthogonality check, ``"regular"`` expects
        fixed norms; default ``"gaussian"``).
    m : int, optional
        The feature count ``fn`` uses (passed as ``m=`` when ``fn`` takes it). Needed for the
        kernel variance check and for ``kind="attention"``; default 64 for attention, and 16
        rows for ``kind="projection"``.
    A : float, optional
        FAVOR++'s parameter (``A < 1/8``); default: the optimal ``A*`` of the probe inputs, as
        refattn computes it from the data ([`refattn.check.kernel.favorpp_A`][refattn.check.kernel.favorpp_A]).
    family, bits, buckets, width
        The hash family (``simhash`` with ``bits``, ``angular`` with ``buckets``,
        ``cross_polytope``, ``e2lsh`` with ``width``).
    rounds : int, optional
        A multi-round hash (hash kind): the callable returns ``(rounds, T)`` ids, and a pair collides
        when it shares a bucket in any round.
    alignment : {"bottom_right", "top_left"}
        What ``causal=True`` means for ``fn`` (exact kind).
    layout : {"TH", "BTH", "BNTH", "BTNH"}
        How the callable takes its arrays (exact kind): ``T`` tokens, ``H`` features, ``B`` batch,
        ``N`` heads; cases then have 2 batch items and 4 heads, judged head by head.
    gqa : bool
        Grouped-query attention (exact kind, a layout with heads): ``k``, ``v`` have 2 heads for
        the 4 query heads; query head ``h`` reads key/value head ``h // 2``.
    self_attention : bool
        The callable takes ``T = S`` only (exact kind): the cases whose point is ``T != S`` are
        skipped, the rest run at ``S = T``.
    equal_head_dims : bool
        The callable needs values with the head dim of queries and keys (``Hv = H``, as most fused
        kernels): every case uses it (exact and backward kinds).
    precision : {"float64", "float32", "float16", "bfloat16"}
        The precision ``fn`` claims to compute in (exact kind): its cases get inputs in that
        precision and are judged by the FlashAttention rule against what a kernel of that
        precision computes ([`refattn.precision.kernel_reference`][refattn.precision.kernel_reference]).
    alpha : float
        Family-wise false-alarm probability of the run's statistical checks.
    sizes : {"small", "tiles", "long"}
        The exact and backward kinds' size preset: ``small`` (T, S <= 31), ``tiles`` (the default:
        and lengths that cross 64- and 128-row tiles, 63 to 257, T != S both ways, causal, padding,
        a mask), ``long`` (and T = S = 4096).
    head_dims : sequence of int
        The head dims of the tile and long cases (default ``(64,)``; each case runs at each).
    empty_rows : {"zeros", "nan", "any"}
        What a row that sees no key (fully masked, no keys past the padding, causal ``T > S``) must
        be: zeros (default: flash-attn's and torch SDPA's), NaN, or not judged.
    probe_head_dims : bool
        A tile case whose head dim the callable rejects by raising is reported as unsupported (a
        skip), not as a failure.
    determinism, batch_invariance : bool
        The exact kind also checks bits ([`refattn.check.repeatable`][refattn.check.repeatable]): three calls
        on the same inputs agree, and a batch item's output does not depend on the rest of the batch,
        its position or the batch size.
    max_bias, max_variance_ratio : float
        The defects a statistical PASS must have been able to detect, with probability 0.99 at its
        share of ``alpha``: a relative bias (default 1%, the pooled bias checks) and a variance
        ratio (default 10%, the variance and MSE checks). A check short of that power draws more
        (up to 16 times its draws, within ``budget``, else 120 s); if it still falls short its
        verdict is INCONCLUSIVE (``report.result``, exit code 4), never PASS.
    seed : int
        Master seed: the inputs and every seed passed to ``fn`` derive from it.
    n_draws : int, optional
        Seeds per statistical check (default `DEFAULT_DRAWS`; for hashes, enough to detect a
        10% relative change of a collision rate with probability 0.99,
        [`refattn.check.hashing.hash_draws`][refattn.check.hashing.hash_draws]; the measured power holds at the defaults).
    budget : float, optional
        Seconds the sampling may take; when they run out, the draws so far are used (noted).
    progress : bool
        A progress bar (tqdm, on stderr) for the sampling.
    isolate : bool
        Run the callable in a worker process (default). ``False`` calls it in this process: faster
        to start, but a crash or a hang of the callable is then the checker's.
    timeout : float
        Seconds one call may take before the worker is stopped and the call fails (isolated runs).
    memory_limit : int, "auto" or None
        Bytes of address space the worker may use (``"auto"``: half of the machine's memory;
        ``None``: no limit). Isolated runs only.

    Returns
    -------
    CheckReport
        ``.passed``, ``.exit_code``, ``.format_table()``, ``.to_json()``.
    """
    if kind not in KINDS:
        raise InputError(f"kind: expected one of {KINDS}, got {kind!r}")
    alpha = _positive_number(alpha, "alpha")
    isolate, progress = check_bool(isolate, "isolate"), check_bool(progress, "progress")
    if not 0 < alpha < 1:
        raise InputError(f"alpha: must lie in (0, 1), got {alpha}")
    max_bias = _positive_number(max_bias, "max_bias")
    max_variance_ratio = _positive_number(max_variance_ratio, "max_variance_ratio")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r}")
    seed = int(seed)
    n_draws_given = n_draws
    n_draws = DEFAULT_DRAWS[kind] if n_draws is None else check_positive_int(n_draws, "n_draws", minimum=20)
    if m is not None:
        m = check_positive_int(m, "m")
    if A is not None and (kind != "kernel" or method != "favorpp"):
        raise InputError(f"A: FAVOR++'s parameter applies to kind 'kernel' with method 'favorpp', not {kind!r}/{method!r}")
    if budget is not None and not float(budget) > 0:
        raise InputError(f"budget: must be > 0 seconds, got {budget}")
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision != "float64" and kind not in ("exact", "backward"):
        raise InputError(f"precision: a precision claim applies to --kind exact or backward, not {kind!r}")
    if self_attention and kind != "exact":
        raise InputError(f"self_attention: a self-attention claim applies to --kind exact, not {kind!r}")
    if gqa and kind not in ("exact", "backward"):
        raise InputError(f"gqa: a grouped-query claim applies to --kind exact or backward, not {kind!r}")
    if (layout != "TH" or equal_head_dims) and kind not in ("exact", "backward"):
        raise InputError(f"layout: layouts and head-dim claims apply to --kind exact or backward, not {kind!r}")
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if gqa and layout not in ("BNTH", "BTNH"):
        raise InputError(f"gqa: grouped-query heads need a layout with a heads axis (BNTH or BTNH), got {layout!r}")
    if kind == "backward" and precision not in BACKWARD_PRECISIONS:
        raise InputError(f"precision: the backward kind judges {BACKWARD_PRECISIONS} claims, got {precision!r}")
    if sizes not in SIZES:
        raise InputError(f"sizes: expected one of {SIZES}, got {sizes!r}")
    head_dims = _head_dims(head_dims)
    if empty_rows not in EMPTY_ROWS:
        raise InputError(f"empty_rows: expected one of {EMPTY_ROWS}, got {empty_rows!r}")
    probe_head_dims = check_bool(probe_head_dims, "probe_head_dims")
    determinism, batch_invariance = check_bool(determinism, "determinism"), check_bool(batch_invariance,
                                                                                        "batch_invariance")
    if (determinism or batch_invariance) and kind != "exact":
        raise InputError(f"determinism, batch_invariance: bit-level checks of --kind exact, not {kind!r}")
    if rounds is not None and kind != "hash":
        raise InputError(f"rounds: a multi-round claim applies to --kind hash, not {kind!r}")
    if kind == "hash":
        if family not in HASH_FAMILIES:
            raise InputError(f"family: expected one of {HASH_FAMILIES}, got {family!r}")
        bits, buckets = check_positive_int(bits, "bits"), check_positive_int(buckets, "buckets", minimum=2)
        width = _positive_number(width, "width")
        rounds = None if rounds is None else check_positive_int(rounds, "rounds")
        if n_draws_given is None:
            n_draws = hash_draws(family, bits=bits, buckets=buckets, width=width, rounds=rounds, alpha=alpha)
    timeout = _positive_number(timeout, "timeout", maximum=MAX_TIMEOUT)
    if isinstance(memory_limit, str) and memory_limit == "auto":
        memory_limit = default_memory_limit()
    elif memory_limit is not None:
        memory_limit = int(_positive_number(memory_limit, "memory_limit", maximum=MAX_MEMORY_LIMIT))
    report = CheckReport(describe_target(target), kind, alpha, seed)
    report.command = _command(report.target, kind, method=method, projection=projection, m=m, A=A, family=family,
                              bits=bits, buckets=buckets, width=width, alignment=alignment, alpha=alpha, seed=seed,
                              n_draws=n_draws, budget=budget, isolate=isolate, timeout=timeout,
                              memory_limit=memory_limit, precision=precision, layout=layout, gqa=gqa,
                              self_attention=self_attention, equal_head_dims=equal_head_dims, rounds=rounds,
                              max_bias=max_bias, max_variance_ratio=max_variance_ratio, sizes=sizes,
                              head_dims=head_dims, empty_rows=empty_rows, probe_head_dims=probe_head_dims,
                              determinism=determinism, batch_invariance=batch_invariance)
    start = time.perf_counter()
    worker = None
    try:
        if isolate:
            worker = Worker(target, timeout=timeout, memory_limit=memory_limit)
            fn = None
        else:
            fn = load_target(target)
    except (LoadFailure, WorkerError) as exc:
        report.add(Verdict("load", False, str(exc)))
        return report
    if not isolate:
        report.notes.append("isolation off (isolate=False): the callable ran in the checker's own process, where it "
                            "could change the checker itself; these verdicts are only as trustworthy as the callable")
    run = Run(fn, report, n_draws=n_draws, budget_s=budget, progress=progress, worker=worker, max_bias=max_bias,
              max_variance_ratio=max_variance_ratio)
    try:
        _dispatch(run, kind, method=method, projection=projection, m=m, A=A, family=family, bits=bits,
                  buckets=buckets, width=width, alignment=alignment, precision=precision, layout=layout, gqa=gqa,
                  self_attention=self_attention, equal_head_dims=equal_head_dims, rounds=rounds, sizes=sizes,
                  head_dims=head_dims, empty_rows=empty_rows, probe_head_dims=probe_head_dims,
                  determinism=determinism, batch_invariance=batch_invariance)
    finally:
        if worker is not None:
            worker.close()
            report.output = worker.output
            if worker.restarts:
                report.notes.append(f"the worker process was restarted {worker.restarts} time(s) after a crash "
                                    "or a timeout")
    report.elapsed_s = time.perf_counter() - start
    return report.finalize()


def _command(target, kind, *, method, projection, m, A, family, bits, buckets, width, alignment, alpha, seed,
             n_draws, budget, isolate, timeout, memory_limit, precision, layout="TH", gqa=False,
             self_attention=False, equal_head_dims=False, rounds=None, max_bias=DEFAULT_MAX_BIAS,
             max_variance_ratio=DEFAULT_MAX_VARIANCE_RATIO, sizes=DEFAULT_SIZES, head_dims=DEFAULT_HEAD_DIMS,
             empty_rows="zeros", probe_head_dims=False, determinism=False, batch_invariance=False):
    """The ``refattn check`` command line that reruns this check: every option that shapes it."""
    flags = [f"--kind {kind}"]
    if kind in ("exact", "backward"):
        flags += [f"--alignment {alignment}", f"--precision {precision}"]
    if kind in ("exact", "backward"):
        flags += [f"--layout {layout}"] + (["--gqa"] if gqa else []) + (["--self-attention"] if self_attention else [])
        flags += ["--equal-head-dims"] if equal_head_dims else []
        flags += [f"--sizes {sizes}", f"--head-dims {','.join(str(h) for h in head_dims)}"]
        flags += ([f"--empty-rows {empty_rows}"] if kind == "exact" else []) + (["--probe-head-dims"] if probe_head_dims else [])
        flags += (["--determinism"] if determinism else []) + (["--batch-invariance"] if batch_invariance else [])
    if kind in ("kernel", "attention"):
        flags += [f"--method {method}", f"--projection {projection or 'orthogonal'}"]
        if m is not None or kind == "attention":
            flags.append(f"--features {64 if m is None else m}")
        if A is not None:
            flags.append(f"--A {A:g}")
    if kind == "projection":
        flags += [f"--projection {projection or 'gaussian'}", f"--features {16 if m is None else m}"]
    if kind == "hash":
        flags.append(f"--family {family}")
        flags.append({"simhash": f"--bits {bits}", "angular": f"--buckets {buckets}", "e2lsh": f"--width {width:g}"}
                     .get(family, ""))
        if rounds is not None:
            flags.append(f"--rounds {rounds}")
    if kind not in ("exact", "backward"):
        flags.append(f"--draws {n_draws}")
        if max_bias != DEFAULT_MAX_BIAS:
            flags.append(f"--max-bias {max_bias:g}")
        if max_variance_ratio != DEFAULT_MAX_VARIANCE_RATIO:
            flags.append(f"--max-variance-ratio {max_variance_ratio:g}")
    flags += [f"--alpha {alpha:g}", f"--seed {seed}"]
    if budget is not None:
        flags.append(f"--budget {float(budget):g}")
    if isolate:
        flags.append(f"--timeout {timeout:g}")
        if memory_limit is not None and memory_limit != default_memory_limit():
            flags.append(f"--memory-limit {memory_limit / 2**30:g}")
    return " ".join(["refattn check", target] + [f for f in flags if f])


def _positive_number(value, name, *, maximum=None):
    """A real number (not a string, not a bool), finite, > 0 and at most ``maximum``."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name}: must be finite and > 0, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: at most {maximum:g}, got {value:g}")
    return value


def _head_dims(head_dims):
    """A non-empty tuple of head dims, each an integer in [1, 1024]."""
    if isinstance(head_dims, (int, np.integer)) and not isinstance(head_dims, bool):
        head_dims = (head_dims,)
    try:
        dims = tuple(head_dims)
    except TypeError:
        raise InputTypeError(f"head_dims: expected a sequence of integers, got {head_dims!r}") from None
    if not dims:
        raise InputError("head_dims: give at least one head dim")
    return tuple(check_positive_int(h, "head_dims", maximum=1024) for h in dims)


def _dispatch(run, kind, *, method, projection, m, A, family, bits, buckets, width, alignment, precision, layout,
              gqa, self_attention, equal_head_dims, rounds, sizes, head_dims, empty_rows, probe_head_dims,
              determinism=False, batch_invariance=False):
    if kind == "exact":
        check_exact(run, alignment=alignment, precision=precision, layout=layout, gqa=gqa,
                    self_attention=self_attention, equal_head_dims=equal_head_dims, sizes=sizes,
                    head_dims=head_dims, empty_rows=empty_rows, probe_head_dims=probe_head_dims,
                    determinism=determinism, batch_invariance=batch_invariance)
    elif kind == "backward":
        check_backward(run, alignment=alignment, precision=precision, layout=layout, equal_head_dims=equal_head_dims,
                       gqa=gqa, sizes=sizes, head_dims=head_dims, probe_head_dims=probe_head_dims)
    elif kind == "kernel":
        check_kernel(run, method=method, projection=projection or "orthogonal", m=m, A=A)
    elif kind == "attention":
        check_attention(run, method=method, projection=projection or "orthogonal", m=64 if m is None else m)
    elif kind == "projection":
        check_projection(run, projection=projection or "gaussian", m=16 if m is None else m)
    else:
        check_hash(run, family=family, bits=bits, buckets=buckets, width=width, rounds=rounds)
