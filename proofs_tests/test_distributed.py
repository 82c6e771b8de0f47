"""The sharded oracle (refattn.distributed): the same bits locally and on a Dask cluster of 2
worker processes, the local oracle's bits for the forward pass, a killed worker changes nothing,
an interrupted job resumes, and a stored reference refuses other inputs. Deterministic.

The cluster tests need the ``dask`` extra (CI installs it) and skip with a message without it.
"""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from refattn import attention_backward, softmax_attention
from refattn.distributed import checksum, input_array, load_reference, reference

NAMES = ("out", "lse", "dq", "dk", "dv")


def _inputs(T, S, seed=0, batch=()):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=batch + (T, 16)), rng.normal(size=batch + (S, 16)), rng.normal(size=batch + (S, 8)),
            rng.normal(size=batch + (T, 8)))


@pytest.mark.parametrize("T,S,causal", [(700, 700, False), (700, 900, True), (900, 500, "top_left"),
                                        (900, 500, "bottom_right"), (300, 1000, "top_left")])
def test_the_forward_pass_is_the_oracles_bit_for_bit(tmp_path, T, S, causal):
    """Shards at multiples of the kernel's query block, causal shards cut to the keys they see:
    out and lse equal softmax_attention's streaming kernel exactly; the gradients equal the dense
    backward to rounding (a different order of the same sums: a few ulps of the largest term)."""
    q, k, v, dout = _inputs(T, S, batch=(2,))
    ref = reference(q, k, v, out=tmp_path / "r", causal=causal, shard=256, dout=dout, progress=False)
    out, lse = softmax_attention(q, k, v, causal=causal, return_lse=True, implementation="numba")
    assert np.array_equal(ref["out"], out) and np.array_equal(ref["lse"], lse)
    for name, g in zip(("dq", "dk", "dv"), attention_backward(q, k, v, dout, causal=causal)):
        np.testing.assert_allclose(ref[name], g, rtol=0, atol=1e-13 * max(1.0, np.abs(g).max()))


def test_masks_bias_and_key_lengths(tmp_path):
    q, k, v, _ = _inputs(400, 400, seed=1, batch=(2,))
    rng = np.random.default_rng(2)
    mask = rng.random((2, 400, 400)) < 0.7
    bias = rng.normal(size=(2, 400, 400))
    lengths = np.array([400, 250])
    ref = reference(q, k, v, out=tmp_path / "r", mask=mask, bias=bias, key_lengths=lengths, causal=True, shard=128,
                    progress=False)
    out, lse = softmax_attention(q, k, v, mask=mask, bias=bias, key_lengths=lengths, causal=True, return_lse=True,
                                 implementation="numba")
    assert np.array_equal(ref["out"], out) and np.array_equal(ref["lse"], lse)


