"""The layout's rules, checked on the source (docs/architecture.md):

1. no import cycle among refattn's modules, at module level or inside functions;
2. nothing under ``refattn/kernels/`` imports from the layers above it;
3. one test file per module, named after it (``refattn/a/b.py`` -> ``proofs_tests/a/test_b.py``);
4. nothing in the package names the project's history (issue numbers);
5. one precision module: only ``refattn/precision.py`` imports ``ml_dtypes``, reads ``finfo`` or rounds
   an array to a low-precision format (``astype`` to float16, bfloat16 or FP8), and only it defines
   the reference at a precision.

Each rule's checker is shown to fail on a planted violation (its power twin).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refattn"
TESTS = ROOT / "proofs_tests"


def modules(package: Path) -> dict:
    """Dotted module name -> (path, is_package) for every ``.py`` file below ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(package: Path) -> dict:
    """Module -> the set of the package's modules it imports, anywhere in its source (functions too).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    mods = modules(package)
    root = package.name

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_pkg) in mods.items():
        base = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    mod = parent + ("." + node.module if node.module else "")
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            for target in targets:
                if target.split(".")[0] == root:
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None (iterative depth-first search)."""
    state = {}  # 1: on the current path, 2: done
    for start in graph:
        if state.get(start):
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def upward_kernel_imports(graph: dict, kernels="refattn.kernels"):
    """Edges from a module under ``kernels`` to a module outside it."""
    return sorted((a, b) for a, edges in graph.items() if a == kernels or a.startswith(kernels + ".")
                  for b in edges if not (b == kernels or b.startswith(kernels + ".")))


def missing_test_files(package: Path, tests: Path):
    """Modules without their test file (``__init__``, ``__main__`` and private ``_*.py`` modules need none)."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        rel = path.relative_to(package)
        expected = tests / rel.parent / f"test_{rel.stem}.py"
        if not expected.exists():
            missing.append(str(expected.relative_to(tests.parent)))
    return missing


HISTORY = re.compile(r"\bissues? #?\d+\b|\(issue \d+\)", re.IGNORECASE)
#: files a reader does not have: the team's internal notes, and the papers' numbered seed abstracts
INTERNAL = re.compile(r"\b(?:MATH|DESIGN|STYLE)\.md\b|\bshared/|\bseeds? 0\d\d\b", re.IGNORECASE)


def history_mentions(package: Path, pattern=HISTORY, suffixes=(".py",)):
    """``file:line`` of every line under ``package`` (a folder or one file) that ``pattern`` finds:
    by default a mention of a project issue number in the source."""
    files = [package] if package.is_file() else sorted(p for p in package.rglob("*") if p.suffix in suffixes)
    return [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]


LOW_FORMATS = re.compile(r"float16|bfloat16|float8|_DTYPES\[|as_dtype\(")


def precision_handling(package: Path, home="precision.py"):
    """``file:line: what`` for every place outside ``home`` that parses or rounds precisions itself:
    an ``ml_dtypes`` import, a ``finfo`` call, an ``astype`` to a low-precision format, a function
    named ``*kernel_reference*``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == home:
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            what = None
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ml_dtypes" for a in node.names):
                what = "imports ml_dtypes"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ml_dtypes":
                what = "imports ml_dtypes"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "finfo":
                    what = "reads finfo"
                elif node.func.attr == "astype" and node.args and LOW_FORMATS.search(ast.unparse(node.args[0])):
                    what = f"rounds by astype({ast.unparse(node.args[0])})"
            elif isinstance(node, ast.FunctionDef) and "kernel_reference" in node.name:
                what = f"defines {node.name}"
            if what:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}: {what}")
    return found


# ----------------------------------------------------------------------------- the rules on refattn
def test_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["refattn.exact"]  # the graph was really built
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_kernels_import_nothing_above_them():
    graph = import_graph(PACKAGE)
    assert any(a.startswith("refattn.kernels.") for a in graph)
    assert upward_kernel_imports(graph) == []


def test_one_test_file_per_module():
    assert missing_test_files(PACKAGE, TESTS) == []


def test_one_precision_module():
    assert precision_handling(PACKAGE) == []


def test_the_package_names_no_issue_numbers():
    assert history_mentions(PACKAGE) == []


READER_FACING = ("refattn", "docs", "examples", "tutorials", "benchmarks", "scripts", "README.md", "mkdocs.yml")


def test_every_reference_resolves_for_a_reader():
    """No docstring, doc page, example, tutorial, script or README points at an issue number or at
    files a reader does not have (internal notes, seed abstracts): formulas cite the paper and the
    docs page. Benchmark result files are records of past runs and are not scanned."""
    found = []
    for name in READER_FACING:
        path = ROOT / name
        found += history_mentions(path, INTERNAL, (".py", ".md", ".yml", ".json"))
        found += [f for f in history_mentions(path, HISTORY, (".py", ".md", ".yml")) if "/generated/" not in f]
    assert found == []


