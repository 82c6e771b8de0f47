r"""The checker's options as one validated object: a table of options and the frozen `CheckSpec`.

Every option of [`refattn.check.check`][refattn.check.check] and ``refattn check`` is one `Option` row in `OPTIONS`:
its keyword, its command-line flag, the kinds it applies to, its default, how it is validated
(a ``TypeError``/``ValueError`` naming it), its help text and how it is written back into the
rerun command. `CheckSpec.build` validates a set of options once (each on its own, then the rules
that tie options together), resolves the defaults that depend on the kind (the projection, the
feature count, the draws) and freezes the result; the Python API, the command line
(`add_arguments`, `CheckSpec.from_args`), the dispatch to the kind and the rerun command
(`CheckSpec.command`) all read that one object. A new option is one row here and, when a kind
uses it, one keyword of that kind's function.

A value other than the default for an option that does not apply to the kind is an error
naming the option (``check(fn, "kernel", precision="float32")``: a precision claim applies to the
exact and backward kinds), never silently ignored.
"""

from __future__ import annotations

import argparse
import inspect
import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from refattn._validation import InputError, InputTypeError, check_bool, check_positive_int
from refattn.check._run import DEFAULT_MAX_BIAS, DEFAULT_MAX_VARIANCE_RATIO
from refattn.check.backward import BACKWARD_PRECISIONS
from refattn.check.exact import DEFAULT_HEAD_DIMS, DEFAULT_SIZES, EMPTY_ROWS, LAYOUTS, SIZES
from refattn.check.hashing import HASH_FAMILIES, hash_draws
from refattn.check.isolation import default_memory_limit
from refattn.check.merge import LSE_LAYOUTS, MERGE_PRECISIONS
from refattn.paged import PAGED_LAYOUTS
from refattn.splitkv import EMPTY_LSE, LSE_BASES
from refattn.precision import PRECISIONS, STORAGE_PRECISIONS, recipe
from refattn.tolerance import CLAIMS

__all__ = ["Option", "OPTIONS", "CheckSpec", "KINDS", "DEFAULT_DRAWS", "DEFAULT_TIMEOUT", "add_arguments"]

KINDS = ("exact", "backward", "merge", "varlen", "varlen_backward", "paged", "kernel", "attention", "projection", "hash")
DEFAULT_DRAWS = {"exact": 0, "backward": 0, "merge": 0, "varlen": 0, "varlen_backward": 0, "paged": 0, "kernel": 2000, "attention": 1000, "projection": 2000,
                 "hash": 1000}  # hash: at least; the default is chosen for power (refattn.check.hashing.hash_draws)
#: Seconds one call of the callable may take (isolated runs), and the most it may be set to (a week).
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 7 * 24 * 3600.0
#: The largest address-space limit (bytes) a worker may be given: 2^62, far above any machine's memory.
MAX_MEMORY_LIMIT = float(2**62)

ALL = KINDS
GRIDS = ("exact", "backward")  # the kinds that run a grid of attention problems
DETERMINISTIC = GRIDS + ("merge", "varlen", "varlen_backward", "paged")  # the kinds judged by the tolerance rule
SAMPLED = ("kernel", "attention", "projection", "hash")  # the statistical kinds
RANDOM_FEATURES = ("kernel", "attention")


# ----------------------------------------------------------------------------- validators
def positive_number(value, name, *, maximum=None):
    """A real number (not a string, not a bool), finite, > 0 and at most ``maximum``."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name}: must be finite and > 0, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: at most {maximum:g}, got {value:g}")
    return value


def head_dims(value, name="head_dims"):
    """A non-empty tuple of integers in [1, 1024] (one integer is a tuple of one): head dims, split counts."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if isinstance(value, (str, bytes)):
        raise InputTypeError(f"{name}: expected a sequence of integers, got {value!r}")
    try:
        dims = tuple(value)
    except TypeError:
        raise InputTypeError(f"{name}: expected a sequence of integers, got {value!r}") from None
    if not dims:
        raise InputError(f"{name}: give at least one value")
    return tuple(check_positive_int(h, name, maximum=1024) for h in dims)


def _choice(choices):
    def parse(value, name):
        if not isinstance(value, str) or value not in choices:
            raise InputError(f"{name}: expected one of {choices}, got {value!r}")
        return value
    return parse


def _optional(parse):
    return lambda value, name: None if value is None else parse(value, name)


def _bool(value, name):
    return check_bool(value, name)


def _int(minimum=1, maximum=None):
    return lambda value, name: check_positive_int(value, name, minimum=minimum, maximum=maximum)


def _number(maximum=None):
    return lambda value, name: positive_number(value, name, maximum=maximum)


