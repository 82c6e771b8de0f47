"""The built documentation site: what a reader's browser shows.

- The HTML of every page holds no raw reST (``:func:``, ``.. math::``, ...) and no stray ``$``
  outside code and formulas: every docstring and page is in the Markdown that mkdocs renders.
- In a real browser (headless Chromium driven by Playwright, the site served from localhost, no
  network): every page typesets all its formulas with the MathJax the site serves itself (no raw
  TeX left, no TeX error), throws no JavaScript error, and links only to pages that exist.
  Screenshots of the home page and the Performer page are saved as CI artefacts
  (``REFATTN_ARTIFACTS``, default ``ci-artifacts/``).

The site is built once per session (``mkdocs build --strict``), or taken from ``REFATTN_SITE_DIR``
when CI has built it already. Without mkdocs the module is skipped; without Chromium or Playwright
the browser test is skipped with a message on a developer machine and fails under CI (``CI`` set),
which installs both.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = re.compile(r":(?:math|func|mod|data|class|meth|attr|obj|exc|ref):`"
                 r"|\.\. (?:math|note|warning|seealso|code-block)::|\$")
NO_ELEMENT = {"br", "img", "hr", "input", "meta", "link", "source", "wbr", "area", "base", "col", "embed"}


class _ProseText(HTMLParser):
    """The text a reader sees as prose: outside code, scripts and the formulas arithmatex marks."""

    SKIP = {"code", "pre", "script", "style", "textarea", "svg"}

    def __init__(self):
        super().__init__()
        self.stack, self.chunks = [], []

    def handle_starttag(self, tag, attrs):
        if tag in NO_ELEMENT:
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append(tag in self.SKIP or "arithmatex" in classes)

    def handle_endtag(self, tag):
        if tag not in NO_ELEMENT and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not any(self.stack):
            self.chunks.append(data)


def unrendered(html: str) -> list[str]:
    """Raw reST roles or directives, and ``$`` signs, in the prose of one HTML page, with context."""
    parser = _ProseText()
    parser.feed(html)
    text = " ".join(parser.chunks)
    return [text[max(0, m.start() - 50):m.end() + 50] for m in RAW.finditer(text)]


@functools.lru_cache(maxsize=1)
def _build() -> Path:
    given = os.environ.get("REFATTN_SITE_DIR")
    if given:
        return Path(given)
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    import tempfile

    site = Path(tempfile.mkdtemp(prefix="refattn-site-"))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if proc.returncode != 0 and "serve MathJax themselves" in proc.stderr and not os.environ.get("CI"):
        pytest.skip("the docs build needs npm once to install MathJax (or REFATTN_MATHJAX_DIR); CI has it")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return site


@pytest.fixture(scope="module")
def site():
    return _build()


def _pages(site):
    """Every page of the built site (not 404.html: its links are absolute, for the server's root)."""
    return sorted(p for p in site.rglob("*.html") if "javascripts" not in p.parts and p.name != "404.html")


def test_no_raw_rest_or_stray_dollar_on_any_page(site):
    bad = {str(p.relative_to(site)): found for p in _pages(site) if (found := unrendered(p.read_text(encoding="utf-8")))}
    assert len(_pages(site)) > 50  # the API and tests pages are there
    assert bad == {}


@pytest.mark.parametrize("html,found", [
    ('<p>see :func:`attention`</p>', True),
    ('<p>.. math::</p>', True),
    ('<p>so $x$ renders inline</p>', True),  # arithmatex left it: no span around it
    ('<p>so <span class="arithmatex">\\(x\\)</span> and <code>:func:`a` $</code></p>', False),
    ('<div class="arithmatex">\\[a\\]</div><p>costs 5 dollars</p>', False),
])
def test_the_unrendered_scan_has_power(html, found):
    assert bool(unrendered(html)) is found


# ----------------------------------------------------------------------------- in a browser
def _chromium():
    for name in (os.environ.get("REFATTN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _skip_or_fail(message):
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs it: .ci/run)")
    pytest.skip(message)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory):
    """A static file server for ``directory`` on localhost: yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(site):
    with serve(site) as url:
        yield url


def _target_exists(site, page_rel, href):
    """Whether a same-site link from ``page_rel`` lands on a file of the built site."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return True  # external, or an anchor on the same page (mkdocs --strict checks anchors)
    base = (site / page_rel).parent
    target = (base / unquote(parts.path)).resolve()
    return target.is_file() or (target / "index.html").is_file()


_TYPESET = """async () => {
  if (!window.MathJax || !MathJax.startup) return {mathjax: false};
  await MathJax.startup.promise;
  if (MathJax.typesetPromise) await MathJax.typesetPromise();
  const math = [...document.querySelectorAll('.arithmatex')];
  return {
    mathjax: true,
    formulas: math.length,
    raw: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  };
}"""


def _browser_or_skip():
    chromium = _chromium()
    if chromium is None:
        _skip_or_fail("no Chromium on this machine (apt install chromium, or set REFATTN_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright is not installed (pip install -e '.[docs]')")
    return chromium, sync_playwright


def browse(site, url, pages, screenshots=None):
    """Open each page of ``site`` (served at ``url``) in headless Chromium: ``({page: [problems]},
    number of formulas typeset)``. ``screenshots`` maps a page to a PNG path to save."""
    chromium, sync_playwright = _browser_or_skip()
    problems, formulas = {}, 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        events = []
        page.on("pageerror", lambda e: events.append(f"JavaScript error: {e}"))
        page.on("console", lambda m: events.append(f"console error: {m.text}") if m.type == "error" else None)
        # a request the next navigation cancels (net::ERR_ABORTED) is not the site's fault
        page.on("requestfailed", lambda r: events.append(f"request failed: {r.url} ({r.failure})")
                if "ERR_ABORTED" not in (r.failure or "") else None)
        for path in pages:
            rel = path.relative_to(site)
            events.clear()
            page.goto(f"{url}/{rel.as_posix()}", wait_until="load")
            state = page.evaluate(_TYPESET)
            found = list(events)
            if not state["mathjax"]:
                found.append("MathJax did not load")
            else:
                formulas += state["formulas"]
                found += [f"raw TeX: {t}" for t in state["raw"]] + [f"TeX error: {t}" for t in state["errors"]]
                found += [f"broken link: {h}" for h in state["links"] if not _target_exists(site, rel, h)]
            if found:
                problems[rel.as_posix()] = found
            if screenshots and rel.as_posix() in screenshots:
                page.screenshot(path=str(screenshots[rel.as_posix()]))
        browser.close()
    return problems, formulas


def _has_math(page: Path) -> bool:
    return 'class="arithmatex"' in page.read_text(encoding="utf-8")


#: Folders of pages generated from one template each (docstrings, test modules, gallery scripts).
GENERATED = ("api", "tests", "generated/examples", "generated/tutorials")


def _browsed(site):
    """The pages the default run opens in the browser: every page with a formula, every hand-written
    page, and of the generated pages without formulas one per folder (each folder's pages come from
    one template; their links are checked without a browser, below). The slow run opens all of them."""
    chosen, seen = [], set()
    for p in _pages(site):
        rel = p.relative_to(site).as_posix()
        group = next((g for g in GENERATED if rel.startswith(g + "/")), None)
        if group is None or _has_math(p) or group not in seen:
            chosen.append(p)
            seen.add(group)
    return chosen


def _browse_and_judge(site, served, pages):
    artifacts = Path(os.environ.get("REFATTN_ARTIFACTS", ROOT / "ci-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shots = {"index.html": artifacts / "site-home.png", "performer/index.html": artifacts / "site-performer.png"}
    problems, formulas = browse(site, served, pages, shots)
    assert problems == {}
    assert formulas > 500  # the pages' formulas were found and typeset
    assert all(p.is_file() for p in shots.values())


def test_the_pages_with_formulas_and_every_template_render_in_a_browser(site, served):
    """Headless Chromium: MathJax (served by the site) typesets every formula of every page, no
    TeX error, no JavaScript error or failed request, no link to a missing page."""
    _browse_and_judge(site, served, _browsed(site))


@pytest.mark.slow
def test_every_page_renders_in_a_browser(site, served):
    _browse_and_judge(site, served, _pages(site))


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def test_no_page_links_to_a_missing_page(site):
    """Every same-site link of every page (the browser run opens only some pages) lands on a page."""
    broken = {}
    for page in _pages(site):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        rel = page.relative_to(site)
        bad = [h for h in parser.hrefs if not _target_exists(site, rel, h)]
        if bad:
            broken[rel.as_posix()] = bad
    assert broken == {}


def test_the_link_check_has_power(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<a href="../b/">b</a><a href="../a/">a</a><a href="https://x.org">x</a>')
    parser = _Links()
    parser.feed((tmp_path / "a" / "index.html").read_text())
    assert [h for h in parser.hrefs if not _target_exists(tmp_path, Path("a/index.html"), h)] == ["../b/"]


def test_the_browser_check_has_power(site, tmp_path):
    """Planted defects on pages served with the site's own MathJax: TeX that does not parse, a
    missing page linked, a script that throws, and a page that does not load MathJax at all."""
    (tmp_path / "javascripts").symlink_to(site / "javascripts")
    planted = tmp_path / "planted-defects"
    planted.mkdir()
    head = '<script src="../javascripts/mathjax.js"></script><script src="../javascripts/mathjax/tex-mml-chtml.js"></script>'
    # mathjax.js subscribes to mkdocs-material's document$; a stand-in lets it run outside the theme
    stub = '<script>window.document$ = {subscribe: () => null};</script>'
    (planted / "bad.html").write_text(
        f'<html><head>{stub}{head}</head><body><span class="arithmatex">\\(\\frac{{a}}\\)</span>'
        '<a href="../no-such-page/">x</a><script>undefined_function()</script></body></html>')
    (planted / "nomath.html").write_text('<html><body><p>no MathJax here</p></body></html>')
    with serve(tmp_path) as url:
        problems, _ = browse(tmp_path, url, [planted / "bad.html", planted / "nomath.html"])
    bad = " ".join(problems.get("planted-defects/bad.html", []))
    assert "TeX error" in bad and "broken link: ../no-such-page/" in bad and "JavaScript error" in bad, problems
    assert "MathJax did not load" in problems.get("planted-defects/nomath.html", []), problems
