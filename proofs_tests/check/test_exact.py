"""The exact kind (refattn.check.exact): a correct kernel passes every case, planted faults are named,
an inverted mask is diagnosed, a float16 kernel is judged at its precision, bad callables become
failing verdicts. Deterministic.
"""


import numpy as np
import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, CORRECT, exact_attention
from refattn.check.exact import per_head, per_item


def test_exact_correct_passes_every_case(user_file):
    rep = check(f"{user_file}:good", "exact")
    print(rep.format_table())
    from refattn.check.exact import grid

    options = {c.name for c in grid() if c.option}  # fn takes none of flash-attn's options
    assert rep.passed and all(v.passed for v in rep.verdicts if v.check not in options), rep.format_table()
    assert len(rep.verdicts) == len(grid()) and {v.check for v in rep.verdicts if v.passed is None} == options


@pytest.mark.parametrize("name, fault", [
    ("wrong scale", "scale 1 instead of 1/sqrt(H)"),
    ("other causal alignment", "the other causal alignment"),
    ("off-by-one causal (exact)", "causal diagonal excluded"),
    ("missing max subtraction", "missing max subtraction"),
    ("softmax over the wrong axis", "softmax over the query axis"),
])
def test_exact_faults_are_named(name, fault):
    """Deterministic: each planted fault fails its case and the diagnosis names it."""
    planted = CATALOGUE[name]
    rep = check(planted.fn, "exact")
    failed = {v.check: v for v in rep.failures}
    assert planted.fails in failed, rep.format_table()
    assert fault in failed[planted.fails].meaning, failed[planted.fails].meaning


def test_mask_inverted_is_named():
    rep = check(lambda q, k, v, mask=None: exact_attention(q, k, v, mask=~mask), "exact")
    (v,) = [v for v in rep.verdicts if v.check == "mask"]
    assert v.passed is False and "mask inverted" in v.meaning


def test_float16_kernel_judged_at_its_precision():
    """A kernel computing in its inputs' dtype (float16 included) passes; a float32 kernel fed
    float64 is less accurate than float64 allows and fails; a 1% error fails everywhere."""
    rep = check(exact_attention, "exact")  # numpy computes float16 inputs in float16
    assert rep.passed, rep.format_table()

    def f32(q, k, v):
        return exact_attention(*(np.asarray(a, np.float32) for a in (q, k, v)))

    failed = {v.check for v in check(f32, "exact").failures}
    assert "T != S" in failed and "float32 inputs" not in failed and "float16 inputs" not in failed

    def sloppy(q, k, v):
        return exact_attention(q, k, v) * 1.01

    rep = check(sloppy, "exact")
    assert {v.check for v in rep.failures} >= {"float16 inputs", "float32 inputs", "T != S"}


@pytest.mark.parametrize("name, what", [
    ("raises", "raised RuntimeError: boom"), ("nan", "NaN/Inf"), ("wrong_shape", "returned shape (3,)"),
    ("ints", "expected a real floating array"), ("not_array", "dtype object"),
])
def test_bad_callables_become_failing_verdicts(user_file, name, what):
    rep = check(f"{user_file}:{name}", "exact")
    assert not rep.passed and rep.exit_code == 1
    assert any(what in v.meaning for v in rep.failures), rep.format_table()


@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "exact"))
def test_correct_exact_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "exact"))
def test_planted_exact_defects_are_caught(name, seed, caught):
    caught(name, seed)


def _kernel_at(precision, *, scale_power=0.5):
    """A NumPy kernel that computes as a ``precision`` kernel does (refattn.precision), optionally
    with a planted wrong scale."""
    from refattn.precision import kernel_reference

    def fn(q, k, v, causal=False, mask=None):
        H = np.shape(q)[-1]
        return kernel_reference(q, k, v, precision, scale=H ** -scale_power, mask=mask,
                                causal="bottom_right" if causal else False).astype(np.float32)
    return fn


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_low_precision_kernel_passes_with_its_claim_and_is_diagnosed_without_it(precision):
    fn = _kernel_at(precision)
    rep = check(fn, "exact", precision=precision)
    assert rep.passed, rep.format_table()
    assert "--precision " + precision in rep.command
    rep = check(fn, "exact")  # claimed float64
    assert not rep.passed
    assert all(f"claim it with --precision {precision}" in v.meaning for v in rep.failures), rep.format_table()


