"""The checker's options as one validated object (refattn.check.spec): one table read by the Python
API, the command line, the dispatch to the kind and the rerun command. Deterministic."""

from __future__ import annotations

import dataclasses
import inspect
import shlex

import pytest

from refattn.check import KIND_CHECKS, check
from refattn.check.spec import KINDS, OPTIONS, CheckSpec
from refattn.cli import build_parser

#: For each kind, a value other than the default for every option it takes (valid together).
NON_DEFAULT = {  # (merge first: the exact kind's precision is the one other kinds are refused)
    "merge": dict(precision="float64", empty_rows="any", lse_base="2", empty_lse="+inf", lse_layout="TN"),
    "exact": dict(alignment="top_left", precision="float8_e4m3fn", p_scale=64.0, layout="BNTH", gqa=True, self_attention=True,
                  equal_head_dims=True, sizes="long", head_dims=(32, 96), empty_rows="nan", probe_head_dims=True,
                  determinism=True, batch_invariance=True, num_splits=(1, 4)),
    "backward": dict(alignment="top_left", precision="float32", layout="BTNH", gqa=True, equal_head_dims=True,
                     sizes="small", head_dims=(128,), probe_head_dims=True),
    "varlen": dict(precision="float16", gqa=True, empty_rows="any"),
    "varlen_backward": dict(precision="float32", gqa=True, empty_rows="any"),
    "paged": dict(precision="bfloat16", gqa=True, empty_rows="any", kv_layout="HND"),
    "kernel": dict(method="favorpp", projection="gaussian", m=32, A=0.05, n_draws=500, max_bias=0.02,
                   max_variance_ratio=0.2),
    "attention": dict(method="hyperbolic", projection="regular", m=16, n_draws=300),
    "projection": dict(projection="orthogonal", m=8, n_draws=100),
    "hash": dict(family="e2lsh", width=2.5, rounds=3, n_draws=400),
}
EVERY_KIND = dict(alpha=0.01, seed=7, budget=30.0, timeout=20.0, memory_limit=2**33)


@pytest.mark.parametrize("kind", KINDS)
def test_the_rerun_command_gives_back_the_same_spec(kind):
    """Every option the kind takes, set away from its default, written as the rerun command and read
    back by the command line, is the same validated spec."""
    spec = CheckSpec.build(kind, **NON_DEFAULT[kind], **EVERY_KIND)
    argv = shlex.split(spec.command("pkg.mod:fn"))
    assert argv[:3] == ["refattn", "check", "pkg.mod:fn"]
    again = CheckSpec.from_args(build_parser().parse_args(argv[1:]))
    assert dict(again.values) == dict(spec.values)
    for name in NON_DEFAULT[kind]:  # each one is in the command (a flag left out would have reset it)
        assert next(o for o in OPTIONS if o.name == name).flag in argv, name


def test_the_table_is_check_and_the_command_line():
    """``check``'s keywords, the flags of ``refattn check`` and each kind's function read the table:
    the kind's function takes every option that applies to it."""
    params = inspect.signature(check).parameters
    assert [n for n in params if n not in ("target", "kind", "spec")] == [o.name for o in OPTIONS]
    parser = build_parser()
    flags = {a for action in parser._subparsers._group_actions[0].choices["check"]._actions
             for a in action.option_strings}
    assert {o.flag for o in OPTIONS if o.flag} <= flags
    for kind, fn in KIND_CHECKS.items():
        takes = set(inspect.signature(fn).parameters) - {"run"}
        assert set(CheckSpec.build(kind).kind_options()) <= takes, kind


@pytest.mark.parametrize("option", [o for o in OPTIONS if set(o.kinds) != set(KINDS)], ids=lambda o: o.name)
def test_an_option_the_kind_does_not_take_is_an_error_naming_it(option):
    """A value other than the default for an option of other kinds is refused, never ignored."""
    value = {**{n: v for kind in NON_DEFAULT.values() for n, v in kind.items()}, "bits": 4, "buckets": 4}[option.name]
    other = next(k for k in KINDS if k not in option.kinds)
    with pytest.raises(ValueError, match=f"^{option.name}: .*applies to --kind .*not '{other}'"):
        CheckSpec.build(other, **{option.name: value})
    CheckSpec.build(other, **{option.name: option.default})  # the default is no claim: accepted


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 1.5}, "^alpha: must lie in"), ({"alpha": "0.5"}, "^alpha: expected a number"),
    ({"timeout": "3"}, "^timeout: expected a number"), ({"isolate": "yes"}, "^isolate: expected"),
    ({"seed": -1}, "^seed: expected an integer"), ({"head_dims": "64"}, "^head_dims: expected a sequence"),
    ({"sizes": "huge"}, "^sizes: expected one of"), ({"bogus": 1}, "^bogus: not an option of the checker"),
    ({"gqa": True, "layout": "TH"}, "^gqa: grouped-query heads need a layout"),
    ({"A": 0.1, "method": "positive", "kind": "kernel"}, "^A: FAVOR"),
    ({"precision": "float16", "kind": "backward"}, "^precision: the backward kind judges"),
])
def test_bad_options_name_the_argument(kwargs, match):
    kwargs = dict(kwargs)
    kind = kwargs.pop("kind", "exact")
    with pytest.raises((TypeError, ValueError), match=match):
        CheckSpec.build(kind, **kwargs)
    with pytest.raises((TypeError, ValueError), match=match):  # the same through check(), before anything runs
        check("refattn.check.planted:exact_attention", kind, **kwargs)


def test_the_spec_is_frozen_and_resolves_the_kinds_defaults():
    spec = CheckSpec.build("attention")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "exact"
    with pytest.raises(TypeError):
        spec.values["m"] = 3
    assert (spec.m, spec.projection, spec.n_draws) == (64, "orthogonal", 1000)
    assert (CheckSpec.build("projection").m, CheckSpec.build("projection").projection) == (16, "gaussian")
    assert CheckSpec.build("hash", family="simhash", bits=2).n_draws >= 1000  # chosen for power
    assert spec.replace(m=32).m == 32 and spec.m == 64


def test_check_takes_a_spec_or_options_not_both():
    from refattn.check.planted import exact_attention

    spec = CheckSpec.build("exact", sizes="small", isolate=False)
    rep = check(exact_attention, "exact", spec=spec)
    assert rep.passed and "--sizes small" in rep.command
    assert rep.command == check(exact_attention, "exact", sizes="small", isolate=False).command
    with pytest.raises(ValueError, match="^spec: "):
        check(exact_attention, "exact", spec=spec, seed=3)
    with pytest.raises(ValueError, match="^spec: "):
        check(exact_attention, "kernel", spec=spec)


def test_the_command_line_names_the_flag():
    """A mistake on the command line is reported with the flag typed (``--draws``), not the keyword."""
    from refattn.cli import main

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["check", "refattn.check.planted:exact_attention", "--kind", "kernel", "--draws", "5"]) == 2
    assert "--draws: must be >= 20" in err.getvalue()
