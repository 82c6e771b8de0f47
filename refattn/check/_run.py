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
from refattn.precision import eps as _eps
from refattn.precision import values_eps
from refattn.stats import min_draws_for_mean_shift, z_test_mean

_EPS64 = _eps("float64")

__all__ = ["Run", "ARG_NAMES", "MAX_DRAW_FACTOR", "POWER_BUDGET_S", "DEFAULT_MAX_BIAS", "DEFAULT_MAX_VARIANCE_RATIO"]

#: A check short of power draws at most this many times its initial draws ...
MAX_DRAW_FACTOR = 16
#: ... and, without ``--budget``, for at most this many seconds (projected from the first draws).
POWER_BUDGET_S = 120.0
#: The default tolerances (``--max-bias``, ``--max-variance-ratio``): a PASS must be able to detect a
#: relative bias of 1% and a variance 10% off its claimed value, with probability 0.99.
DEFAULT_MAX_BIAS, DEFAULT_MAX_VARIANCE_RATIO = 0.01, 0.10
#: Extra draws are planned for this multiple of the projected need.
POWER_MARGIN = 1.25

#: The positional arguments of each kind's callable contract (named in messages).
ARG_NAMES = {"exact": ("q", "k", "v"), "backward": ("q", "k", "v", "dout"), "merge": ("outs", "lses"),
             "varlen": ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),
             "varlen_backward": ("q", "k", "v", "dout", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),
             "paged": ("q", "k_cache", "v_cache"), "kernel": ("q", "k", "seed"), "attention": ("q", "k", "v", "seed"),
             "projection": ("m", "d", "seed"), "hash": ("x", "seed")}


