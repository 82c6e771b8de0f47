r"""The state of one ``refattn check`` run, shared by the per-kind modules.

[`Run`][refattn.check._run.Run] holds the callable, the report being written, the master generator (every seed
passed to the callable is drawn from it, so ``--seed`` reproduces a run), the time budget and
the helpers that turn test results into verdicts:

- [`Run.mean_check`][refattn.check._run.Run.mean_check]: ``E[X_e] = truth_e`` for every entry ``e``, by the Studentised
  z-test of [`refattn.stats.z_test_mean`][refattn.stats.z_test_mean]; per-entry p-values ``2 t_{n-1}(-|z|)``,
  Bonferroni over entries.
- [`Run.two_sample_check`][refattn.check._run.Run.two_sample_check]: ``E[X_e] = E[Y_e]`` for two independent samples, Welch's
  t-test per entry (Welch 1947), Bonferroni over entries.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import stats as _st

from refattn.check.loader import Sampler, accepts, call_safely, judge_result
from refattn.check.verdict import CheckReport, Verdict, bonferroni_p
from refattn.stats import z_test_mean

__all__ = ["Run", "ARG_NAMES"]

#: The positional arguments of each kind's callable contract (named in messages).
ARG_NAMES = {"exact": ("q", "k", "v"), "backward": ("q", "k", "v", "dout"), "kernel": ("q", "k", "seed"), "attention": ("q", "k", "v", "seed"),
             "projection": ("m", "d", "seed"), "hash": ("x", "seed")}


class Run:
    """One run: ``fn`` under test (or the [`Worker`][refattn.check.isolation.Worker] that runs it),
    ``report``, master generator, budget, progress bar."""

    def __init__(self, fn, report: CheckReport, *, n_draws: int, budget_s=None, progress=False, worker=None):
        self.fn = fn
        self.worker = worker
        self.arg_names = ARG_NAMES.get(report.kind, ())
        self.report = report
        self.rng = np.random.default_rng([report.seed, 7_2026])
        self.n_draws = n_draws
        self.deadline = None if budget_s is None else time.perf_counter() + float(budget_s)
        self.progress = progress

    # --- calling -------------------------------------------------------------------------
    def seeds(self, n):
        """``n`` distinct non-negative int seeds (below 2^31, so any framework takes them)."""
        return self.rng.choice(2**31 - 2, size=n, replace=False)

    def accepts(self, name) -> bool:
        """Whether the callable takes the keyword ``name`` (explicitly; ``**kwargs`` does not count)."""
        return name in self.worker.keywords if self.worker is not None else accepts(self.fn, name)

    def call(self, args, kwargs=None, *, shape=None, integer=False, finite=True, parts=None):
        """``(array, None)`` or ``(None, CallProblem)``: one call, in the worker when there is one.
        ``parts``: the result is a tuple of that many arrays (``shape`` a list of their shapes)."""
        if self.worker is None:
            return call_safely(self.fn, args, kwargs, shape=shape, integer=integer, finite=finite, name="fn",
                               parts=parts)
        arr, problem = self.worker.call(args, kwargs, names=self.arg_names, parts=parts)
        if problem is not None:
            return None, problem
        return judge_result(arr, shape=shape, integer=integer, finite=finite, name="fn")

    def collect(self, draw, n, label, *, share=1.0):
        """Stack ``draw(seed)`` over ``n`` seeds; ``share`` of the remaining budget may be used."""
        budget = None
        if self.deadline is not None:
            budget = max(0.0, (self.deadline - time.perf_counter()) * share)
        sampler = Sampler(budget_s=budget, progress=self.progress)
        samples, problem = sampler.collect(draw, self.seeds(n), label=label)
        if sampler.truncated:
            got, wanted = sampler.truncated
            self.report.notes.append(f"{label}: budget reached after {got} of {wanted} draws (power is lower)")
        return samples, problem

    # --- verdicts ------------------------------------------------------------------------
    def add(self, verdict: Verdict) -> Verdict:
        return self.report.add(verdict)

    def problem(self, check, problem, meaning="the callable's result could not be judged") -> Verdict:
        """A failing verdict for a call that raised or returned something unusable."""
        return self.add(Verdict(check, False, f"{problem}; {meaning}", effect=problem.what))

    def skip(self, check, reason) -> Verdict:
        return self.add(Verdict(check, None, reason))

    def batched_problem(self, case, problem) -> Verdict:
        """A call on a batched case that raised or returned the wrong shape: the callable does not take
        batch dims (a skip, not a failure); any other problem fails as `problem` does."""
        if case.batch and problem.what in ("raised", "shape"):
            return self.skip(case.name, f"fn does not take batch dims ({problem})")
        return self.problem(case.name, problem)

    def exact(self, check, error, bound, meaning, effect=""):
        """A deterministic verdict: passes iff ``error <= bound``."""
        return self.add(Verdict(check, bool(error <= bound), meaning, statistic=float(error), bound=float(bound),
                                effect=effect))

    def statistical(self, check, pvalue, statistic, effect, meaning):
        return self.add(Verdict(check, None, meaning, statistic=float(statistic), pvalue=float(pvalue),
                                effect=effect, statistical=True))

    def mean_check(self, check, samples, truth, meaning, *, relative_to=None):
        """Entrywise ``E[samples] = truth`` (z-tests, Bonferroni). The effect is the worst entry's
        mean minus truth, relative to ``relative_to`` (default ``|truth|``) when given."""
        res = z_test_mean(samples, truth, alpha=0.5)  # alpha only sets res.critical; p-values below
        truth = np.broadcast_to(np.asarray(truth, dtype=float), res.mean.shape)
        p, z = _deterministic_entries(2 * _st.t.sf(np.abs(res.z), df=res.n - 1), np.abs(res.z), res.stderr,
                                      res.mean, truth, _eps_of(samples))
        w = int(np.argmax(z)) if z.size else 0
        diff = float(res.mean.ravel()[w] - truth.ravel()[w])
        ref = truth if relative_to is None else np.broadcast_to(relative_to, res.mean.shape)
        denom = float(np.abs(ref).ravel()[w])
        eff = f"{_pct(diff / denom)} at entry {_entry(w, res.z.shape)}" if denom > 0 else f"{diff:+.3g}"
        return self.statistical(check, bonferroni_p(p), float(z.ravel()[w]) if z.size else 0.0, eff,
                                f"{meaning} (n = {res.n}, {z.size} entries)")

    def two_sample_check(self, check, a, b, meaning, *, relative=True):
        """Entrywise ``E[a] = E[b]`` for independent samples (Welch t-tests, Bonferroni)."""
        eps = max(_eps_of(a), _eps_of(b))  # the coarser of the two samples' dtypes
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        ma, mb = a.mean(axis=0), b.mean(axis=0)
        va, vb = a.var(axis=0, ddof=1) / len(a), b.var(axis=0, ddof=1) / len(b)
        se = np.sqrt(va + vb)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(se > 0, (ma - mb) / np.where(se > 0, se, 1), np.where(ma == mb, 0.0, np.inf))
            df = np.where(se > 0, (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)), 1.0)
        df = np.where(np.isfinite(df), df, len(a) + len(b) - 2)
        p, t = _deterministic_entries(2 * _st.t.sf(np.abs(t), df=df), t, se, ma, mb, eps)
        w = int(np.argmax(np.abs(t))) if t.size else 0
        d = float((ma - mb).ravel()[w]) if t.size else 0.0
        base = float(np.abs(mb).ravel()[w]) if t.size else 0.0
        eff = _pct(d / base) if relative and base > 0 else f"{d:+.3g}"
        if np.ndim(t):
            eff += f" at entry {_entry(w, np.shape(t))}"
        return self.statistical(check, bonferroni_p(p), float(np.abs(t).ravel()[w]) if t.size else 0.0, eff,
                                f"{meaning} (n = {len(a)} vs {len(b)}, {np.size(t)} entries)")


def _eps_of(samples) -> float:
    """Machine epsilon of the samples' dtype (float64 for anything else)."""
    dt = np.asarray(samples).dtype
    return float(np.finfo(dt if np.issubdtype(dt, np.floating) else np.float64).eps)


