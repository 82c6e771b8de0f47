"""The documentation site (docs/, mkdocs.yml), checked without mkdocs installed.

- Every formula-to-test link ``[text][proofs_tests.PATH.MODULE.TEST]`` names a test function that
  exists (parsed with ``ast``), in a module the tests page renders (so the link resolves in
  the built site too).
- Every test module is on the tests page; every page is in the nav and every nav entry exists.
- Every section (between headings) of a method page that shows a display formula links to at
  least one test.
- Power: the link checker rejects a planted link to a test that does not exist.
``mkdocs build --strict`` (in .ci/run) checks the rest: every link and reference resolves.
"""

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\[(proofs_tests\.[\w.]+)\]")
METHOD_PAGES = ("exact.md", "performer.md", "lsh.md", "scatterbrain.md", "sea.md", "report.md", "check.md", "testing.md")


@lru_cache(maxsize=None)
def _tests_in(module):
    """Test names in ``proofs_tests/<module with dots as folders>.py``."""
    path = ROOT / "proofs_tests" / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name.startswith("test_"))


def _rendered_modules():
    return {m for page in (DOCS / "tests").glob("*.md")
            for m in re.findall(r"^::: proofs_tests\.([\w.]+)", page.read_text(encoding="utf-8"), re.M)}


def bad_links(markdown):
    """The links in ``markdown`` that do not name a real, rendered test: a list of (link, reason)."""
    rendered = _rendered_modules()
    bad = []
    for ident in LINK.findall(markdown):
        parts = ident.split(".")
        module, test = ".".join(parts[1:-1]), parts[-1]
        if len(parts) < 3 or not test.startswith("test_") or not module.split(".")[-1].startswith("test_"):
            bad.append((ident, "expected proofs_tests.[PATH.]MODULE.TEST"))
        elif test not in _tests_in(module):
            bad.append((ident, f"no test {test} in proofs_tests/{module.replace('.', '/')}.py"))
        elif module not in rendered:
            bad.append((ident, f"proofs_tests.{module} is not rendered on the tests pages (docs/tests/)"))
    return bad


def _pages():
    return sorted(DOCS.rglob("*.md"))


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_test_link_resolves(page):
    text = page.read_text(encoding="utf-8")
    assert bad_links(text) == []


def test_there_are_links_on_every_method_page():
    counts = {p: len(LINK.findall((DOCS / p).read_text(encoding="utf-8"))) for p in METHOD_PAGES}
    assert all(counts.values()), counts


def test_the_link_checker_has_power():
    planted = ("[`x`][proofs_tests.evaluation.test_report.test_no_such_thing] [`y`][proofs_tests.test_nowhere.test_a] "
               "[`z`][proofs_tests.evaluation.test_report] [`ok`][proofs_tests.evaluation.test_report.test_bad_arguments]")
    reasons = [r for _, r in bad_links(planted)]
    assert len(reasons) == 3 and "no test test_no_such_thing" in reasons[0], reasons


def test_every_test_module_is_on_the_tests_page():
    tests = ROOT / "proofs_tests"
    modules = {".".join(p.relative_to(tests).with_suffix("").parts) for p in tests.rglob("test_*.py")}
    assert modules - _rendered_modules() == set(), "run python scripts/docs_pages.py"


def test_the_generated_reference_pages_are_current():
    """The API pages (one per public module), the tests pages (one per folder) and their nav entries
    are what scripts/docs_pages.py generates from the package and proofs_tests as they are now."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_pages.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nrun python scripts/docs_pages.py"


def test_nav_and_pages_agree():
    nav = re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert nav and len(nav) == len(set(nav))
    generated = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "generated" not in p.parts}
    assert set(nav) == generated


def _sections(text):
    """Split a page at its headings (outside code fences)."""
    sections, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#") and current:
            sections.append("\n".join(current))
            current = []
        current.append(line)
    sections.append("\n".join(current))
    return sections


@pytest.mark.parametrize("page", METHOD_PAGES)
def test_every_displayed_formula_links_to_a_test(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = [s.splitlines()[0] for s in _sections(text) if "$$" in s and not LINK.search(s)]
    assert missing == [], f"{page}: sections with a display formula and no test link: {missing}"


def test_display_math_stands_in_its_own_paragraph():
    """A one-line display (double dollar signs) needs a blank line before and after it, or Markdown keeps it inside
    the paragraph and it renders inline with stray dollar signs."""
    bad = []
    for page in _pages():
        lines = page.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            s = line.strip()
            if s.startswith("$$") and s.endswith("$$") and len(s) > 4:
                if (i and lines[i - 1].strip()) or (i + 1 < len(lines) and lines[i + 1].strip()):
                    bad.append(f"{page.name}:{i + 1}")
    assert bad == [], bad