def test_the_cli_output_names_no_internal_file():
    """Every command's --help, and `refattn info`, in words a reader can follow."""
    import contextlib
    import io

    from refattn.cli import main

    text = []
    for argv in (["--help"], ["report", "--help"], ["theory", "--help"], ["check", "--help"], ["bench", "--help"],
                 ["info", "--help"], ["info"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            main(argv)
        text.append(buf.getvalue())
    out = "\n".join(text)
    assert len(out) > 2000 and not INTERNAL.search(out) and not HISTORY.search(out)


# ----------------------------------------------------------------------------- power twins
def _write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / next(iter(files)).split("/")[0]


def test_a_second_precision_home_is_found(tmp_path):
    pkg = _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/precision.py": "import ml_dtypes\nimport numpy as np\nE = np.finfo(np.float16).eps\n",
        "toy/kernel.py": "import numpy as np\n\ndef f(x):\n    return x.astype(np.float16)\n",
        "toy/other.py": "from ml_dtypes import bfloat16\n\ndef my_kernel_reference(q):\n    return np.finfo(q.dtype)\n",
    })
    found = precision_handling(pkg)
    assert len(found) == 4 and not any("precision.py" in f for f in found), found


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/a.py": "from toy.b import g\n",
        "toy/b.py": "def g():\n    from toy import a\n    return a\n",
        "toy/c.py": "import toy.a\n",
    })
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and set(cycle) == {"toy.a", "toy.b"}


def test_an_upward_kernel_import_is_found(tmp_path):
    pkg = _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/exact.py": "X = 1\n",
        "toy/kernels/__init__.py": "",
        "toy/kernels/fast.py": "from toy.kernels import slow\n",
        "toy/kernels/slow.py": "def f():\n    from toy.exact import X\n    return X\n",
    })
    assert upward_kernel_imports(import_graph(pkg), kernels="toy.kernels") == [("toy.kernels.slow", "toy.exact")]


def test_a_module_without_its_test_file_is_found(tmp_path):
    pkg = _write(tmp_path, {"toy/__init__.py": "", "toy/fam/__init__.py": "", "toy/fam/est.py": "", "toy/_priv.py": ""})
    tests = tmp_path / "tests"
    (tests / "fam").mkdir(parents=True)
    assert missing_test_files(pkg, tests) == ["tests/fam/test_est.py"]
    (tests / "fam" / "test_est.py").write_text("")
    assert missing_test_files(pkg, tests) == []


@pytest.mark.parametrize("line,found", [("# SEA (issue 6)", True), ("the goals of issue 10", True),
                                        ("see issues 2 and 3", True), ("tissue 4", False), ("an issue", False)])
def test_history_mentions_are_found(tmp_path, monkeypatch, line, found):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    pkg = _write(tmp_path, {"toy/__init__.py": f"{line}\n"})
    assert bool(history_mentions(pkg)) is found


@pytest.mark.parametrize("line,found", [("see MATH.md section 4", True), ("shared/DESIGN.md", True),
                                        ("STYLE.md section 1", True), ("the abstract (seed 002)", True),
                                        ("the docs' Performer page", False), ("seeded with 0", False),
                                        ("a seed of 0", False)])
def test_internal_references_are_found(tmp_path, monkeypatch, line, found):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(f"{line}\n")
    assert bool(history_mentions(tmp_path / "docs", INTERNAL, (".md",))) is found


# ----------------------------------------------------------------------------- one implementation vocabulary
def _public_callables():
    import importlib
    import inspect

    for name in sorted(modules(PACKAGE)):
        if any(part.startswith("_") for part in name.split(".")) or ".kernels" in name or ".check" in name:
            continue
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if inspect.isfunction(obj) and obj.__module__ == name:
                yield f"{name}.{attr}", inspect.signature(obj)


def test_every_implementation_switch_defaults_to_auto():
    """One vocabulary: every public ``*implementation`` keyword defaults to "auto"."""
    switches = {(f, p.name): p.default for f, sig in _public_callables() for p in sig.parameters.values()
                if p.name.endswith("implementation")}
    assert len(switches) >= 10, switches  # the walk found them
    assert {k: v for k, v in switches.items() if v != "auto"} == {}


def test_choose_implementation_resolves_and_names_the_argument(monkeypatch):
    from refattn._validation import choose_implementation

    allowed = ("auto", "numpy", "numba", "cuda")
    assert choose_implementation("numpy", allowed) == "numpy"
    assert choose_implementation("auto", ("auto", "numpy", "dense")) == "numpy"
    monkeypatch.setenv("REFATTN_DISABLE_NUMBA", "1")
    assert choose_implementation("auto", allowed) == "numpy" and choose_implementation("numba", allowed) == "numpy"
    monkeypatch.delenv("REFATTN_DISABLE_NUMBA")
    assert choose_implementation("auto", allowed) == "numba"
    for bad in ("naive", "chunked", None, 3):
        with pytest.raises(ValueError, match="^sparse_implementation: expected one of"):
            choose_implementation(bad, allowed, name="sparse_implementation")
    with pytest.raises(ValueError, match="^implementation: 'cuda' needs CuPy arrays"):
        choose_implementation("cuda", allowed)