class Run:
    """One run: ``fn`` under test (or the [`Worker`][refattn.check.isolation.Worker] that runs it),
    ``report``, master generator, budget, progress bar."""

    def __init__(self, fn, report: CheckReport, *, n_draws: int, budget_s=None, progress=False, worker=None,
                 max_bias=DEFAULT_MAX_BIAS, max_variance_ratio=DEFAULT_MAX_VARIANCE_RATIO):
        self.max_bias, self.max_variance_ratio = max_bias, max_variance_ratio
        self.seconds_per_draw = 0.0
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
        start = time.perf_counter()
        samples, problem = sampler.collect(draw, self.seeds(n), label=label)
        if samples is not None and len(samples):
            self.seconds_per_draw = (time.perf_counter() - start) / len(samples)
        if sampler.truncated:
            got, wanted = sampler.truncated
            self.report.notes.append(f"{label}: budget reached after {got} of {wanted} draws (power is lower)")
        return samples, problem

    def draws_for_power(self, statistics, n, *, planned_checks):
        """The draws at which every statistic of ``statistics`` (``(sd, tolerance, scale)``: a mean whose
        per-draw standard deviation is ``sd`` and whose shift by ``tolerance * scale`` must be
        detectable) reaches its tolerance, at the share ``alpha / planned_checks`` of the run's level
        ([`refattn.stats.min_draws_for_mean_shift`][refattn.stats.min_draws_for_mean_shift]); at least ``n``."""
        need = n
        for sd, tol, scale in statistics:
            if tol is not None and np.isfinite(sd) and sd > 0 and np.isfinite(scale) and scale > 0:
                need = max(need, min_draws_for_mean_shift(sd, tol * scale,
                                                          false_fail_rate=self.report.alpha / planned_checks))
        # a margin for what the first draws leave uncertain (the spread, a t rather than a normal
        # critical value): the final verdict states its own detectable defect from all the draws
        return need if need == n else int(np.ceil(POWER_MARGIN * need))

    def collect_for_power(self, draw, n, label, statistics, *, planned_checks, share=1.0, rounds=3):
        """``collect`` ``n`` draws, then more (``extend``) until every statistic of ``statistics(samples)``
        (``(sd, tolerance, scale[, failing])``, as `draws_for_power`; ``failing``: that statistic is
        already far outside its claim) reaches its tolerance, re-estimating the spread from all the
        draws each round (at most ``rounds`` rounds; none when a statistic is failing: power matters
        only for a PASS). ``(samples, problem)``."""
        samples, problem = self.collect(draw, n, label, share=share)
        for _ in range(rounds):
            if problem is not None:
                return None, problem
            if self.report.failures:
                break  # an earlier check failed: the run is a FAIL whatever the power of this one
            stats = statistics(samples)
            if any(len(st) > 3 and st[3] for st in stats):
                break  # a check already fails far beyond its level: more draws cannot make the run a PASS
            need = self.draws_for_power([st[:3] for st in stats], len(samples), planned_checks=planned_checks)
            before = len(samples)
            samples, problem = self.extend(samples, draw, need, label)
            if problem is None and len(samples) == before:
                break
        return samples, problem

    def failing(self, values, target, *, planned_checks, margin=2.0) -> bool:
        """Whether the mean of a per-draw statistic is more than ``margin`` times the critical value
        (at ``alpha / planned_checks``) standard errors from ``target``: a check that fails whatever
        more draws would show."""
        x = np.asarray(values, dtype=np.float64)
        if len(x) < 2 or not np.all(np.isfinite(x)):
            return not np.all(np.isfinite(x))
        with np.errstate(all="ignore"):
            se = float(x.std(ddof=1)) / np.sqrt(len(x))
        crit = float(_st.norm.isf(self.report.alpha / planned_checks / 2))
        return bool(se > 0 and abs(float(x.mean()) - target) > margin * crit * se)

    @staticmethod
    def sd(values) -> float:
        """The per-draw standard deviation of a statistic (inf when it does not exist in float64)."""
        x = np.asarray(values, dtype=np.float64)
        if len(x) < 2 or not np.all(np.isfinite(x)):
            return float("inf")
        with np.errstate(all="ignore"):
            return float(x.std(ddof=1))

    def extend(self, samples, draw, need, label):
        """``samples`` with ``need - len(samples)`` more draws when that is within ``MAX_DRAW_FACTOR``
        times the draws so far and the projected time fits the budget (``--budget``, else
        ``POWER_BUDGET_S``); otherwise as given, with a note (the checks short of power then say
        INCONCLUSIVE). ``(samples, problem)``."""
        n = len(samples)
        if need <= n:
            return samples, None
        left = POWER_BUDGET_S if self.deadline is None else max(0.0, self.deadline - time.perf_counter())
        projected = (need - n) * self.seconds_per_draw
        if need > MAX_DRAW_FACTOR * n or projected > left:
            self.report.notes.append(
                f"{label}: {need} draws are needed for the stated power; {n} were drawn (more would take "
                f"{'more than ' + str(MAX_DRAW_FACTOR) + 'x the draws' if need > MAX_DRAW_FACTOR * n else f'about {projected:.0f} s'}, "
                f"beyond the budget)")
            return samples, None
        more, problem = self.collect(draw, need - n, f"{label} (for power)")
        if problem is not None:
            return None, problem
        self.report.notes[:] = [x for x in self.report.notes if not x.startswith(f"{label}: ")]
        self.report.notes.append(f"{label}: {need} draws ({n} before, {need - n} more for the stated power)")
        return np.concatenate([samples, more]), None

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

    def statistical(self, check, pvalue, statistic, effect, meaning, *, power=None, what="", tolerance=None):
        """A statistical verdict, decided by Holm at the end of the run; ``power`` (a form of
        [`Verdict.detectable_at`][refattn.check.verdict.Verdict.detectable_at]) states the defect it could detect,
        ``what`` its units, ``tolerance`` the largest it must detect (else INCONCLUSIVE)."""
        return self.add(Verdict(check, None, meaning, statistic=float(statistic), pvalue=float(pvalue),
                                effect=effect, statistical=True, power=power, detectable_what=what,
                                tolerance=tolerance))

    def nonfinite(self, check, samples, meaning) -> Verdict | None:
        """A failing verdict naming the first draw whose statistic is NaN or Inf (an estimate so large that
        its square overflows float64 is a defect, not a usage error), or None when all are finite."""
        x = np.asarray(samples, dtype=np.float64)
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.size else np.zeros(0, bool)
        if not bad.any():
            return None
        i = int(np.argmax(bad))
        return self.add(Verdict(check, False, f"{meaning}: draw {i + 1} of {len(x)} gives a non-finite statistic "
                                f"({int(bad.sum())} draws do; the estimate or its squared error overflows float64)",
                                effect=f"{int(bad.sum())} non-finite draws"))

    def mean_check(self, check, samples, truth, meaning, *, relative_to=None, tolerance=None, what=None):
        """Entrywise ``E[samples] = truth`` (z-tests, Bonferroni). The effect is the worst entry's
        mean minus truth, relative to ``relative_to`` (default ``|truth|``) when given; so is the
        detectable defect (``what``, default "relative bias"; the worst entry's)."""
        if self.nonfinite(check, samples, meaning) is not None:
            return None
        res = z_test_mean(samples, truth, alpha=0.5)  # alpha only sets res.critical; p-values below
        truth = np.broadcast_to(np.asarray(truth, dtype=float), res.mean.shape)
        p, z = _deterministic_entries(2 * _st.t.sf(np.abs(res.z), df=res.n - 1), np.abs(res.z), res.stderr,
                                      res.mean, truth, _eps_of(samples))
        w = int(np.argmax(z)) if z.size else 0
        diff = float(res.mean.ravel()[w] - truth.ravel()[w])
        ref = truth if relative_to is None else np.broadcast_to(relative_to, res.mean.shape)
        denom = float(np.abs(ref).ravel()[w])
        eff = f"{_pct(diff / denom)} at entry {_entry(w, res.z.shape)}" if denom > 0 else f"{diff:+.3g}"
        absref = np.abs(ref).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_se = np.where(absref > 0, res.stderr / np.where(absref > 0, absref, 1.0), np.inf)
        rel_se = np.where(res.stderr == 0, 0.0, rel_se)
        return self.statistical(check, bonferroni_p(p), float(z.ravel()[w]) if z.size else 0.0, eff,
                                f"{meaning} (n = {res.n}, {z.size} entries)",
                                power=("mean", rel_se, max(1, z.size), res.n - 1), what=what or "relative bias",
                                tolerance=tolerance)

    def one_sided_check(self, check, samples, bound, meaning, *, tolerance=None, what="variance ratio"):
        """``E[samples] <= bound`` for a per-draw scalar statistic (one-sided t-test): the statistic may be
        below ``bound`` by any amount, not above. Power: the detectable excess, relative to ``bound``."""
        if self.nonfinite(check, samples, meaning) is not None:
            return None
        x = np.asarray(samples, dtype=np.float64).ravel()
        n = len(x)
        with np.errstate(all="ignore"):
            mean, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(n))
        if not (np.isfinite(mean) and np.isfinite(se)):  # finite draws whose spread overflows float64
            return self.add(Verdict(check, False, f"{meaning}: the statistic's spread overflows float64",
                                    effect="variance beyond float64"))
        t = (mean - bound) / se if se > 0 else (0.0 if mean <= bound else np.inf)
        p = float(_st.t.sf(t, df=n - 1)) if np.isfinite(t) else 0.0
        return self.statistical(check, p, t, f"{mean / bound:.3g} x the bound", f"{meaning} (n = {n}, one-sided)",
                                power=("one-sided mean", se / bound, 1, n - 1), what=what, tolerance=tolerance)

    def two_sample_check(self, check, a, b, meaning, *, relative=True, tolerance=None, what="relative change"):
        """Entrywise ``E[a] = E[b]`` for independent samples (Welch t-tests, Bonferroni); the detectable
        defect is the worst entry's, relative to ``|E[b]|`` (``relative``)."""
        if self.nonfinite(check, a, meaning) is not None:
            return None
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
        scale = np.abs(mb) if relative else np.ones_like(mb)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_se = np.where(se == 0, 0.0, np.where(scale > 0, se / np.where(scale > 0, scale, 1.0), np.inf))
        return self.statistical(check, bonferroni_p(p), float(np.abs(t).ravel()[w]) if t.size else 0.0, eff,
                                f"{meaning} (n = {len(a)} vs {len(b)}, {np.size(t)} entries)",
                                power=("mean", rel_se, max(1, np.size(t)), float(np.min(df)) if np.size(df) else None),
                                what=what if relative else "shift", tolerance=tolerance)