def test_a_fault_is_still_caught_at_the_claimed_precision():
    """Power twin of the looser bound: a bfloat16 kernel with scale 1 fails its bfloat16 claim, diagnosed."""
    rep = check(_kernel_at("bfloat16", scale_power=0.0), "exact", precision="bfloat16")
    assert "T != S" in {v.check for v in rep.failures}
    assert any("scale 1 instead of 1/sqrt(H)" in v.meaning for v in rep.failures), rep.format_table()


@pytest.mark.parametrize("kwargs,match", [({"precision": "float8"}, "^precision: expected one of"),
                                          ({"precision": "float32", "kind": "kernel"}, "^precision: a precision claim")])
def test_bad_precision_claims_name_the_argument(kwargs, match):
    kind = kwargs.pop("kind", "exact")
    with pytest.raises(ValueError, match=match):
        check(exact_attention, kind, **kwargs)


# ----------------------------------------------------------------------------- layouts, heads, grouped queries
def _heads_first(q, k, v, causal=False, mask=None):
    """Attention on (B, N, T, H) with grouped-query heads: query head h reads key/value head h // group."""
    from refattn import softmax_attention

    group = q.shape[1] // k.shape[1]
    return softmax_attention(q, np.repeat(k, group, 1), np.repeat(v, group, 1), causal=causal, mask=mask)


def _tokens_first(q, k, v, causal=False, mask=None):
    """The same on (B, T, N, H)."""
    return np.swapaxes(_heads_first(*(np.swapaxes(a, 1, 2) for a in (q, k, v)), causal=causal, mask=mask), 1, 2)


@pytest.mark.parametrize("fn,layout,gqa", [(_heads_first, "BNTH", False), (_heads_first, "BNTH", True),
                                           (_tokens_first, "BTNH", True)])
def test_batched_multi_head_kernels_pass_in_their_layout(fn, layout, gqa):
    rep = check(fn, "exact", layout=layout, gqa=gqa)
    assert rep.passed and all("head by head" in v.meaning for v in rep.verdicts if v.passed), rep.format_table()
    assert f"--layout {layout}" in rep.command


def test_interleaved_grouped_query_heads_are_diagnosed():
    """Power twin: key/value head h mod N_kv instead of h // group fails, and is named."""
    def interleaved(q, k, v, causal=False, mask=None):
        group = q.shape[1] // k.shape[1]
        from refattn import softmax_attention

        return softmax_attention(q, np.tile(k, (1, group, 1, 1)), np.tile(v, (1, group, 1, 1)), causal=causal,
                                 mask=mask)
    rep = check(interleaved, "exact", layout="BNTH", gqa=True)
    assert not rep.passed and all("interleaved" in v.meaning for v in rep.failures), rep.format_table()


def test_the_wrong_layout_is_a_failing_verdict():
    """A (B, N, T, H) kernel checked as (B, T, N, H) gets outputs of the wrong shape or values: it fails."""
    assert not check(_heads_first, "exact", layout="BTNH").passed


def test_a_self_attention_kernel_skips_the_cross_attention_cases():
    def self_only(q, k, v, causal=False, mask=None):
        if q.shape[-2] != k.shape[-2]:
            raise ValueError("T != S")
        return exact_attention(q, k, v, causal=causal, mask=mask)
    rep = check(self_only, "exact", self_attention=True)
    skipped = {v.check for v in rep.verdicts if v.passed is None}
    assert rep.passed and {"T != S", "causal T < S", "causal T > S"} <= skipped
    assert not skipped & {"T = S", "odd sizes", "causal T = S", "mask"}  # run at S = T
    assert not check(self_only, "exact").passed  # without the claim, its T != S cases fail


