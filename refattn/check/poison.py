r"""Poisoned slots, posed twice: a kernel must never read the memory its layout marks unused
(padding past ``seqused_k``, the rest of a paged cache's last page, pages its block table does not
name). The checker first fills that memory with NaN: a kernel that reads it returns NaN. Then, where
NaN came back, it fills the memory with finite draws: a kernel right there *loads* the unused slots
and weighs them by zero (``0 x NaN = NaN``; it must predicate its loads, not its weights), and a kernel
wrong there too gives weight to them, a verdict judged on the finite values with its own diagnosis.
"""

from __future__ import annotations

from dataclasses import replace

from refattn.check.verdict import Verdict

__all__ = ["NAN_FROM_UNUSED", "with_finite_retry"]

#: The phrase a judge puts in a verdict whose output is NaN where unused memory held NaN.
NAN_FROM_UNUSED = "NaN from the slots it must not read"


def with_finite_retry(with_nan, with_finite, unused):
    """The outcome of ``with_nan()`` (a `Verdict`, or a call's problem), re-judged by ``with_finite()``
    when it failed with `NAN_FROM_UNUSED` (module docstring); ``unused`` names the slots in messages."""
    outcome = with_nan()
    if not (isinstance(outcome, Verdict) and not outcome.passed and NAN_FROM_UNUSED in outcome.meaning):
        return outcome
    clean = with_finite()
    if isinstance(clean, Verdict) and clean.passed:
        return replace(outcome, meaning=outcome.meaning.replace(
            NAN_FROM_UNUSED, f"{NAN_FROM_UNUSED}: it loads {unused} and weighs them by zero (0 x NaN = NaN): "
                             "predicate the loads, not the weights"))
    if isinstance(clean, Verdict):
        return replace(clean, meaning=f"{clean.meaning} (with finite values in {unused}; with NaN there: NaN)")
    return outcome
