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
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Verdict", "CheckReport", "holm", "bonferroni_p"]


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

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "skip"}[self.passed]


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
        """Decide the statistical verdicts by Holm at ``alpha`` over this run's statistical checks."""
        stat = [v for v in self.verdicts if v.statistical and v.pvalue is not None]
        if stat:
            rejected = holm([v.pvalue for v in stat], self.alpha)
            for v, r in zip(stat, rejected):
                v.passed = not bool(r)
        return self

    @property
    def passed(self) -> bool:
        """True iff no verdict failed (skipped checks do not fail a run)."""
        return all(v.passed is not False for v in self.verdicts)

    @property
    def failures(self) -> list:
        return [v for v in self.verdicts if v.passed is False]

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return str(x)
            return x

        rows = [{k: clean(v) for k, v in asdict(v).items()} | {"verdict": v.label} for v in self.verdicts]
        return {"target": self.target, "kind": self.kind, "alpha": self.alpha, "seed": self.seed,
                "command": self.command, "passed": self.passed, "elapsed_s": round(self.elapsed_s, 3),
                "notes": list(self.notes),
                "output": self.output, "checks": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """A readable table: check, verdict, statistic, p-value, effect size, what it means."""
        head = ("check", "verdict", "statistic", "p-value", "effect", "what it means")
        rows = []
        for v in self.verdicts:
            stat = "" if v.statistic is None else f"{v.statistic:.3g}"
            if v.bound is not None:
                stat += f" (bound {v.bound:.3g})"
            pv = "" if v.pvalue is None else f"{v.pvalue:.2g}"
            rows.append((v.check, v.label, stat, pv, v.effect, v.meaning))
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
        n_fail = len(self.failures)
        out.append("RESULT: PASS" if self.passed else f"RESULT: FAIL ({n_fail} of {len(self.verdicts)} checks failed)")
        return "\n".join(out)
