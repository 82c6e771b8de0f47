"""Run fuzz cases in this process, one after another, and report each as a JSON line.

``python proofs_tests/fuzz/_runner.py`` reads a JSON list of ``[entry, argument, mutation]``
from stdin and prints ``START i`` before case ``i`` and ``DONE {outcome}`` after it, so the
parent (:func:`proofs_tests.fuzz._harness.run_cases`) knows which case crashed the process or
hung. The address space is capped (8 GiB), so a runaway allocation is a ``MemoryError``, not
a machine out of memory.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import resource
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from proofs_tests.fuzz._grid import ENTRY_POINTS, Case, build_call  # noqa: E402

MEMORY_LIMIT = 8 * 2**30


def parameter_names(fn, kwargs=()) -> set[str]:
    """``fn``'s parameters, and the keywords of this call that its ``**options`` takes (an error naming
    such a keyword names the argument the caller passed)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return set(params) | (set(kwargs) if var_kw else set())


def _nonfinite(x, allow_neg_inf, allow_inf=False, path="result", seen=None):
    """The path of the first NaN/+Inf (or disallowed -Inf) float in ``x``, else None."""
    seen = seen if seen is not None else set()
    if id(x) in seen:
        return None
    seen.add(id(x))
    if isinstance(x, np.ndarray) or np.isscalar(x):
        a = np.asarray(x)
        if a.dtype.kind == "f" or a.dtype.kind == "c":
            bad = np.isnan(a) | ((a == np.inf) & (not allow_inf)) | (False if allow_neg_inf else a == -np.inf)
            if np.any(bad):
                return f"{path} has {int(np.sum(bad))} NaN/Inf of {a.size}"
        return None
    if isinstance(x, (list, tuple)):
        for i, item in enumerate(x):
            found = _nonfinite(item, allow_neg_inf, allow_inf, f"{path}[{i}]", seen)
            if found:
                return found
        return None
    if dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            found = _nonfinite(getattr(x, f.name), allow_neg_inf, allow_inf, f"{path}.{f.name}", seen)
            if found:
                return found
    return None


def run_one(case: Case) -> dict:
    entry = ENTRY_POINTS[case.entry]
    try:
        fn, args, kwargs = build_call(case)
    except Exception as exc:  # the grid itself is broken: report, do not hide
        return {"status": "grid-error", "detail": f"{type(exc).__name__}: {exc}"}
    names = parameter_names(fn, kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                result = fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        m = re.match(r"^([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*)(?=[:\[. ])", msg)  # "q:" or "eps, R:"
        if m and names & set(m.group(1).split(", ")):
            return {"status": "clean-error", "detail": f"{type(exc).__name__}: {msg[:200]}"}
        return {"status": "unclean-error", "detail": f"{type(exc).__name__} naming no argument: {msg[:300]}"}
    except AssertionError as exc:
        if entry.asserts:
            return {"status": "clean-error", "detail": f"AssertionError (its verdict): {str(exc)[:200]}"}
        return {"status": "unclean-error", "detail": f"AssertionError: {str(exc)[:300]}"}
    except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
        return {"status": "unclean-error", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
    bad = _nonfinite(result, entry.expect_neg_inf, entry.inf_fails)
    if bad:
        return {"status": "nonfinite", "detail": bad}
    return {"status": "clean-result", "detail": type(result).__name__}


def main():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    todo = [Case(*c) for c in json.load(sys.stdin)]
    for i, case in enumerate(todo):
        print(f"START {i}", flush=True)
        out = run_one(case)
        print("DONE " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
