r"""Load the callable under test and call it safely.

``TARGET`` is ``package.module:function`` or ``path/to/file.py:function`` (the function may
be a dotted attribute path, ``mod:Class.method``). A callable object is accepted as is.

[`call_safely`][refattn.check.loader.call_safely] turns every way a user's function can go wrong (it raises, returns
something `numpy.asarray` cannot convert, the wrong shape or dtype, NaN or Inf) into a
[`CallProblem`][refattn.check.loader.CallProblem] naming the problem: the checker never crashes on a user's bug.
[`Sampler`][refattn.check.loader.Sampler] calls a random estimator for many seeds, under a time budget, with an
optional progress bar.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refattn.check.wire import NUMERIC_KINDS
from refattn.precision import widen

__all__ = ["TargetError", "LoadFailure", "load_target", "CallProblem", "call_safely", "judge_result",
           "as_result_array", "safe_str", "accepts", "Sampler", "describe_target"]


class TargetError(ValueError):
    """A malformed TARGET (a usage error: exit code 2)."""


class LoadFailure(Exception):
    """The TARGET was found but could not be loaded as a callable (a failing verdict)."""


def describe_target(target) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__qualname__", None) or type(target).__name__


def load_target(target):
    """The callable named by ``target`` (a string ``module:function`` / ``file.py:function``, or a callable).

    Raises [`TargetError`][refattn.check.loader.TargetError] for a malformed string or a missing file (usage errors) and
    [`LoadFailure`][refattn.check.loader.LoadFailure] when the module raises on import, lacks the attribute, or the
    attribute is not callable.
    """
    if callable(target) and not isinstance(target, str):
        return target
    if not isinstance(target, str):
        raise TargetError(f"TARGET: expected 'module:function' or 'file.py:function', got {type(target).__name__}")
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise TargetError(f"TARGET: expected 'package.module:function' or 'path/to/file.py:function', got {target!r}")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise TargetError(f"TARGET: no such file {mod_name!r}")
        name = f"_refattn_check_target_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - a user's module may raise anything, even SystemExit
            sys.modules.pop(name, None)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise LoadFailure(f"importing {mod_name} raised {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and mod_name.startswith(exc.name):
                raise TargetError(f"TARGET: no module named {exc.name!r}") from None
            raise LoadFailure(f"importing {mod_name} raised ModuleNotFoundError: {exc}") from None
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise LoadFailure(f"importing {mod_name} raised {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadFailure(f"{mod_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise LoadFailure(f"{target} is not callable (it is a {type(obj).__name__})")
    return obj


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (explicitly; ``**kwargs`` does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


@dataclass(frozen=True)
class CallProblem:
    """Why a call's result cannot be judged: raised, wrong shape/dtype, non-finite."""

    what: str  # "raised", "not an array", "shape", "dtype", "non-finite", "timeout", "crashed", "mutated"
    message: str

    def __str__(self) -> str:
        return self.message


def as_result_array(out, parts=None):
    """``(array, None)``: the result through `numpy.asarray` (torch, cupy and jax arrays
    convert; a copy, so later changes to the callable's buffers cannot touch it), or
    ``(None, message)`` when it is not an array of numbers. ``parts``: the result is a tuple of
    that many arrays (a backward's ``(dq, dk, dv)``), returned as a tuple of arrays."""
    if parts is not None:
        if not isinstance(out, (tuple, list)) or len(out) != parts:
            return None, f"returned {type(out).__name__}, expected a tuple of {parts} arrays"
        arrays = []
        for i, part in enumerate(out):
            arr, message = as_result_array(part)
            if arr is None:
                return None, f"item {i}: {message}"
            arrays.append(arr)
        return tuple(arrays), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out)
    except Exception as exc:  # noqa: BLE001
        return None, f"returned {type(out).__name__}, which numpy.asarray cannot convert ({safe_str(exc)})"
    if arr.dtype == object:
        return None, f"returned {type(out).__name__}, which numpy.asarray converts only to an array of dtype object"
    arr = widen(arr)  # bfloat16 / FP8 (ml_dtypes) as float32, exactly
    if arr.dtype.kind not in NUMERIC_KINDS or arr.dtype.fields is not None or arr.dtype.subdtype is not None:
        return None, f"returned an array of dtype {arr.dtype}, not plain numbers"
    return np.array(arr, copy=True), None