def _deterministic_entries(p, stat, se, mean, ref, eps=float(np.finfo(float).eps)):
    """Entries that do not vary beyond rounding (a causal row that sees one key, a pair where the
    estimator is exact, the pooled norm of a fixed-norm float32 sampler) are identities: p = 1 if
    ``mean`` equals ``ref`` to rounding, else 0, instead of a statistic blown up by a standard error
    near 0. Rounding is that of the samples' dtype (``eps``)."""
    flat = se <= max(1e-10, 10 * eps) * (1 + np.abs(ref))
    same = np.abs(mean - ref) <= max(1e-8, 1000 * eps) * (1 + np.abs(ref))
    p = np.where(flat, np.where(same, 1.0, 0.0), p)
    return p, np.where(flat & same, 0.0, stat)


def _pct(rel):
    return f"{rel:+.2%}" if abs(rel) >= 1e-4 or rel == 0 else f"{rel:+.2e} (relative)"


def _entry(flat_index, shape):
    return tuple(int(i) for i in np.unravel_index(flat_index, shape))


def tolerance(arr) -> float:
    """Rounding allowance for identities that hold exactly in exact arithmetic:
    ``1000 eps`` of the result's dtype times its magnitude (at least 1)."""
    a = np.asarray(arr)
    eps = float(np.finfo(a.dtype).eps) if np.issubdtype(a.dtype, np.floating) else float(np.finfo(float).eps)
    return 1000 * eps * max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