def test_an_interrupted_job_resumes_from_the_shards_it_has(tmp_path, monkeypatch):
    import refattn.distributed as dist

    q, k, v, _ = _inputs(1024, 1024, seed=3)
    whole = reference(q, k, v, out=tmp_path / "whole", shard=128, progress=False)
    calls = []
    real = dist._forward_task

    def flaky(q_rows, *args):
        calls.append(args[-3])  # the shard's first row
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user stops the job in the middle
        return real(q_rows, *args)

    monkeypatch.setattr(dist, "_forward_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        reference(q, k, v, out=tmp_path / "r", shard=128, progress=False)
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["done"] == [0, 1, 2]
    with pytest.raises(ValueError, match="unfinished"):
        load_reference(tmp_path / "r")
    calls.clear()
    monkeypatch.setattr(dist, "_forward_task", real)
    resumed = reference(q, k, v, out=tmp_path / "r", shard=128, progress=False)
    assert resumed.complete and all(np.array_equal(resumed[n], whole[n]) for n in ("out", "lse"))


def test_a_stored_reference_refuses_other_inputs(tmp_path):
    q, k, v, _ = _inputs(256, 256, seed=4)
    reference(q, k, v, out=tmp_path / "r", shard=128, progress=False)
    assert load_reference(tmp_path / "r", q=q, k=k, v=v).meta["refattn"]
    other = q.copy()
    other[3, 5] += 1e-12
    with pytest.raises(ValueError, match="^q: its checksum"):
        load_reference(tmp_path / "r", q=other)
    assert checksum(q) != checksum(q.astype(np.float32)) != checksum(q.reshape(128, 32))


def test_bad_input(tmp_path):
    q, k, v, _ = _inputs(256, 256, seed=5)
    with pytest.raises(ValueError, match="^v: 100 rows"):
        reference(q, k, v[:100], out=tmp_path / "a", progress=False)
    with pytest.raises(TypeError, match="^k, v: dtypes"):
        reference(q, k.astype(np.float32), v, out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="^shard: must be a multiple of 128"):
        reference(q, k, v, out=tmp_path / "a", shard=100, progress=False)
    reference(q, k, v, out=tmp_path / "done", shard=128, progress=False)
    with pytest.raises(ValueError, match="^out: .* exists"):
        reference(q, k, v, out=tmp_path / "done", shard=128, progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="^q: .* is not a .npy array file"):
        input_array(tmp_path / "notes.txt", "q")
    with pytest.raises(ValueError, match="^q: no such file"):
        input_array(tmp_path / "missing.npy", "q")


# ----------------------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask.distributed", reason="the dask extra is not installed (pip install -e '.[dask]')")
    from refattn.distributed import connect

    c = connect(workers=2)
    yield c
    c.close()
    c.cluster.close()


def test_a_cluster_of_two_workers_gives_the_local_bits(tmp_path, client):
    """Forward and backward, causal both alignments and a mask: identical to the in-process run."""
    q, k, v, dout = _inputs(1100, 900, seed=6, batch=(2,))
    mask = np.random.default_rng(7).random((2, 1100, 900)) < 0.8
    for causal in ("bottom_right", "top_left"):
        kw = dict(causal=causal, mask=mask, shard=256, dout=dout, progress=False)
        here = reference(q, k, v, out=tmp_path / f"here-{causal}", **kw)
        there = reference(q, k, v, out=tmp_path / f"there-{causal}", client=client, **kw)
        assert all(np.array_equal(here[n], there[n]) for n in NAMES)
        assert len(client.scheduler_info()["workers"]) == 2


def test_a_killed_worker_costs_a_retry_not_a_block(tmp_path, client):
    """One of the two worker processes is killed while the job runs: the scheduler reruns its tasks
    elsewhere and the result is the same as the in-process run's, every shard present."""
    q, k, v, _ = _inputs(4096, 4096, seed=8)
    here = reference(q, k, v, out=tmp_path / "here", shard=128, progress=False)
    pids = list(client.run(os.getpid).values())
    result = {}

    def job():
        result["ref"] = reference(q, k, v, out=tmp_path / "there", shard=128, client=client, progress=False)

    thread = threading.Thread(target=job)
    thread.start()
    meta = tmp_path / "there" / "meta.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (meta.is_file() and json.loads(meta.read_text())["done"]):
        time.sleep(0.01)
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    there = result["ref"]
    assert there.complete and all(np.array_equal(here[n], there[n]) for n in ("out", "lse"))


def test_an_unreachable_scheduler_is_a_clear_error(monkeypatch):
    pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    from refattn.distributed import connect

    monkeypatch.setenv("REFATTN_SCHEDULER_TIMEOUT", "1")  # the wait is the environment's to set
    with pytest.raises(ValueError, match="^scheduler: cannot reach"):
        connect("tcp://127.0.0.1:9")
    monkeypatch.setenv("REFATTN_SCHEDULER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="^REFATTN_SCHEDULER_TIMEOUT: expected seconds"):
        connect("tcp://127.0.0.1:9")


# ----------------------------------------------------------------------------- sweeps
KERNELS = '''
import numpy as np
from refattn import causal_mask

def _attn(q, k, v, causal, alignment):
    s = q @ k.T / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(causal_mask(q.shape[0], k.shape[0], alignment), s, -np.inf)
    m = s.max(-1, keepdims=True, initial=-np.inf)  # no keys (S = 0): zeros, not a crash
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    d = p.sum(-1, keepdims=True)
    return np.where(d > 0, p / np.where(d > 0, d, 1), 0) @ v

def good(q, k, v, causal=False):
    return _attn(q, k, v, causal, "bottom_right")

def top_left(q, k, v, causal=False):
    return _attn(q, k, v, causal, "top_left")
'''


def test_sweep_seeds_do_not_depend_on_how_many_or_where():
    from refattn.distributed import sweep_seeds

    assert sweep_seeds(5, 10)[:4] == sweep_seeds(5, 4) and len(set(sweep_seeds(5, 100))) == 100
    assert all(0 <= s < 2**63 for s in sweep_seeds(0, 20)) and sweep_seeds(1, 3) != sweep_seeds(0, 3)


def test_calibration_separates_a_correct_kernel_from_a_planted_bug(tmp_path):
    """Over 5 seeds: the correct kernel never fails (its interval reaches below alpha), the
    top-left alignment fails every time (power >= the interval's lower end)."""
    from refattn.distributed import calibrate_check

    (tmp_path / "kernels.py").write_text(KERNELS)
    ok = calibrate_check(f"{tmp_path}/kernels.py:good", "exact", 5, isolate=False, progress=False)
    bad = calibrate_check(f"{tmp_path}/kernels.py:top_left", "exact", 5, isolate=False, progress=False)
    assert ok["failures"] == 0 and ok["low"] == 0 and "consistent with a correct" in ok["verdict"]
    assert bad["failures"] == 5 and bad["low"] > 0.4 and "a real defect" in bad["verdict"]


def test_a_sweep_gives_the_same_numbers_with_one_process_and_two_workers(tmp_path, client):
    from refattn.distributed import calibrate_check

    (tmp_path / "kernels.py").write_text(KERNELS)
    target = f"{tmp_path}/kernels.py:top_left"
    here = calibrate_check(target, "exact", 4, seed=3, progress=False)
    there = calibrate_check(target, "exact", 4, seed=3, client=client, progress=False)
    assert here["results"] == there["results"] and here["failures"] == there["failures"] == 4


def test_dask_arrays_and_npy_files_as_inputs(tmp_path):
    """Inputs as Dask arrays (computed a shard at a time) or memory-mapped .npy files give the same bits."""
    da = pytest.importorskip("dask.array", reason="the dask extra is not installed")
    q, k, v, _ = _inputs(600, 500, seed=9)
    here = reference(q, k, v, out=tmp_path / "np", shard=128, causal=True, progress=False)
    lazy = reference(da.from_array(q, chunks=(100, 16)), da.from_array(k, chunks=(250, 16)), da.from_array(v, chunks=(250, 8)),
                     out=tmp_path / "dask", shard=128, causal=True, progress=False)
    for name, a in (("q", q), ("k", k), ("v", v)):
        np.save(tmp_path / f"{name}.npy", a)
    files = reference(*(str(tmp_path / f"{n}.npy") for n in "qkv"), out=tmp_path / "files", shard=128, causal=True,
                      progress=False)
    assert all(np.array_equal(here[n], other[n]) for other in (lazy, files) for n in ("out", "lse"))
    assert lazy.meta["checksums"] == here.meta["checksums"] == files.meta["checksums"]


def test_a_batched_theory_claim_gives_the_same_table_here_and_on_two_workers(client):
    """`refattn theory CLAIM --batches K --workers N`: the same rows whatever runs the batches; the
    rows are the claim's, means with batch-means t-intervals (rates: pooled hits, exact intervals)."""
    from refattn.distributed import run_claim_batched
    from refattn.evaluation.claims import run_claim

    for claim in ("lemma2", "collision"):
        here = run_claim_batched(claim, draws=400, batches=4, seed=2, progress=False)
        there = run_claim_batched(claim, draws=400, batches=4, seed=2, client=client, progress=False)
        assert here == there
        plain = run_claim(claim, draws=100, seed=0, progress=lambda it: it)
        assert [(r.quantity, r.setting, r.closed_form) for r in here] == [(r.quantity, r.setting, r.closed_form)
                                                                          for r in plain]
        assert all(r.low <= r.empirical <= r.high for r in here if r.empirical == r.empirical)
    with pytest.raises(ValueError, match="^claim: 'rpca' cannot be split"):
        run_claim_batched("rpca", draws=100)
    with pytest.raises(ValueError, match="^draws: 10 draws in 8 batches"):
        run_claim_batched("lemma2", draws=10, batches=8)