@pytest.mark.parametrize("kwargs,match", [({"layout": "NTH"}, "^layout: expected one of"),
                                          ({"gqa": True}, "^gqa: grouped-query heads need"),
                                          ({"layout": "BNTH", "kind": "kernel"}, "^layout: a layout claim"),
                                          ({"gqa": True, "kind": "kernel"}, "^gqa: a grouped-query claim"),
                                          ({"self_attention": True, "kind": "backward"}, "^self_attention: ")])
def test_bad_layout_claims_name_the_argument(kwargs, match):
    kind = kwargs.pop("kind", "exact")
    with pytest.raises(ValueError, match=match):
        check(exact_attention, kind, **kwargs)


# ----------------------------------------------------------------------------- flash-attn's options
def flash_like(q, k, v, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, bias=None,
               key_lengths=None, return_lse=False, sinks=None, *, fault=""):
    """flash-attn's interface on refattn's oracle (TH layout); ``fault`` plants one bug per option."""
    from refattn import softmax_attention

    if fault == "window swapped":
        window_size = window_size[::-1]
    if fault == "softcap doubled":
        softcap = 2 * softcap
    slopes = None if alibi_slopes is None else np.asarray(alibi_slopes)[0] * (-1 if fault == "alibi sign" else 1)
    if fault == "bias ignored":
        bias = None
    if sinks is not None:  # (heads,): one per head, broadcast over the batch; a (T, H) call has one head
        sinks = None if fault == "sinks ignored" else per_head(sinks, q.ndim)
    if fault == "padding ignored":
        key_lengths = None
    if key_lengths is not None:  # a kernel never reads past the valid length (the checker poisons it)
        key_lengths = per_item(key_lengths, q.ndim)  # (B, 1, ..., 1) against the batch dims
        pad = np.arange(k.shape[-2]) >= np.asarray(key_lengths)[..., None]  # (B, ..., S)
        k, v = np.where(pad[..., None], 0.0, k), np.where(pad[..., None], 0.0, v)  # predicated loads: read as 0
    out = softmax_attention(q, k, v, causal=causal, window=window_size, softcap=softcap, alibi_slopes=slopes,
                            bias=bias, key_lengths=key_lengths, sinks=sinks, return_lse=True)
    if not return_lse:
        return out[0]
    return (out[0], out[1] / np.log(2)) if fault == "lse in log2" else out


def test_a_correct_flash_attn_interface_passes_every_option_case():
    rep = check(flash_like, "exact")
    from refattn.check.exact import grid

    options = {c.name for c in grid() if c.option}  # alone, with causal, at tile sizes
    assert rep.passed and options <= {v.check for v in rep.verdicts if v.passed}, rep.format_table()


def test_options_not_taken_are_skipped():
    rep = check(exact_attention, "exact")
    assert {v.check for v in rep.verdicts if v.passed is None} >= {"sliding window", "softcap", "log-sum-exp"}


@pytest.mark.parametrize("fault,case,says", [
    ("window swapped", "sliding window", "window_size read as (right, left)"),
    ("softcap doubled", "softcap", "tolerance rule"),
    ("alibi sign", "ALiBi", "tolerance rule"),
    ("bias ignored", "additive bias", "tolerance rule"),
    ("padding ignored", "key padding", "NaN"),  # the NaN put in the padding reaches the oracle's validation
    ("lse in log2", "log-sum-exp", "base 2"),
    ("sinks ignored", "attention sinks, per head", "the sinks ignored"),
])
def test_each_option_case_catches_a_planted_fault(fault, case, says):
    from functools import partial

    from refattn.check.exact import grid

    rep = check(partial(flash_like, fault=fault), "exact")
    failed = {v.check: v for v in rep.failures}
    option = next(c.option for c in grid() if c.name == case)
    # the option alone, with causal, at tile sizes (a window read backwards is the same window when symmetric)
    expected = {c.name for c in grid() if c.option == option and not (fault == "window swapped" and
                                                                       c.window[:1] == c.window[1:2] != ())}
    assert set(failed) == expected and says in failed[case].meaning, rep.format_table()


