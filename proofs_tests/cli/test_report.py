"""`refattn report` (refattn.cli.report): the table and JSON with --exact-paths, --data, the plot,
bad input exits 2 in one line.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from refattn import attention_probabilities
from refattn.cli import main
from refattn.evaluation.datasets import gaussian_inputs


def test_report_table_and_json(capsys):
    assert main(["report", "--seq-len", "64", "--methods", "best sparse", "--exact-paths"]) == 0
    table = capsys.readouterr().out
    assert "streaming numba float64" in table and "mpmath" in table
    assert main(["report", "--seq-len", "64", "--methods", "best sparse", "--exact-paths", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["exact_paths"]
    by = {(r["problem"], r["method"]): r for r in rows}
    # the report's own numbers: the streaming kernels equal the dense oracle to rounding,
    # and float64 agrees with mpmath on the adversarial problem
    for impl in ("numpy", "numba"):
        assert by[("gaussian", f"streaming {impl} float64")]["max_rel_error"] <= 1e-12
    assert by[("adversarial", "dense float64")]["max_rel_error"] <= 1e-10
    assert by[("gaussian", "dense float16")]["max_rel_error"] > 1e-5  # low precision shows
    # only exact paths, each with its verdict against the derived bound
    assert not any("performer" in m or "reformer" in m for _, m in by)
    assert {r["verdict"] for r in rows} == {"PASS", "-"} and "PASS" in table and "verdict" in table


def _cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "refattn", *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


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
