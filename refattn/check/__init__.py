r"""Checking other implementations: exact and statistical verdicts for a user's callable.

>>> from refattn.check import check
>>> report = check("mypkg.attn:flash_forward", kind="exact")   # doctest: +SKIP
>>> print(report.format_table()); report.passed                # doctest: +SKIP

``kind`` and the callable contract (the docs' check page):

| kind | callable | module |
|---|---|---|
| exact | ``fn(q, k, v[, causal=, mask=]) -> out`` | [`refattn.check.exact`][refattn.check.exact] |
| backward | ``fn(q, k, v, dout[, causal=, mask=]) -> (dq, dk, dv)`` | [`refattn.check.backward`][refattn.check.backward] |
| merge | ``fn(outs, lses) -> (out, lse)`` (split-KV states) | [`refattn.check.merge`][refattn.check.merge] |
| varlen | ``fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k[, causal=, window_size=, seqused_k=])`` | [`refattn.check.varlen`][refattn.check.varlen] |
| varlen_backward | ``fn(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k[, ...]) -> (dq, dk, dv)`` | [`refattn.check.varlen`][refattn.check.varlen] |
| paged | ``fn(q, k_cache, v_cache[, k=, v=], cache_seqlens=, block_table=[, causal=, window_size=])`` | [`refattn.check.paged`][refattn.check.paged] |
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

import inspect
import time

from refattn._validation import InputError
from refattn.check._run import Run
from refattn.check.attention import check_attention
from refattn.check.backward import check_backward
from refattn.check.exact import check_exact
from refattn.check.hashing import check_hash
from refattn.check.isolation import Worker, WorkerError
from refattn.check.kernel import check_kernel
from refattn.check.merge import check_merge
from refattn.check.varlen import check_varlen, check_varlen_backward
from refattn.check.paged import check_paged
from refattn.check.loader import LoadFailure, TargetError, describe_target, load_target
from refattn.check.projection import check_projection
from refattn.check.spec import DEFAULT_DRAWS, DEFAULT_TIMEOUT, KINDS, CheckSpec, signature
from refattn.check.verdict import CheckReport, Verdict

__all__ = ["check", "KINDS", "DEFAULT_DRAWS", "DEFAULT_TIMEOUT", "TargetError", "CheckReport", "Verdict", "CheckSpec"]

#: The function that runs each kind's checks on a `Run`, called with the spec's options for the kind.
KIND_CHECKS = {"exact": check_exact, "backward": check_backward, "merge": check_merge, "varlen": check_varlen, "varlen_backward": check_varlen_backward, "paged": check_paged, "kernel": check_kernel, "attention": check_attention,
               "projection": check_projection, "hash": check_hash}


def check(target, kind, **options) -> CheckReport:
    """Check the callable ``target`` (a callable, ``"pkg.mod:fn"`` or ``"path/file.py:fn"``).

    ``target`` is imported and executed as code, with the rights of the user who runs the check:
    check only code you would run. It runs in a worker process ([`refattn.check.isolation`][refattn.check.isolation])
    unless ``isolate=False``: a crash, a hang, an exit, an allocation beyond ``memory_limit`` or a
    write into its inputs becomes a failing verdict, and what it prints is captured
    (``report.output``), never mixed into the checker's output.

    Parameters
    ----------
    kind : {"exact", "backward", "merge", "varlen", "varlen_backward", "paged", "kernel", "attention", "projection", "hash"}
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
        Grouped-query attention (exact kind with a layout with heads; varlen, paged kinds): ``k``, ``v`` have 2 heads for
        the 4 query heads; query head ``h`` reads key/value head ``h // 2``.
    self_attention : bool
        The callable takes ``T = S`` only (exact kind): the cases whose point is ``T != S`` are
        skipped, the rest run at ``S = T``.
    equal_head_dims : bool
        The callable needs values with the head dim of queries and keys (``Hv = H``, as most fused
        kernels): every case uses it (exact and backward kinds).
    precision : {"float64", "float32", "float16", "bfloat16"}
        The precision ``fn`` claims to compute in (exact, backward, varlen, paged kinds; merge: float32
        or float64): its cases get inputs in that
        precision and are judged by the FlashAttention rule against what a kernel of that
        precision computes ([`refattn.precision.kernel_reference`][refattn.precision.kernel_reference]).
    lse_base, empty_lse, lse_layout
        The merge kind's conventions: the states' log-sum-exp base (``"e"``, ``"2"``), the lse of a
        state that saw no key (``"-inf"``, ``"+inf"``), the lses' layout (``"NT"``, ``"TN"``;
        [`refattn.check.merge`][refattn.check.merge]).
    kv_layout : {"NHD", "HND"}
        The paged kind's page layout: ``(pages, page_size, heads, head_dim)`` or ``(pages, heads,
        page_size, head_dim)`` ([`refattn.check.paged`][refattn.check.paged]).
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

    spec : CheckSpec, optional
        The options as one validated object ([`refattn.check.spec.CheckSpec`][refattn.check.spec.CheckSpec]), instead of keywords.

    Every option is a row of [`refattn.check.spec.OPTIONS`][refattn.check.spec.OPTIONS] (its flag, the kinds it
    applies to, its default, its validation); a value other than the default for an option the kind
    does not take is an error naming it.

    Returns
    -------
    CheckReport
        ``.passed``, ``.exit_code``, ``.format_table()``, ``.to_json()``.
    """
    spec = options.pop("spec", None)
    if spec is None:
        spec = CheckSpec.build(kind, **options)
    elif options or not isinstance(spec, CheckSpec) or spec.kind != kind:
        raise InputError("spec: give a CheckSpec of this kind, or options, not both")
    report = CheckReport(describe_target(target), kind, spec.alpha, spec.seed)
    report.command = spec.command(report.target)
    start = time.perf_counter()
    worker = None
    try:
        if spec.isolate:
            worker = Worker(target, timeout=spec.timeout, memory_limit=spec.memory_limit)
            fn = None
        else:
            fn = load_target(target)
    except (LoadFailure, WorkerError) as exc:
        report.add(Verdict("load", False, str(exc)))
        return report
    if not spec.isolate:
        report.notes.append("isolation off (isolate=False): the callable ran in the checker's own process, where it "
                            "could change the checker itself; these verdicts are only as trustworthy as the callable")
    run = Run(fn, report, n_draws=spec.n_draws, budget_s=spec.budget, progress=spec.progress, worker=worker,
              max_bias=spec.max_bias, max_variance_ratio=spec.max_variance_ratio)
    try:
        KIND_CHECKS[kind](run, **spec.kind_options())
    finally:
        if worker is not None:
            worker.close()
            report.output = worker.output
            if worker.restarts:
                report.notes.append(f"the worker process was restarted {worker.restarts} time(s) after a crash "
                                    "or a timeout")
    report.elapsed_s = time.perf_counter() - start
    return report.finalize()


check.__signature__ = signature("target", "kind").replace(parameters=[
    *signature("target", "kind").parameters.values(), inspect.Parameter("spec", inspect.Parameter.KEYWORD_ONLY,
                                                                        default=None)])
