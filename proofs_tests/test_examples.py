"""Every script in examples/ runs to completion and asserts its claims; one draws its figure (all in the slow run)."""

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES


def _ran_in_the_docs_build(script):
    """Whether the documentation build of this checkout ran ``script`` to completion: mkdocs-gallery
    runs every example (``abort_on_example_error``) and records the md5 of the script it ran beside
    its page; the page must be in the built site (``REFATTN_SITE_DIR``, as CI sets) and show no traceback."""
    site = os.environ.get("REFATTN_SITE_DIR")
    record = ROOT / "docs" / "generated" / "examples" / f"{script.name}.md5"
    page = Path(site or "/nonexistent") / "generated" / "examples" / script.stem / "index.html"
    if not (site and record.is_file() and page.is_file()):
        return False
    ran = record.read_text().strip() == hashlib.md5(script.read_bytes()).hexdigest()
    return ran and "Traceback (most recent call last)" not in page.read_text(encoding="utf-8")


def _run(script, tmp_path, plot):
    argv = [sys.executable, str(script)]
    figure = tmp_path / "figure.png"
    if plot:
        argv += ["--plot", str(figure)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # examples assert their own claims
    if plot:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _plots(script):
    return "--plot" in script.read_text(encoding="utf-8") and importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    """Each example at its small default size, asserting its own claims: run here, unless the docs
    build of this checkout already ran this very script (CI builds the site before the tests)."""
    if _ran_in_the_docs_build(script):
        return
    _run(script, tmp_path, plot=False)


#: the example whose figure the default run draws (the others' in the slow run): the cheapest one
PLOTTED = "performer_lemma2.py"


@pytest.mark.parametrize("script", [p for p in EXAMPLES if p.name == PLOTTED], ids=[PLOTTED])
def test_an_example_draws_its_figure(script, tmp_path):
    if not _plots(script):
        pytest.skip("matplotlib is not installed (pip install -e '.[plots]')")
    _run(script, tmp_path, plot=True)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_draws_its_figure(script, tmp_path):
    if not _plots(script):
        pytest.skip(f"{script.name} draws no figure, or matplotlib is not installed")
    _run(script, tmp_path, plot=True)
