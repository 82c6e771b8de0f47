"""`refattn report`'s main table (refattn.evaluation.report) and its command line.

The numbers in the table are checked against independent computations: the local window's
error of P against the masked exact oracle, the oracles' limits (every key kept: error 0),
the linearity that defines P^ (P^ v equals the method's output), and the streaming kernel's
agreement with the dense oracle. Deterministic (seeded draws); no timing is asserted.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from refattn import attention_probabilities, softmax_attention
from refattn.evaluation.methods import REGISTRY, Method, output_of, register
from refattn.evaluation.report import DEFAULT_METHODS, format_comparison, run_comparison, summarise
from refattn.cli import main
from refattn.evaluation.datasets import AttentionData, embedded_attention, gaussian_inputs

_FULL = embedded_attention().truncated(48)
SMALL = AttentionData("minilm (3 heads)", _FULL.q[::4], _FULL.k[::4], _FULL.v[::4], _FULL.heads[::4], _FULL.provenance)


def _by(rows):
    return {(r.temperature, r.head, r.method): r for r in rows}


def test_table_rows_and_exact_baselines():
    rows = run_comparison(SMALL, budget=8, temperatures=(1.0, 0.5), progress=False)
    assert len(rows) == 2 * 3 * len(DEFAULT_METHODS)  # the exact entries are in the default set
    for r in rows:
        assert np.isfinite(r.error_O) and r.peak_mb >= 0 and r.seconds >= 0
        if r.method == "exact dense":
            assert r.error_P == 0 and r.error_O == 0
        elif r.method == "exact streaming":
            assert r.error_P <= 1e-13 and r.error_O <= 1e-13
        else:
            assert 0 < r.error_P < np.inf
    # lowering the temperature sharpens every head's attention
    by = _by(rows)
    for h in SMALL.heads:
        assert by[(0.5, h, "exact dense")].entropy < by[(1.0, h, "exact dense")].entropy
    text = format_comparison(rows, SMALL.provenance)
    assert "all-MiniLM-L6-v2" in text and "scatterbrain" in text
    assert {s["method"] for s in summarise(rows)} == set(DEFAULT_METHODS) >= {"exact dense", "exact streaming"}


def test_local_window_error_matches_the_masked_oracle():
    """The report's error of P for the local window equals |softmax(window mask) - P|_F / |P|_F computed
    with the exact oracle's mask path (an independent implementation of the same P^)."""
    b = 8
    rows = run_comparison(SMALL, budget=b, methods=("local window",), progress=False)
    T = SMALL.q.shape[1]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = (j >= i - b // 2) & (j <= i + b - b // 2 - 1)  # refattn.lsh.sparse.local_window(T, S, b/2, b - b/2 - 1)
    for h, r in enumerate(r for r in rows if r.method == "local window"):
        P = attention_probabilities(SMALL.q[h], SMALL.k[h])
        Pm = attention_probabilities(SMALL.q[h], SMALL.k[h], mask=mask)
        expected = np.linalg.norm(Pm - P) / np.linalg.norm(P)
        assert abs(r.error_P - expected) <= 1e-12 * expected, (r.head, r.error_P, expected)


def test_oracles_are_exact_when_the_budget_covers_every_key():
    T = SMALL.q.shape[1]
    rows = run_comparison(SMALL, budget=T, methods=("best sparse",), progress=False)
    assert all(r.error_P <= 1e-12 and r.error_O <= 1e-12 for r in rows)


def test_effective_matrix_reproduces_the_output():
    """P^ = run(q, k, I) is what the report compares with P; it must give the method's output
    (every registered method is linear in v given its draw)."""
    d = gaussian_inputs(40, 8, 3, n_heads=1)
    q, k, v = d.q[0], d.k[0], d.v[0]
    for name, method in REGISTRY.items():
        if name == "sparse + low-rank":
            continue  # slow; an oracle built like best low-rank
        out = output_of(method.run(q, k, v, budget=8, scale=8**-0.5, rng=np.random.default_rng(5)))
        Ph = output_of(method.run(q, k, np.eye(40), budget=8, scale=8**-0.5, rng=np.random.default_rng(5)))
        np.testing.assert_allclose(Ph @ v, out, atol=1e-10, err_msg=name)


def test_a_planted_wrong_method_shows_a_large_error():
    """Power: a method that returns uniform attention is reported far from the oracle on real heads."""
    register(Method("uniform (planted)", lambda q, k, v, *, budget, scale, rng, **kw: np.broadcast_to(
        v.mean(0), (q.shape[0], v.shape[1])), "none: uniform attention"))
    try:
        rows = run_comparison(SMALL, budget=8, methods=("uniform (planted)",), progress=False)
    finally:
        del REGISTRY["uniform (planted)"]
    errs = [r.error_P for r in rows if r.method == "uniform (planted)"]
    assert min(errs) > 0.3, errs


def test_bad_arguments():
    with pytest.raises(ValueError, match="^budget: 999 exceeds"):
        run_comparison(SMALL, budget=999)
    with pytest.raises(ValueError, match="^methods: unknown"):
        run_comparison(SMALL, budget=8, methods=("magic",))
    with pytest.raises(ValueError, match="^temperature"):
        run_comparison(SMALL, budget=8, temperatures=(0.0,))


def _cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "refattn", *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_cli_report_json_and_data(tmp_path):
    path = tmp_path / "mine.npz"
    d = gaussian_inputs(32, 8, 0, n_heads=2)
    np.savez(path, q=d.q, k=d.k, v=d.v)
    proc = _cli("report", "--data", str(path), "--budget", "8", "--methods", "best sparse,performer",
                "--temperature-sweep", "0.5,2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["data"] == "mine.npz" and len(doc["rows"]) == 2 * 2 * 4
    assert {s["method"] for s in doc["summary"]} == {"best sparse", "performer", "exact dense", "exact streaming"}
    stream = [r for r in doc["rows"] if r["method"] == "exact streaming"]
    assert all(r["error_P"] <= 1e-12 for r in stream)  # the streaming kernel applied to V = I is P
    P = attention_probabilities(d.q[0] / 0.5, d.k[0])
    top = np.sort(P, axis=1)[:, ::-1][:, :8]  # best sparse keeps the 8 largest entries per row
    expected = np.sqrt(np.sum(P**2) - np.sum(top**2)) / np.linalg.norm(P)
    got = next(r["error_P"] for r in doc["rows"] if r["method"] == "best sparse" and r["temperature"] == 0.5
               and r["head"] == "head (0,)")
    assert abs(got - expected) <= 1e-12


def test_cli_report_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    assert main(["report", "--seq-len", "32", "--budget", "8", "--methods", "best sparse,best low-rank",
                 "--temperature-sweep", "0.5,2", "--plot", str(out)]) == 0
    assert "best low-rank" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, q=np.ones((3, 2)), k=np.ones((3, 2)))
    shapes = tmp_path / "shapes.npz"
    np.savez(shapes, q=np.ones((3, 2)), k=np.ones((3, 2)), v=np.ones((4, 2)))
    nan = tmp_path / "nan.npz"
    np.savez(nan, q=np.full((3, 2), np.inf), k=np.ones((3, 2)), v=np.ones((3, 2)))
    obj = tmp_path / "obj.npz"
    o = np.empty(2, dtype=object)
    o[:] = [np.ones(2), np.ones(3)]
    np.savez(obj, q=o, k=np.ones((3, 2)), v=np.ones((3, 2)))
    rect = tmp_path / "rect.npz"
    np.savez(rect, q=np.ones((3, 2)), k=np.ones((5, 2)), v=np.ones((5, 2)))
    return [tmp_path / "absent.npz", text, nokey, shapes, nan, obj, rect]


def test_cli_report_bad_input_exits_2_in_one_line(tmp_path, capsys):
    """Every bad --data file and bad option: exit code 2 and a one-line message starting with 'refattn'
    (argparse prints its usage above it), in-process through main(); one case in a subprocess
    shows no traceback reaches the terminal."""
    files = _bad_files(tmp_path)
    cases = [["--data", str(p)] for p in files]
    cases += [["--temperature-sweep", "0"], ["--temperature-sweep", "a,b"], ["--methods", "magic"],
              ["--budget", "0"], ["--budget", "2"]]
    for extra in cases:
        assert main(["report", "--seq-len", "16", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("refattn report: error:"), (extra, err)
        assert "Traceback" not in err
    proc = _cli("report", "--data", str(files[3]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"refattn report: error: --data {files[3]}: k and v key counts differ: "
                                                "k (3, 2), v (4, 2)"]