def safe_str(exc) -> str:
    """``str(exc)``, or a note when the exception's ``__str__`` itself raises."""
    try:
        return str(exc)
    except BaseException as inner:  # noqa: BLE001 - a user's __str__ may raise anything
        return f"<a message that could not be printed: its __str__ raised {type(inner).__name__}>"


def judge_result(arr, *, shape=None, integer=False, finite=True, name="fn"):
    """``(array, None)`` or ``(None, CallProblem)`` for a result already converted to an array:
    the expected ``shape``, integer ids (``integer``) or real floats, finite unless ``finite=False``.
    A tuple result is judged part by part, ``shape`` then a list of shapes."""
    if isinstance(arr, tuple):
        judged = []
        for i, (part, want) in enumerate(zip(arr, shape)):
            got, problem = judge_result(part, shape=want, integer=integer, finite=finite, name=f"{name}'s item {i}")
            if problem is not None:
                return None, problem
            judged.append(got)
        return tuple(judged), None
    if shape is not None and arr.shape != tuple(shape):
        return None, CallProblem("shape", f"{name} returned shape {arr.shape}, expected {tuple(shape)}")
    if integer:
        if not (np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating)
                                                           and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
            return None, CallProblem("dtype", f"{name} returned dtype {arr.dtype}, expected integer bucket ids")
        return arr.astype(np.int64), None
    if not np.issubdtype(arr.dtype, np.floating):
        return None, CallProblem("dtype", f"{name} returned dtype {arr.dtype}, expected a real floating array")
    if finite and arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        return None, CallProblem("non-finite", f"{name} returned {bad} NaN/Inf entries of {arr.size}")
    return arr, None


def call_safely(fn, args, kwargs=None, *, shape=None, integer=False, finite=True, name="fn", parts=None):
    """Call ``fn(*args, **kwargs)`` in this process; return ``(array, None)`` or ``(None, CallProblem)``.

    For callables the checker may run in its own process (``isolate=False``); a check run uses a
    worker process ([`refattn.check.isolation`][refattn.check.isolation]). Warnings the function emits are swallowed
    (the verdict reports the result); see [`judge_result`][refattn.check.loader.judge_result] for the checks on the result.
    """
    kwargs = kwargs or {}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the user's bug must become a verdict
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, CallProblem("raised", f"{name} raised {type(exc).__name__}: {safe_str(exc)}")
    arr, message = as_result_array(out, parts)
    if arr is None:
        return None, CallProblem("not an array", f"{name} {message}")
    return judge_result(arr, shape=shape, integer=integer, finite=finite, name=name)


class Sampler:
    """Calls ``draw(seed)`` for many seeds under a time budget; stops at the first problem.

    ``seeds`` come from the run's master generator (`seeds`), so a run is reproducible
    from its ``--seed``. ``budget_s`` is the time this sampler may use (None: no limit); when
    it runs out, the draws collected so far are used and `truncated` says so.
    """

    def __init__(self, *, budget_s=None, progress=False, min_draws=20):
        self.budget_s = budget_s
        self.progress = progress
        self.min_draws = min_draws
        self.truncated = None  # (got, wanted) when the budget cut a run short

    def collect(self, draw, seeds, label=""):
        """``(stack of results (n, ...), problem or None)`` from ``draw(seed)`` for each seed."""
        start = time.perf_counter()
        outs = []
        it = seeds
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(seeds), desc=label, leave=False, file=sys.stderr)
        try:
            for s in it:
                out, problem = draw(int(s))
                if problem is not None:  # named by the draw, so the failing call can be replayed
                    return None, CallProblem(problem.what, f"draw {len(outs) + 1} of {len(seeds)} (seed {int(s)}): "
                                                           f"{problem.message}")
                outs.append(out)
                if bar is not None:
                    bar.update(1)
                if (self.budget_s is not None and len(outs) >= self.min_draws
                        and time.perf_counter() - start > self.budget_s):
                    self.truncated = (len(outs), len(seeds))
                    break
        finally:
            if bar is not None:
                bar.close()
        return np.stack(outs), None
