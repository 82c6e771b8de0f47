"""Every script in examples/ runs to completion (smoke test)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    """Each example at its small default size; an example with --plot also draws its figure
    (when matplotlib is installed, as in CI)."""
    argv = [sys.executable, str(script)]
    plot = tmp_path / "figure.png"
    wants_plot = "--plot" in script.read_text(encoding="utf-8") and importlib.util.find_spec("matplotlib")
    if wants_plot:
        argv += ["--plot", str(plot)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # examples assert their own claims
    if wants_plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
