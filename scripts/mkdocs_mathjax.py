"""mkdocs hook: serve MathJax from the built site itself, never from a CDN.

The docs' formulas are typeset by MathJax 3 (``pymdownx.arithmatex`` in generic mode). A page that
loads it from a CDN shows raw TeX offline and cannot be checked in CI, so this hook copies the
MathJax distribution into ``site/javascripts/mathjax/`` after every build, and mkdocs.yml loads
``javascripts/mathjax/tex-mml-chtml.js`` (with its fonts beside it).

Where MathJax comes from, first found wins:

1. ``REFATTN_MATHJAX_DIR``: a folder holding MathJax's ``es5`` distribution (``tex-mml-chtml.js``
   and ``output/``), for a machine with no registry at all;
2. ``.cache/mathjax/node_modules/mathjax/es5`` in the checkout (a previous build's install);
3. ``npm install mathjax@MATHJAX_VERSION`` into ``.cache/mathjax`` (the npm registry, once).

With none of these the build stops with a message saying what to install; it never falls back to a
CDN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError

MATHJAX_VERSION = "3.2.2"
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "mathjax"
ENTRY = "tex-mml-chtml.js"


def mathjax_dir() -> Path:
    """The folder of MathJax's ``es5`` distribution, installing it from npm when it is missing."""
    env = os.environ.get("REFATTN_MATHJAX_DIR")
    if env:
        path = Path(env)
        if not (path / ENTRY).is_file():
            raise PluginError(f"REFATTN_MATHJAX_DIR={env}: no {ENTRY} there (expected MathJax 3's es5 folder)")
        return path
    path = CACHE / "node_modules" / "mathjax" / "es5"
    if (path / ENTRY).is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError("the docs serve MathJax themselves: install Node.js with npm (then the build runs "
                          f"'npm install mathjax@{MATHJAX_VERSION}' once), or set REFATTN_MATHJAX_DIR to "
                          "MathJax 3's es5 folder")
    CACHE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--no-save",
                           f"mathjax@{MATHJAX_VERSION}"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (path / ENTRY).is_file():
        raise PluginError(f"npm install mathjax@{MATHJAX_VERSION} failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip()[-500:]}; or set REFATTN_MATHJAX_DIR to MathJax 3's es5 folder")
    return path


def on_post_build(config, **kwargs):
    target = Path(config["site_dir"]) / "javascripts" / "mathjax"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(mathjax_dir(), target)