def _eps_of(samples) -> float:
    """Machine epsilon at the precision of the samples' values (a float32 estimator upcast to float64
    is judged at float32's rounding; [`refattn.precision.values_eps`][refattn.precision.values_eps])."""
    return values_eps(samples)


def _deterministic_entries(p, stat, se, mean, ref, eps=_EPS64):
    """Entries that do not vary beyond rounding (a causal row that sees one key, a pair where the
    estimator is exact, the pooled norm of a fixed-norm float32 sampler) are identities: p = 1 if
    ``mean`` equals ``ref`` to rounding, else 0, instead of a statistic blown up by a standard error
    near 0. Rounding is that of the samples' dtype (``eps``)."""
    flat = se <= max(1e-10, 10 * eps) * (1 + np.abs(ref))
    same = np.abs(mean - ref) <= max(1e-8, 1000 * eps) * (1 + np.abs(ref))
    p = np.where(flat, np.where(same, 1.0, 0.0), p)
    return p, np.where(flat & same, 0.0, stat)


def _pct(rel):
    if abs(rel) >= 10 or (abs(rel) < 1e-4 and rel != 0):
        return f"{rel:+.3g} (relative)"
    return f"{rel:+.2%}"


def _entry(flat_index, shape):
    return tuple(int(i) for i in np.unravel_index(flat_index, shape))


def tolerance(arr) -> float:
    """Rounding allowance for identities that hold exactly in exact arithmetic:
    ``1000 eps`` of the result's dtype times its magnitude (at least 1)."""
    a = np.asarray(arr)
    eps = values_eps(a)
    return 1000 * eps * max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
