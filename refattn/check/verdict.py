r"""Verdicts and reports of ``refattn check``: one row per check, a table, JSON, exit codes.

A [`Verdict`][refattn.check.verdict.Verdict] is one check: its name, whether it passed, the statistic and p-value
(statistical checks) or the measured error and its bound (exact checks), an effect size and
one line of what it means. A [`CheckReport`][refattn.check.verdict.CheckReport] gathers the verdicts of one run.

False alarms are controlled over the whole run. Each statistical check tests a family of
entries and reports a Bonferroni-adjusted p-value ``p = min(1, E min_e p_e)`` (``E``
entries); the report then applies Holm's step-down procedure (Holm 1979) to the checks'
p-values at level ``alpha``: sort them ``p_(1) <= ... <= p_(K)`` and reject ``p_(i)`` while
``p_(i) <= alpha / (K - i + 1)``. Bonferroni within a check and Holm across checks keep the
family-wise false-alarm probability of a run at most ``alpha`` (exactly for exact tests,
asymptotically for z-tests), whatever the dependence between checks.

**Power.** Every statistical verdict also states the smallest defect it would have detected with
probability 0.99 (``detectable``, in the units ``detectable_what`` names: a relative bias, a
variance ratio, a rate change, a distribution distance), at its share ``alpha / K`` of the run's
level (``K`` statistical checks: Holm's first threshold, so a defect that size is rejected
whatever the other checks do), from the sample's own standard error
([`refattn.stats.min_detectable_mean_shift`][refattn.stats.min_detectable_mean_shift] and its siblings). A check given a
``tolerance`` (the kinds set one on their bias and variance checks, ``--max-bias``,
``--max-variance-ratio``) that passes but could not have detected a defect of that size is
**INCONCLUSIVE**, never PASS: exit code 4.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from refattn.stats import min_detectable_ks_distance, min_detectable_mean_shift, min_detectable_rate_shift

__all__ = ["Verdict", "CheckReport", "holm", "bonferroni_p", "EXIT_PASS", "EXIT_FAIL", "EXIT_INCONCLUSIVE"]

#: Exit codes of ``refattn check`` (2 is a usage error, 3 a bug of refattn's own).
EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE = 0, 1, 4


@dataclass
class Verdict:
    """One check. ``passed`` is True/False, or None for a check that was skipped (with a reason).

    ``statistical`` verdicts take part in the Holm procedure: their ``passed`` is set by
    [`CheckReport.finalize`][refattn.check.verdict.CheckReport.finalize] from ``pvalue``. Deterministic (exact) verdicts set
    ``passed`` themselves, and ``statistic`` is the measured error, ``bound`` its allowance.
    """

    check: str
    passed: bool | None
    meaning: str
    statistic: float | None = None
    pvalue: float | None = None
    effect: str = ""
    statistical: bool = False
    bound: float | None = None
    #: The smallest defect detected with probability 0.99 (statistical verdicts; set by finalize).
    detectable: float | None = None
    #: What ``detectable`` measures ("relative bias", "variance ratio", ...).
    detectable_what: str = ""
    #: The largest defect this check must be able to detect; a PASS that cannot is INCONCLUSIVE.
    tolerance: float | None = None
    inconclusive: bool = False
    #: How ``detectable`` follows from the sample: ``(form, scale, entries, extra)`` (see `power`).
    power: tuple | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        if self.inconclusive:
            return "INCONCLUSIVE"
        return {True: "PASS", False: "FAIL", None: "skip"}[self.passed]

    def detectable_at(self, alpha: float) -> float | None:
        """The smallest defect detected with probability 0.99 at level ``alpha`` (None: no power form).

        Forms: ``("mean", se, entries, df)``: a shift of ``se`` units of the statistic (``se`` already in
        the units of ``detectable_what``); ``("rate", (p, n, per), entries, None)``: a rate change,
        divided by ``per``; ``("ks", n, entries, None)``: a sup-distance between distributions."""
        if self.power is None:
            return None
        form, scale, entries, extra = self.power
        if form == "mean":
            return float(np.max(min_detectable_mean_shift(scale, false_fail_rate=alpha, entries=entries, df=extra)))
        if form == "one-sided mean":
            return float(np.max(min_detectable_mean_shift(scale, false_fail_rate=alpha, entries=entries, df=extra,
                                                          two_sided=False)))
        if form == "rate":
            p, n, per = scale
            return float(np.max(min_detectable_rate_shift(p, n, false_fail_rate=alpha, entries=entries) / per))
        if form == "ks":
            return float(min_detectable_ks_distance(scale, false_fail_rate=alpha, entries=entries))
        raise ValueError(f"power: unknown form {form!r}")


def bonferroni_p(pvalues) -> float:
    """``min(1, E min p)`` over ``E`` entries: the family's Bonferroni-adjusted p-value."""
    p = np.asarray(pvalues, dtype=float).ravel()
    if p.size == 0:
        return 1.0
    p = np.where(np.isnan(p), 1.0, p)
    return float(min(1.0, p.size * p.min()))


def holm(pvalues, alpha: float) -> np.ndarray:
    """Holm's step-down procedure: a boolean array, True where the hypothesis is rejected.

    Family-wise error at most ``alpha`` under any dependence (Holm 1979, Theorem 1).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03], 0.05).tolist()
    [True, False, False]
    >>> holm([0.001, 0.02, 0.04], 0.05).tolist()
    [True, True, True]
    """
    p = np.asarray(pvalues, dtype=float)
    reject = np.zeros(p.shape, dtype=bool)
    order = np.argsort(p, kind="stable")
    K = p.size
    for rank, idx in enumerate(order):
        if p[idx] <= alpha / (K - rank):
            reject[idx] = True
        else:
            break
    return reject


