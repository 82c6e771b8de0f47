"""`refattn reference` (refattn.cli.reference): a stored reference round-trips, is verified against
its inputs, resumes, and bad usage is a one-line error (exit 2). Deterministic."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refattn import attention_backward, softmax_attention
from refattn.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"q": rng.normal(size=(300, 16)), "k": rng.normal(size=(400, 16)), "v": rng.normal(size=(400, 8)),
              "dout": rng.normal(size=(300, 8))}
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
    return tmp_path, arrays


def _argv(d, *extra):
    return ["reference", "--q", str(d / "q.npy"), "--k", str(d / "k.npy"), "--v", str(d / "v.npy"), *extra]


def test_round_trip_and_verify(files, capsys):
    d, a = files
    assert main(_argv(d, "--out", str(d / "ref"), "--causal", "--backward", str(d / "dout.npy"), "--shard", "128",
                      "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"] == 3 and summary["where"] == "this process"
    out, lse = softmax_attention(a["q"], a["k"], a["v"], causal=True, return_lse=True, implementation="numba")
    assert np.array_equal(np.load(d / "ref" / "out.npy"), out) and np.array_equal(np.load(d / "ref" / "lse.npy"), lse)
    for name, g in zip(("dq", "dk", "dv"), attention_backward(a["q"], a["k"], a["v"], a["dout"], causal=True)):
        np.testing.assert_allclose(np.load(d / "ref" / f"{name}.npy"), g, rtol=0, atol=1e-13 * np.abs(g).max())
    meta = json.loads((d / "ref" / "meta.json").read_text())
    assert set(meta["checksums"]) == {"q", "k", "v", "dout"} and meta["refattn"]
    assert main(_argv(d, "--out", str(d / "ref"), "--backward", str(d / "dout.npy"), "--verify")) == 0
    np.save(d / "q2.npy", a["q"] * (1 + 1e-15))
    argv = _argv(d, "--out", str(d / "ref"), "--verify")
    argv[2] = str(d / "q2.npy")
    assert main(argv) == 1
    assert "NOT VERIFIED: q: its checksum" in capsys.readouterr().out


def test_an_existing_output_needs_overwrite(files, capsys):
    d, _ = files
    assert main(_argv(d, "--out", str(d / "ref"))) == 0
    assert main(_argv(d, "--out", str(d / "ref"))) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_argv(d, "--out", str(d / "ref"), "--overwrite")) == 0


@pytest.mark.parametrize("change,message", [
    ({"k": "notes.txt"}, "k: '.*notes.txt' is not a .npy array file"),
    ({"v": "v_short.npy"}, "v: 100 rows, but k has 400 keys"),
    ({"k": "k32.npy"}, "k, v: dtypes float32, float64 differ"),
    ({"q": "missing.npy"}, "q: no such file"),
])
def test_bad_input_is_a_one_line_error(files, change, message):
    d, a = files
    (d / "notes.txt").write_text("hello")
    np.save(d / "v_short.npy", a["v"][:100])
    np.save(d / "k32.npy", a["k"].astype(np.float32))
    paths = {n: str(d / f"{n}.npy") for n in ("q", "k", "v")}
    paths.update({n: str(d / f) for n, f in change.items()})
    proc = subprocess.run([sys.executable, "-m", "refattn", "reference", "--q", paths["q"], "--k", paths["k"], "--v",
                           paths["v"], "--out", str(d / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr


def test_an_unreachable_scheduler_and_conflicting_options(files):
    pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    d, _ = files
    proc = subprocess.run([sys.executable, "-m", "refattn", *_argv(d, "--out", str(d / "x"), "--scheduler",
                                                                     "tcp://127.0.0.1:9")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "REFATTN_SCHEDULER_TIMEOUT": "1"})
    assert proc.returncode == 2 and "scheduler: cannot reach" in proc.stderr and "Traceback" not in proc.stderr
    assert main(_argv(d, "--out", str(d / "x"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:9")) == 2