def test_new_diagnoses_inverted_causal_mask_and_padded_head_dim():
    from refattn import softmax_attention
    from refattn.problem import causal_mask

    def inverted(q, k, v, causal=False):
        T, S = q.shape[-2], k.shape[-2]
        future = ~causal_mask(T, S) | (np.arange(S)[None] == np.arange(T)[:, None] + S - T)
        return softmax_attention(q, k, v, mask=future if causal else None)

    def padded(q, k, v):
        return softmax_attention(q, k, v, scale=(-(-q.shape[-1] // 8) * 8) ** -0.5)

    from refattn.check.exact import grid

    rep = check(inverted, "exact")
    assert all("causal mask inverted" in v.meaning for v in rep.failures)
    assert len(rep.failures) == sum(c.causal and not c.option for c in grid())  # the option cases: skipped
    rep = check(padded, "exact")
    assert {v.check for v in rep.failures} == {"H = 1, T = 1", "odd sizes"}
    assert all("of the padded head dim" in v.meaning for v in rep.failures)


# --- sizes that cross tiles, empty rows, poisoned padding ---------------------------------------
def _blocked(q, k, v, causal=False, mask=None, key_lengths=None, *, block=64, rescale=True, empty=0.0,
             read_padding=False):
    """Blocked online softmax over keys (flash-attn's recurrence) in plain NumPy, bottom-right causal.
    Faults: ``rescale=False`` (the running sum not rescaled when the max grows), ``empty`` (what rows
    that see no key get), ``read_padding`` (padding masked by multiplying P by 0, so NaN there leaks)."""
    from refattn.check.planted import blocked_attention

    T, S = q.shape[-2], k.shape[-2]
    i, j = np.indices((T, S))
    allowed = np.ones((T, S), bool) if not causal else j <= i + (S - T)
    if mask is not None:
        allowed = allowed & mask
    if key_lengths is not None and not read_padding:  # never load a padded key (masking alone lets NaN in)
        valid = np.arange(S) < np.asarray(per_item(key_lengths, q.ndim))[..., None]  # (B, ..., S): one length per batch item
        k, v = np.where(valid[..., None], k, 0.0), np.where(valid[..., None], v, 0.0)
        allowed = allowed & valid[..., None, :]
    out = blocked_attention(q, k, v, allowed, q.shape[-1] ** -0.5, block=block, rescale=rescale)
    if read_padding and key_lengths is not None:
        keep = (np.arange(S) < np.asarray(key_lengths).reshape(-1)[0]).astype(float)
        s = np.where(allowed, q @ k.T * q.shape[-1] ** -0.5, -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True)) * keep
        out = (p @ v) / p.sum(axis=-1, keepdims=True)
    seen = allowed.any(axis=-1)
    out[..., ~seen, :] = empty
    return out


def test_a_running_sum_not_rescaled_fails_at_the_default_sizes_and_is_named():
    """The online-softmax bug that only shows past the first key block of 64 passed every small case
    (T, S <= 31); the default tile cases catch it and name the block size."""
    from functools import partial

    bad = partial(_blocked, rescale=False)
    assert check(bad, "exact", sizes="small", isolate=False).passed
    rep = check(bad, "exact", isolate=False)
    assert rep.result == "FAIL"
    assert any("not rescaled" in v.meaning and "blocks of 64 keys" in v.meaning for v in rep.failures), \
        rep.format_table()
    assert check(_blocked, "exact", isolate=False).passed  # the correct twin


def test_rows_that_see_no_key_are_judged_by_the_stated_convention():
    from functools import partial

    nan_rows = partial(_blocked, empty=np.nan)
    rep = check(nan_rows, "exact", isolate=False, sizes="small")
    failed = {v.check for v in rep.failures}
    assert {"causal T > S", "fully masked rows"} <= failed, rep.format_table()
    assert any("must be zeros" in v.meaning and "got NaN" in v.meaning for v in rep.failures)
    assert check(nan_rows, "exact", isolate=False, sizes="small", empty_rows="nan").passed
    assert check(nan_rows, "exact", isolate=False, sizes="small", empty_rows="any").passed
    assert not check(_blocked, "exact", isolate=False, sizes="small", empty_rows="nan").passed


def test_a_kernel_that_reads_the_padding_fails_with_that_diagnosis():
    """Padded keys and values are NaN (then huge): a kernel that masks them by multiplying by zero
    lets NaN through; the verdict says it reads past key_lengths."""
    from functools import partial

    rep = check(partial(_blocked, read_padding=True), "exact", isolate=False, sizes="small")
    v = next(x for x in rep.failures if x.check == "key padding")
    assert "reads keys/values past key_lengths" in v.meaning, rep.format_table()


def test_unsupported_head_dims_are_skipped_when_probing():
    def only_small_heads(q, k, v):
        if q.shape[-1] > 32:
            raise ValueError("head dim not supported")
        return exact_attention(q, k, v)

    failing = check(only_small_heads, "exact", isolate=False)
    assert any(v.check.startswith("tiles") for v in failing.failures)
    probed = check(only_small_heads, "exact", isolate=False, probe_head_dims=True)
    assert probed.passed and any("unsupported" in v.meaning for v in probed.verdicts if v.passed is None)


def test_head_dims_and_presets_are_validated_and_rerun():
    rep = check(exact_attention, "exact", isolate=False, head_dims=(32, 96), sizes="tiles")
    assert rep.passed and any(v.check.endswith("H = 96") for v in rep.verdicts)
    assert "--sizes tiles --head-dims 32,96" in rep.command
    with pytest.raises(ValueError, match="^sizes: expected one of"):
        check(exact_attention, "exact", sizes="huge")
    with pytest.raises(ValueError, match="^head_dims: must be <= 1024"):
        check(exact_attention, "exact", head_dims=(4096,))
    with pytest.raises(ValueError, match="^empty_rows: expected one of"):
        check(exact_attention, "exact", empty_rows="zero")


def test_an_lse_in_base_2_is_named():
    from refattn import softmax_attention

    def base2(q, k, v, return_lse=False):
        out, lse = softmax_attention(q, k, v, return_lse=True)
        return (out, lse / np.log(2.0)) if return_lse else out

    rep = check(base2, "exact", isolate=False, sizes="small")
    v = next(x for x in rep.failures if x.check == "log-sum-exp")
    assert "base 2" in v.meaning


def test_num_splits_runs_every_case_at_every_count_and_needs_the_keyword(seed):
    """A kernel right at one split and wrong at more fails, naming the count; a callable without the
    keyword fails once, saying so; the rerun command keeps the counts."""
    from functools import partial

    from refattn.check.bugs import split_forward

    ok = check(split_forward, "exact", num_splits=(1, 3), seed=seed, sizes="small", isolate=False)
    assert ok.passed and "--num-splits 1,3" in ok.command
    assert all("at num_splits 1, 3" in v.meaning for v in ok.verdicts if v.passed)
    bad = check(partial(split_forward, fault="split-KV lse of one split"), "exact", num_splits=(1, 3), seed=seed,
                isolate=False)
    assert bad.failures and all("at num_splits=3" in v.meaning for v in bad.failures)
    assert check(partial(split_forward, fault="split-KV lse of one split"), "exact", seed=seed, isolate=False).passed
    none = check(lambda q, k, v: q, "exact", num_splits=(2,), isolate=False)
    assert [v.check for v in none.failures] == ["num_splits"] and "no num_splits=" in none.failures[0].meaning
    with pytest.raises(ValueError, match="num_splits"):
        check(split_forward, "exact", num_splits=(0,))
    with pytest.raises(ValueError, match="num_splits"):
        check(split_forward, "backward", num_splits=(2,))


def test_an_fp8_claim_hands_over_fp8_codes_and_their_descales(seed):
    """FP8 claims: ml_dtypes FP8 arrays, and power-of-two float32 descale factors when the callable takes
    them (the value is code * descale); without them the cases beyond the format are skipped, named."""
    from refattn.check.serving_bugs import fp8_forward, fp8_without_descales

    seen = []

    def spy(q, k, v, causal=False, q_descale=None, k_descale=None, v_descale=None):
        seen.append((q.dtype.name, k.dtype.name, [np.frexp(d)[0] for d in (q_descale, k_descale, v_descale)],
                     [np.shape(d) for d in (q_descale, k_descale, v_descale)], np.unique(q_descale).size))
        return fp8_forward(q, k, v, causal, q_descale, k_descale, v_descale)

    rep = check(spy, "exact", precision="float8_e4m3fn", seed=seed, isolate=False)
    assert rep.result == "PASS" and seen, rep.format_table()
    assert all(s[0] == s[1] == "float8_e4m3fn" and np.all(np.concatenate([np.ravel(m) for m in s[2]]) == 0.5)
               and s[3] == [(), (), ()] for s in seen)  # float32 scalars, powers of two
    seen.clear()
    rep = check(spy, "exact", precision="float8_e4m3fn", layout="BNTH", gqa=True, seed=seed, isolate=False)
    assert rep.result == "PASS" and seen, rep.format_table()
    assert all(s[3] == [(2, 2)] * 3 and s[4] == 2 for s in seen)  # (B, kv_heads), q's at two values
    plain = check(fp8_without_descales, "exact", precision="float8_e4m3fn", seed=seed, isolate=False)
    skipped = {v.check: v.meaning for v in plain.verdicts if v.passed is None and not v.inconclusive}
    assert plain.result == "PASS" and "q_descale=" in skipped["logits far apart"], plain.format_table()


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_an_fp8_output_of_zeros_never_passes(fmt, seed):
    """Power twin of the FP8 rule: where its bound is as large as the output, the case is not judged,
    never a PASS; elsewhere zeros fail."""
    def zeros(q, k, v, causal=False, q_descale=None, k_descale=None, v_descale=None):
        return np.zeros(q.shape[:-1] + v.shape[-1:], np.float32)

    rep = check(zeros, "exact", precision=fmt, seed=seed, isolate=False)
    assert not any(v.passed for v in rep.verdicts if v.check != "no keys (S = 0)") and rep.result == "FAIL"
    powerless = [v for v in rep.verdicts if v.passed is None and "not judged" in v.meaning]
    assert all(v.bound >= 0 for v in powerless)


def test_an_fp8_run_in_which_no_case_can_tell_is_inconclusive(seed, monkeypatch):
    """Every case's bound inflated past its output: each case is not judged, and the run says
    INCONCLUSIVE (exit 4), not PASS."""
    import dataclasses

    import refattn.check.exact as exact
    from refattn.check.serving_bugs import fp8_forward

    real = exact.check_attention_output
    monkeypatch.setattr(exact, "check_attention_output",
                        lambda *a, **kw: dataclasses.replace(real(*a, **kw), allowance=1e9))
    rep = check(fp8_forward, "exact", precision="float8_e4m3fn", sizes="small", seed=seed, isolate=False)
    assert rep.result == "INCONCLUSIVE" and rep.exit_code == 4, rep.format_table()
    assert [v.check for v in rep.inconclusive] == ["FP8 power"]


def test_fp8_claims_and_the_p_scale_are_validated():
    from refattn.check.serving_bugs import fp8_forward

    with pytest.raises(ValueError, match="^p_scale: a power of two"):
        check(fp8_forward, "exact", precision="float8_e4m3fn", p_scale=3.0)
    with pytest.raises(ValueError, match="^p_scale: an FP8 kernel's recipe"):
        check(fp8_forward, "exact", precision="bfloat16", p_scale=256.0)
    with pytest.raises(ValueError, match="^precision: FP8 claims are judged by the exact kind"):
        check(fp8_forward, "backward", precision="float8_e4m3fn")