@dataclass
class CheckReport:
    """All verdicts of one ``refattn check`` run."""

    target: str
    kind: str
    alpha: float
    seed: int
    verdicts: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    elapsed_s: float = 0.0
    #: What the callable printed (stdout and stderr, truncated), captured by its worker process.
    output: str = ""
    #: The ``refattn check`` command line that reruns this check (every option it used).
    command: str = ""

    def add(self, verdict: Verdict) -> Verdict:
        self.verdicts.append(verdict)
        return verdict

    def finalize(self) -> "CheckReport":
        """Decide the statistical verdicts by Holm at ``alpha`` over this run's statistical checks, and
        state each one's detectable defect at its share ``alpha / K``; a PASS whose detectable defect
        exceeds its tolerance becomes INCONCLUSIVE."""
        stat = [v for v in self.verdicts if v.statistical and v.pvalue is not None]
        if stat:
            rejected = holm([v.pvalue for v in stat], self.alpha)
            for v, r in zip(stat, rejected):
                v.passed = not bool(r)
                v.detectable = v.detectable_at(self.alpha / len(stat))
                v.inconclusive = bool(v.passed and v.tolerance is not None and v.detectable is not None
                                      and not v.detectable <= v.tolerance)
                if v.inconclusive:
                    v.passed = None
        return self

    @property
    def passed(self) -> bool:
        """True iff no verdict failed and none is inconclusive (skipped checks do not fail a run)."""
        return all(v.passed is not False and not v.inconclusive for v in self.verdicts)

    @property
    def failures(self) -> list:
        return [v for v in self.verdicts if v.passed is False]

    @property
    def inconclusive(self) -> list:
        return [v for v in self.verdicts if v.inconclusive]

    @property
    def result(self) -> str:
        """``"PASS"``, ``"FAIL"`` (some check failed) or ``"INCONCLUSIVE"`` (none failed, some could not
        have detected a defect of their tolerance)."""
        return "FAIL" if self.failures else "INCONCLUSIVE" if self.inconclusive else "PASS"

    @property
    def exit_code(self) -> int:
        return {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INCONCLUSIVE": EXIT_INCONCLUSIVE}[self.result]

    def to_dict(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return str(x)
            return x

        rows = [{k: clean(x) for k, x in asdict(v).items() if k != "power"} | {"verdict": v.label}
                for v in self.verdicts]
        return {"target": self.target, "kind": self.kind, "alpha": self.alpha, "seed": self.seed,
                "command": self.command, "passed": self.passed, "result": self.result,
                "elapsed_s": round(self.elapsed_s, 3),
                "notes": list(self.notes),
                "output": self.output, "checks": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """A readable table: check, verdict, statistic, p-value, effect size, what it means."""
        head = ("check", "verdict", "statistic", "p-value", "effect", "detectable (p = 0.99)", "what it means")
        rows = []
        for v in self.verdicts:
            stat = "" if v.statistic is None else f"{v.statistic:.3g}"
            if v.bound is not None:
                stat += f" (bound {v.bound:.3g})"
            pv = "" if v.pvalue is None else f"{v.pvalue:.2g}"
            det = "" if v.detectable is None else f"{_fmt_defect(v.detectable, v.detectable_what)}" + (
                "" if v.tolerance is None else f" (tol {_fmt_defect(v.tolerance, v.detectable_what)})")
            rows.append((v.check, v.label, stat, pv, v.effect, det, v.meaning))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        widths[-1] = len(head[-1])  # the last column is free text

        def line(cells):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        out = [self.command or f"refattn check {self.target} --kind {self.kind}",
               f"(alpha = {self.alpha:g} family-wise, Holm over statistical checks; seed {self.seed}; "
               f"{self.elapsed_s:.1f} s)",
               line(head), line(tuple("-" * w for w in widths))]
        out += [line(r) for r in rows]
        out += [f"note: {n}" for n in self.notes]
        if self.output:
            shown = self.output if len(self.output) <= 800 else self.output[:800] + " [...]"
            out.append("the callable printed:\n  " + shown.rstrip().replace("\n", "\n  "))
        n_fail, n_inc = len(self.failures), len(self.inconclusive)
        n_run = sum(v.passed is not None or v.inconclusive for v in self.verdicts)  # the checks run, not skipped
        skipped = f", {len(self.verdicts) - n_run} skipped" if n_run < len(self.verdicts) else ""
        if self.result == "FAIL":
            out.append(f"RESULT: FAIL ({n_fail} of {n_run} checks failed{skipped})")
        elif self.result == "INCONCLUSIVE":
            out.append(f"RESULT: INCONCLUSIVE ({n_inc} of {n_run} checks could not have detected a defect "
                       f"of their tolerance{skipped}; raise --budget or --draws, or loosen --max-bias / "
                       "--max-variance-ratio)")
        else:
            out.append("RESULT: PASS")
        return "\n".join(out)


def _fmt_defect(value, what):
    """A detectable defect for the table: relative ones as percentages."""
    if not math.isfinite(value):
        return f"none ({what})"
    if what in ("relative bias", "variance ratio", "relative change") and value < 10:
        return f"{value:.2%} {what}"
    return f"{value:.3g} {what}"