def _alpha(value, name):
    value = positive_number(value, name)
    if not value < 1:
        raise InputError(f"{name}: must lie in (0, 1), got {value}")
    return value


def _seed(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or not 0 <= value < 2**63:
        raise InputError(f"{name}: expected an integer in [0, 2^63), got {value!r}")
    return int(value)


def _real(value, name):
    if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputTypeError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _memory_limit(value, name):
    if isinstance(value, str) and value == "auto":
        return default_memory_limit()
    return None if value is None else int(positive_number(value, name, maximum=MAX_MEMORY_LIMIT))


def _gib(text):
    """``--memory-limit`` is in GiB on the command line."""
    value = float(text)
    return value * 2.0**30


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Option:
    """One option of the checker (module docstring)."""

    name: str  # check()'s keyword
    flag: str | None  # the command line's flag (None: the Python API only)
    kinds: tuple  # the kinds it applies to
    default: Any
    parse: Callable  # (value, name) -> the validated value; TypeError/ValueError naming it
    help: str = ""
    #: argparse extras (type, choices, metavar, action); the flag's text -> check()'s value
    cli: dict = field(default_factory=dict)
    #: (spec) -> the flag text in the rerun command, "" when it is left out
    show: Callable = None
    #: passed to the kind's function (else the run's: seeds, draws, isolation)
    to_kind: bool = True
    #: what the error calls the option when the kind does not take it
    what: str = "the option"


def _always(flag, fmt=str):
    return lambda spec, value: f"{flag} {fmt(value)}"


def _if_set(flag, fmt=None):
    return lambda spec, value: "" if value is None or value is False else flag if fmt is None else f"{flag} {fmt(value)}"


def _if_not(default, flag, fmt="{:g}"):
    return lambda spec, value: "" if value == default else f"{flag} {fmt.format(value)}"


OPTIONS = (
    Option("alignment", "--alignment", GRIDS, "bottom_right", _choice(("bottom_right", "top_left")),
           "what causal=True means for the callable (exact, backward)", dict(choices=("bottom_right", "top_left")),
           _always("--alignment")),
    Option("precision", "--precision", DETERMINISTIC, "float64", _choice(CLAIMS),
           "the precision the callable computes in (exact, backward, merge, varlen, varlen_backward, paged; merge's "
           "default float32; "
           "the FP8 formats: exact): judged at that precision",
           dict(choices=CLAIMS), _always("--precision"), what="a precision claim"),
    Option("p_scale", "--p-scale", ("exact",), None, _optional(_real),
           "an FP8 kernel's scale of P before its cast, a power of two (default 256, FlashAttention 3's; 1: unscaled)",
           dict(type=float), _if_set("--p-scale", lambda a: f"{a:g}"), what="an FP8 recipe"),
    Option("layout", "--layout", GRIDS, "TH", _choice(LAYOUTS),
           "how the callable takes its arrays (exact, backward): T tokens, H features, B batch, N heads",
           dict(choices=LAYOUTS), _always("--layout"), what="a layout claim"),
    Option("gqa", "--gqa", GRIDS + ("varlen", "varlen_backward", "paged"), False, _bool,
           "grouped-query heads: k, v have fewer heads than q (exact, backward with BNTH or BTNH; varlen, "
           "varlen_backward, paged)",
           dict(action="store_true"), _if_set("--gqa"), what="a grouped-query claim"),
    Option("self_attention", "--self-attention", ("exact",), False, _bool,
           "the callable takes T = S only (exact): cases needing T != S are skipped", dict(action="store_true"),
           _if_set("--self-attention"), what="a self-attention claim"),
    Option("equal_head_dims", "--equal-head-dims", GRIDS, False, _bool,
           "values have the head dim of q and k (Hv = H), as most fused kernels need (exact, backward)",
           dict(action="store_true"), _if_set("--equal-head-dims"), what="a head-dim claim"),
    Option("sizes", "--sizes", GRIDS, DEFAULT_SIZES, _choice(SIZES),
           "size preset (exact, backward): small (T, S <= 31), tiles (default: lengths crossing 64- and 128-row "
           "tiles, 63 to 257), long (and T = S = 4096)", dict(choices=SIZES), _always("--sizes")),
    Option("head_dims", "--head-dims", GRIDS, DEFAULT_HEAD_DIMS, head_dims,
           "head dims of the tile and long cases (default 64; e.g. 64,128)", dict(metavar="H[,H...]"),
           _always("--head-dims", lambda dims: ",".join(str(h) for h in dims))),
    Option("empty_rows", "--empty-rows", DETERMINISTIC, "zeros", _choice(EMPTY_ROWS),
           "what rows that see no key must be (exact, backward, merge, varlen, varlen_backward, paged): zeros (default, flash-attn and torch SDPA; "
           "merge: with the empty lse), nan, or any (not judged; backward: no gradient flows from them)",
           dict(choices=EMPTY_ROWS), _always("--empty-rows")),
    Option("lse_base", "--lse-base", ("merge",), "e", _choice(LSE_BASES),
           "the states' log-sum-exp base (merge): e (flash-attn, vLLM) or 2 (flashinfer)", dict(choices=LSE_BASES),
           _always("--lse-base"), what="an lse convention"),
    Option("empty_lse", "--empty-lse", ("merge",), "-inf", _choice(EMPTY_LSE),
           "the lse of a state that saw no key (merge): -inf, or +inf (flash-attn 2's combine; vLLM reads both)",
           dict(choices=EMPTY_LSE), _always("--empty-lse"), what="an lse convention"),
    Option("lse_layout", "--lse-layout", ("merge",), "NT", _choice(LSE_LAYOUTS),
           "the lses' layout (merge): NT = (states, heads, tokens) (vLLM, flash-attn) or TN (flashinfer)",
           dict(choices=LSE_LAYOUTS), _always("--lse-layout"), what="an lse convention"),
    Option("kv_layout", "--kv-layout", ("paged",), "NHD", _choice(PAGED_LAYOUTS),
           "the pages' layout (paged): NHD = (pages, page_size, heads, head_dim) (flash-attn, vLLM, flashinfer's "
           "default) or HND = (pages, heads, page_size, head_dim)", dict(choices=PAGED_LAYOUTS),
           _always("--kv-layout"), what="a layout claim"),
    Option("probe_head_dims", "--probe-head-dims", GRIDS, False, _bool,
           "a tile case whose head dim the callable rejects by raising is unsupported (skip), not failed",
           dict(action="store_true"), _if_set("--probe-head-dims")),
    Option("num_splits", "--num-splits", ("exact",), None, _optional(head_dims),
           "split counts the callable takes as num_splits= (exact): every case runs at each, each judged "
           "(e.g. 1,2,3,8)", dict(metavar="N[,N...]"),
           _if_set("--num-splits", lambda n: ",".join(str(x) for x in n)), what="a split-KV claim"),
    Option("determinism", "--determinism", ("exact",), False, _bool,
           "also check bits (exact): three calls on the same inputs give the same output", dict(action="store_true"),
           _if_set("--determinism"), what="a bit-level check"),
    Option("batch_invariance", "--batch-invariance", ("exact",), False, _bool,
           "also check bits (exact): a batch item's output does not depend on the rest of the batch, its position "
           "or the batch size", dict(action="store_true"), _if_set("--batch-invariance"), what="a bit-level check"),
    Option("method", "--method", RANDOM_FEATURES, "positive",
           _choice(("positive", "hyperbolic", "trigonometric", "favorpp")),
           "random-feature estimator (kernel, attention; favorpp = FAVOR++, kernel only)",
           dict(choices=("positive", "hyperbolic", "trigonometric", "favorpp")), _always("--method")),
    Option("projection", "--projection", RANDOM_FEATURES + ("projection",), None,
           _optional(_choice(("gaussian", "orthogonal", "regular"))),
           "its projection (default orthogonal; for --kind projection: the claim, default gaussian)",
           dict(choices=("gaussian", "orthogonal", "regular")), _always("--projection")),
    Option("m", "--features", RANDOM_FEATURES + ("projection",), None, _optional(_int()),
           "feature count m the callable uses (passed as m= if taken)", dict(type=int, metavar="M"),
           _if_set("--features", str)),
    Option("A", "--A", ("kernel",), None, _optional(_real),
           "FAVOR++'s parameter A < 1/8 (default: the optimal A* of the inputs)", dict(type=float),
           _if_set("--A", lambda a: f"{a:g}"), what="FAVOR++'s parameter"),
    Option("family", "--family", ("hash",), "simhash", _choice(HASH_FAMILIES), "the hash family",
           dict(choices=HASH_FAMILIES), _always("--family")),
    Option("bits", "--bits", ("hash",), 1, _int(), "SimHash bits per id", dict(type=int),
           lambda spec, v: f"--bits {v}" if spec.family == "simhash" else ""),
    Option("buckets", "--buckets", ("hash",), 8, _int(minimum=2), "angular hash buckets", dict(type=int),
           lambda spec, v: f"--buckets {v}" if spec.family == "angular" else ""),
    Option("width", "--width", ("hash",), 1.0, _number(), "E2LSH bucket width", dict(type=float),
           lambda spec, v: f"--width {v:g}" if spec.family == "e2lsh" else ""),
    Option("rounds", "--rounds", ("hash",), None, _optional(_int()),
           "a multi-round hash: fn(x, seed) -> (ROUNDS, T) ids", dict(type=int), _if_set("--rounds", str),
           what="a multi-round claim"),
    Option("n_draws", "--draws", SAMPLED, None, _optional(_int(minimum=20)),
           "seeds per statistical check (>= 20; default per kind)", dict(type=int, metavar="N"), _always("--draws"),
           to_kind=False),
    Option("max_bias", "--max-bias", SAMPLED, DEFAULT_MAX_BIAS, _number(),
           "the relative bias a statistical PASS must be able to detect (p = 0.99; default 0.01); short of it the "
           "check draws more, then says INCONCLUSIVE (exit 4)", dict(type=float, metavar="FRACTION"),
           _if_not(DEFAULT_MAX_BIAS, "--max-bias"), to_kind=False),
    Option("max_variance_ratio", "--max-variance-ratio", SAMPLED, DEFAULT_MAX_VARIANCE_RATIO, _number(),
           "the variance ratio the variance and MSE checks must be able to detect (default 0.10)",
           dict(type=float, metavar="FRACTION"), _if_not(DEFAULT_MAX_VARIANCE_RATIO, "--max-variance-ratio"),
           to_kind=False),
    Option("alpha", "--alpha", ALL, 1e-3, _alpha, "family-wise false-alarm probability", dict(type=float),
           _always("--alpha", lambda a: f"{a:g}"), to_kind=False),
    Option("seed", "--seed", ALL, 0, _seed, "master seed (inputs and every seed passed to the callable)",
           dict(type=int), _always("--seed"), to_kind=False),
    Option("budget", "--budget", ALL, None, _optional(_number()), "time the sampling may take",
           dict(type=float, metavar="SECONDS"), _if_set("--budget", lambda b: f"{b:g}"), to_kind=False),
    Option("progress", None, ALL, False, _bool, to_kind=False),
    Option("isolate", None, ALL, True, _bool, to_kind=False),
    Option("timeout", "--timeout", ALL, DEFAULT_TIMEOUT, _number(maximum=MAX_TIMEOUT),
           f"time one call may take before it fails (default {DEFAULT_TIMEOUT:g})", dict(type=float, metavar="SECONDS"),
           lambda spec, v: f"--timeout {v:g}" if spec.isolate else "", to_kind=False),
    Option("memory_limit", "--memory-limit", ALL, "auto", _memory_limit,
           "address space the callable's worker process may use (default: half the machine's memory)",
           dict(type=_gib, metavar="GiB"),
           lambda spec, v: (f"--memory-limit {v / 2**30:g}" if spec.isolate and v is not None
                            and v != default_memory_limit() else ""), to_kind=False),
)
BY_NAME = MappingProxyType({o.name: o for o in OPTIONS})


def _kinds_text(kinds):
    return " or ".join(kinds) if len(kinds) <= 2 else ", ".join(kinds)


def _rules(kind, v):
    """The rules that tie options together (each option is already valid on its own)."""
    if v["precision"] in STORAGE_PRECISIONS and kind != "exact":
        raise InputError(f"precision: FP8 claims are judged by the exact kind, not {kind!r}")
    if v["p_scale"] is not None:
        if v["precision"] not in STORAGE_PRECISIONS:
            raise InputError(f"p_scale: an FP8 kernel's recipe (precision float8_e4m3fn or float8_e5m2), not "
                             f"{v['precision']!r}")
        recipe(v["precision"], p_scale=v["p_scale"])  # a power of two within the format
    if v["A"] is not None and v["method"] != "favorpp":
        raise InputError(f"A: FAVOR++'s parameter applies to kind 'kernel' with method 'favorpp', not "
                         f"{kind!r}/{v['method']!r}")
    if v["gqa"] and kind in GRIDS and v["layout"] not in ("BNTH", "BTNH"):
        raise InputError(f"gqa: grouped-query heads need a layout with a heads axis (BNTH or BTNH), got {v['layout']!r}")
    if kind in ("backward", "merge", "varlen", "varlen_backward", "paged") and v["empty_rows"] == "nan":
        raise InputError(f"empty_rows: the {kind} kind judges 'zeros' or 'any', got 'nan'")
    if kind == "merge" and v["precision"] not in MERGE_PRECISIONS:
        raise InputError(f"precision: the merge kind judges {MERGE_PRECISIONS} claims, got {v['precision']!r}")
    if kind in ("backward", "varlen_backward") and v["precision"] not in BACKWARD_PRECISIONS:
        raise InputError(f"precision: the backward kind judges {BACKWARD_PRECISIONS} claims, got {v['precision']!r}")


def _resolve(kind, v, given):
    """The defaults that depend on the kind or on other options."""
    if kind == "merge" and "precision" not in given:
        v["precision"] = "float32"  # split states are kept in float32
    if v["projection"] is None and kind in BY_NAME["projection"].kinds:
        v["projection"] = "gaussian" if kind == "projection" else "orthogonal"
    if v["m"] is None:
        v["m"] = {"attention": 64, "projection": 16}.get(kind)
    if v["n_draws"] is None:
        v["n_draws"] = DEFAULT_DRAWS[kind]
        if kind == "hash":  # enough draws for power (refattn.check.hashing.hash_draws)
            v["n_draws"] = hash_draws(v["family"], bits=v["bits"], buckets=v["buckets"], width=v["width"],
                                      rounds=v["rounds"], alpha=v["alpha"])


@dataclass(frozen=True)
class CheckSpec:
    """A validated, frozen set of the checker's options for one kind (module docstring); read an
    option as an attribute (``spec.precision``)."""

    kind: str
    values: MappingProxyType
    given: frozenset = frozenset()

    @classmethod
    def build(cls, kind, **options) -> "CheckSpec":
        """Validate ``options`` for ``kind`` once: each option, then the rules between them; the
        defaults filled in (the kind-dependent ones resolved)."""
        if not isinstance(kind, str) or kind not in KINDS:
            raise InputError(f"kind: expected one of {KINDS}, got {kind!r}")
        unknown = sorted(set(options) - set(BY_NAME))
        if unknown:
            raise InputTypeError(f"{unknown[0]}: not an option of the checker (options: {', '.join(BY_NAME)})")
        values = {}
        for opt in OPTIONS:
            value = options.get(opt.name, opt.default)
            values[opt.name] = opt.parse(value, opt.name)
            if opt.name in options and kind not in opt.kinds and values[opt.name] != opt.parse(opt.default, opt.name):
                raise InputError(f"{opt.name}: {opt.what} applies to --kind {_kinds_text(opt.kinds)}, not {kind!r}")
        _rules(kind, values)
        _resolve(kind, values, options)
        return cls(kind, MappingProxyType(values), frozenset(options))

    @classmethod
    def from_args(cls, args) -> "CheckSpec":
        """The spec of a parsed ``refattn check`` command line (flags added by `add_arguments`)."""
        given = {o.name: getattr(args, o.name) for o in OPTIONS if o.flag and hasattr(args, o.name)}
        return cls.build(args.kind, **given)

    def __getattr__(self, name):
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def kind_options(self) -> dict:
        """The keywords of the kind's function (``check_exact(run, **spec.kind_options())``)."""
        return {o.name: self.values[o.name] for o in OPTIONS if o.to_kind and self.kind in o.kinds}

    def command(self, target) -> str:
        """The ``refattn check`` command line that reruns this check: every option that shapes it."""
        flags = [f"--kind {self.kind}"]
        flags += [o.show(self, self.values[o.name]) for o in OPTIONS if o.flag and self.kind in o.kinds]
        return " ".join(["refattn check", str(target)] + [f for f in flags if f])

    def replace(self, **options) -> "CheckSpec":
        """A new spec with ``options`` changed (validated again)."""
        given = {n: self.values[n] for n in self.given}
        return CheckSpec.build(self.kind, **{**given, **options})


def add_arguments(parser) -> None:
    """The command line's flags of every option in `OPTIONS` (left unset when not given, so the spec
    applies the defaults and knows what the user set)."""
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        extra = dict(opt.cli)
        if opt.name in ("head_dims", "num_splits"):
            extra["type"] = _int_list
        default = opt.default if not isinstance(opt.default, tuple) else ",".join(map(str, opt.default))
        hint = "" if opt.default in (None, False) or "default" in opt.help else f" (default {default})"
        parser.add_argument(opt.flag, dest=opt.name, default=argparse.SUPPRESS, help=opt.help + hint, **extra)


def _int_list(text):
    """``"64,128"`` -> (64, 128), for --head-dims."""
    try:
        dims = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not dims or min(dims) < 1 or max(dims) > 1024:
        raise argparse.ArgumentTypeError(f"expected integers in [1, 1024], got {text!r}")
    return dims


def signature(*leading) -> inspect.Signature:
    """``check``'s signature: the ``leading`` parameters, then every option as a keyword with its default."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in leading]
    params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in OPTIONS]
    return inspect.Signature(params)
