"""Mutation testing of refattn's theory-bearing modules: plant one-line faults, run the tests that
cover each module, report killed / survived / timed out.

Usage (from the repository root; not part of the default test run):

    python scripts/mutation.py                      # the default sample (6 mutants per module, seed 0)
    python scripts/mutation.py --per-module 10 --seed 3 --jobs 2 --out benchmarks/results/mutation.json
    python scripts/mutation.py --list               # the mutants it would run, without running them
    python scripts/mutation.py --modules refattn/stats.py --per-module 0   # every mutant of one module

Why a script and not mutmut / cosmic-ray: both mutate every occurrence of every operator and run
the whole suite per mutant (thousands of mutants, ~4 minutes each here, Numba recompiling the
mutated module every time). This harness keeps their method and drops the cost:

- **Operators** (the classic set, applied to the AST of function bodies): arithmetic swap
  (``+ <-> -``, ``* <-> /``, ``** -> *``), comparison boundary (``< <-> <=``, ``> <-> >=``,
  ``== <-> !=``), numeric constant (``c -> c + 1`` for integers, ``c -> 2c`` for floats, ``0.0 ->
  1.0``), sign removal (``-x -> x``), ``min <-> max`` (builtins and NumPy), ``and <-> or``.
  Not mutated: docstrings, ``raise`` statements and guards whose body only raises (input
  validation: the bad-input and fuzz suites test those), ``__all__`` and imports.
- **Sampling, not choosing**: every candidate mutant of a module is enumerated and a seeded
  random sample of ``--per-module`` is run, so the score estimates the module's, and the sample
  is not picked by the person whose tests are being judged.
- **Covering tests**: a module's own test file (``refattn/a/b.py -> proofs_tests/a/test_b.py``,
  the layout rule) plus the files listed in :data:`EXTRA_TESTS`; ``pytest -x``, the default
  markers (no slow tests). A mutant that runs 10x longer than the unmutated tests (at least
  60 s, at most ``--timeout``) is stopped and counted as timed out (killed: the suite notices).
- **Equivalent mutants** are listed in :data:`EQUIVALENT` with the argument why no test can
  kill them (docs/mutation.md); the score is killed / (run - equivalent).

Each worker runs in its own copy of the repository (``git ls-files``), with its own Numba cache.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The modules that carry theory (formulas, estimators, kernels, verdicts).
MODULES = [
    "refattn/performer/projections.py",
    "refattn/performer/features.py",
    "refattn/performer/attention.py",
    "refattn/performer/theory.py",
    "refattn/exact.py",
    "refattn/kernels/numba/streaming.py",
    "refattn/lsh/hashes.py",
    "refattn/lsh/sparse.py",
    "refattn/lsh/theory.py",
    "refattn/kernels/numba/sparse_attention.py",
    "refattn/scatterbrain/attention.py",
    "refattn/scatterbrain/rpca.py",
    "refattn/sea/estimate.py",
    "refattn/sea/mask.py",
    "refattn/sea/decoder.py",
    "refattn/stats.py",
    "refattn/check/verdict.py",
]

#: Test files beyond the module's own that exercise it (its callers' tests).
EXTRA_TESTS = {
    "refattn/performer/features.py": ["proofs_tests/test_montecarlo.py", "proofs_tests/performer/test_attention.py"],
    "refattn/performer/attention.py": ["proofs_tests/evaluation/test_methods.py"],
    "refattn/scatterbrain/attention.py": ["proofs_tests/evaluation/test_methods.py"],
    "refattn/performer/projections.py": ["proofs_tests/performer/test_features.py"],
    "refattn/performer/theory.py": ["proofs_tests/test_theory.py", "proofs_tests/performer/test_features.py",
                                    "proofs_tests/performer/test_attention.py"],
    "refattn/exact.py": ["proofs_tests/test_mpmath_oracle.py", "proofs_tests/test_bad_input.py"],
    "refattn/kernels/numba/streaming.py": ["proofs_tests/test_exact.py", "proofs_tests/test_mpmath_oracle.py"],
    "refattn/lsh/theory.py": ["proofs_tests/lsh/test_hashes.py"],
    "refattn/kernels/numba/sparse_attention.py": ["proofs_tests/lsh/test_sparse.py"],
    "refattn/scatterbrain/rpca.py": [],
    "refattn/sea/estimate.py": ["proofs_tests/sea/test_attention.py"],
    "refattn/sea/mask.py": ["proofs_tests/sea/test_attention.py"],
    "refattn/sea/decoder.py": ["proofs_tests/sea/test_attention.py"],
    "refattn/stats.py": ["proofs_tests/test_testing.py"],
    "refattn/check/verdict.py": ["proofs_tests/check/test_projection.py", "proofs_tests/check/test_kernel.py"],
}

#: (module, source line, before, after) -> why no test can kill it (docs/mutation.md has the arguments
#: and the measurements). Keyed by the line's text, not its number, so edits elsewhere keep the key.
EQUIVALENT: dict[tuple, str] = {
    ("refattn/performer/features.py", "return np.zeros(logf.shape[:-2] + (1, 1))", "2", "3"):
        "the shift of an empty key set is subtracted from an empty array: any broadcastable shape gives "
        "the same (empty) result",
    ("refattn/scatterbrain/attention.py",
     "out = np.where(degenerate[:, None], 0.0, num / np.where(degenerate, 1.0, den)[:, None])", "1.0", "2.0"):
        "the placeholder divisor of degenerate rows, whose output np.where replaces by 0 whatever it is",
    ("refattn/sea/estimate.py", "e = np.exp(z - np.where(np.isfinite(zmax), zmax, 0.0))", "0.0", "1.0"):
        "the placeholder shift of rows whose logits are all -inf: exp(-inf - c) = 0 for every finite c",
    ("refattn/stats.py", "chunk = max(1, int(4e6 // max(1, flat.size)))",
     "max(1, int(4000000.0 // max(1, flat.size)))", "min(1, int(4000000.0 // max(1, flat.size)))"):
        "the bootstrap's batch size: Generator.integers yields the same stream in batches of 1 or of "
        "many, so the intervals are identical (measured: max difference 0.0); only memory and time change",
    ("refattn/stats.py", "chunk = max(1, int(4e6 // max(1, flat.size)))", "max(1, flat.size)", "min(1, flat.size)"):
        "the bootstrap's batch size again (the divisor of the memory budget): same stream, same intervals",
    ("refattn/kernels/numba/sparse_attention.py", "m = np.full(T, -np.inf)", "-np.inf", "np.inf"):
        "the initial row maximum of empty rows, which np.where(np.isfinite(m), m, 0.0) replaces by 0 before use",
    ("refattn/sea/mask.py", "zeros = np.zeros((prob.S, 1))", "1", "2"):
        "the placeholder values passed to the kernels only for their log-sum-exp, which does not read v",
    ("refattn/scatterbrain/rpca.py", "mu_max = 1e7 * mu", "10000000.0", "20000000.0"):
        "a tuning cap (Lin et al. 2010) reached only after log(1e7)/log(1.5) = 40 iterations; the planted "
        "problems converge in <= 10 and give identical L (measured); not a fault a test can define",
    ("refattn/scatterbrain/rpca.py", "Y = M / max(two, np.abs(M).max() / lam)",
     "M / max(two, np.abs(M).max() / lam)", "M * max(two, np.abs(M).max() / lam)"):
        "the starting dual of the ALM (Lin et al. 2010 start from M / J(M)); the iteration converges to "
        "the same PCP solution from this start too: the recovery, KKT-certificate and equivariance tests "
        "pass unchanged (measured), only the path differs",
    ("refattn/scatterbrain/rpca.py", "Y = M / max(two, np.abs(M).max() / lam)", "np.abs(M).max()", "np.abs(M).min()"):
        "the same starting dual, scaled differently: same argument and measurement as above",
    ("refattn/performer/features.py",
     "rho = np.where(sy > 0, np.sum(x * y, -1) / np.where(sy > 0, sy, 1), 0.0)  # x.y / |y|", "1", "2"):
        "the placeholder divisor of rows with y = 0, whose rho the outer np.where sets to 0.0 anyway",
    ("refattn/sea/decoder.py", "teacher = teacher.reshape(-1, T, n_bins)", "1", "2"):
        "reshape(-2, T, n_bins): NumPy infers a negative dimension whatever its value, so the array is the same",
    ("refattn/performer/projections.py", "return H / np.sqrt(p)", "H / np.sqrt(p)", "H * np.sqrt(p)"):
        "the Hadamard matrix's scale: SORF renormalises every row to its own chi_d norm afterwards",
    ("refattn/performer/projections.py", "rownorm[rownorm == 0] = 1.0", "1.0", "2.0"):
        "the placeholder norm of an all-zero row, which stays zero whatever it is divided by",
    ("refattn/performer/projections.py", "Q = Q * sgn[:, None, :]", "Q * sgn[:, None, :]", "Q / sgn[:, None, :]"):
        "sgn = sign(R_jj) is +-1 (R_jj = 0 has probability zero): dividing by it is multiplying by it",
    ("refattn/performer/theory.py", "if n > 2 * w + 10 and t < peak and math.exp(t) < rtol * total:", "t < peak",
     "t <= peak"):
        "at t = peak the last condition fails anyway: the largest term is at least total / (n + 1), far above "
        "rtol * total",
    ("refattn/kernels/numba/sparse_attention.py", "if x > m:", "x > m", "x >= m"):
        "on a tie the online softmax rescales by exp(m - x) = 1 exactly: the same sums",
    ("refattn/scatterbrain/rpca.py", "if time.monotonic() - start > time_limit:", "time.monotonic() - start > time_limit",
     "time.monotonic() - start >= time_limit"):
        "equality of two clock readings to the last bit: a boundary no test can reach",
    ("refattn/sea/mask.py",
     "qh = np.broadcast_to(prob.q, (N, prob.T, prob.H)) if prob.q.ndim == 3 or N > 1 else prob.q[None]",
     "N > 1", "N >= 1"):
        "at N = 1 broadcasting q to (1, T, H) and q[None] are the same array",
    ("refattn/sea/mask.py", "if np.abs(sums - want).max(initial=0.0) > 1e-9:",
     "np.abs(sums - want).max(initial=0.0) > 1e-09", "np.abs(sums - want).max(initial=0.0) >= 1e-09"):
        "a row sum off by exactly 1e-9: a tolerance boundary no input can be built to hit",
    ("refattn/sea/mask.py", "K = est.shape[-1]", "-1", "1"):
        "est is checked to be (T, K) on the next line, where shape[1] is shape[-1]",
    ("refattn/check/verdict.py", "return json.dumps(self.to_dict(), indent=2)", "2", "3"):
        "JSON indentation: every parser reads the same object; whitespace is not part of the report's contract",
}


@dataclass
class Mutant:
    module: str
    index: int  # position among the module's candidates (stable for a given source)
    line: int
    operator: str
    before: str
    after: str
    source_line: str = ""  # the mutated line's text (stripped), as enumerated
    status: str = "not run"  # killed | survived | timeout | equivalent
    seconds: float = 0.0
    detail: str = ""

    @property
    def id(self) -> str:
        return f"{self.module}:{self.line}:{self.operator}:{self.before} -> {self.after}"

    @property
    def key(self) -> tuple:
        """``(module, source line, before, after)``: the :data:`EQUIVALENT` key."""
        return self.module, self.source_line, self.before, self.after


_SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult}
_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_SWAP_NAME = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax", "amax": "amin"}


def _skipped_nodes(tree) -> set[int]:
    """ids of nodes not to mutate: docstrings, raise statements, guards that only raise, asserts,
    imports and ``__all__``."""
    skip: set[int] = set()

    def mark(node):
        for sub in ast.walk(node):
            skip.add(id(sub))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            mark(body[0])
        if isinstance(node, (ast.Raise, ast.Assert, ast.Import, ast.ImportFrom)):
            mark(node)
        if isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body):
            mark(node.test)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            mark(node)
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.Call):  # the validation helpers' arguments (bounds, names)
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if fname.startswith(("check_", "as_float_array", "as_index_array", "as_dtype_arg", "_check")):
                mark(node)
    return skip


def _in_function(tree) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    inside.add(id(sub))
    return inside


def _candidates(tree):
    """Yield (node path index, operator name, mutate(node) -> bool) for every mutable node."""
    skip, inside = _skipped_nodes(tree), _in_function(tree)
    for i, node in enumerate(ast.walk(tree)):
        if id(node) in skip or id(node) not in inside:
            continue
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAP_BIN:
            if not any(isinstance(o, ast.Constant) and isinstance(o.value, str)
                       for o in (getattr(node, "left", None), getattr(node, "right", None), node)):
                yield i, "arithmetic"  # (string concatenation and repetition are not arithmetic)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAP_CMP:
            yield i, "comparison"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            yield i, "constant"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield i, "sign"
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in _SWAP_NAME:
                yield i, "min-max"
        elif isinstance(node, ast.BoolOp):
            yield i, "boolean"


def _mutate(node, operator):
    """Mutate ``node`` in place; return the replacement node (for a sign removal, the operand)."""
    if operator == "arithmetic":
        node.op = _SWAP_BIN[type(node.op)]()
    elif operator == "comparison":
        node.ops = [_SWAP_CMP[type(node.ops[0])]()]
    elif operator == "constant":
        v = node.value
        node.value = v + 1 if isinstance(v, int) else (1.0 if v == 0 else 2 * v)
    elif operator == "sign":
        return node.operand
    elif operator == "min-max":
        f = node.func
        if isinstance(f, ast.Name):
            f.id = _SWAP_NAME[f.id]
        else:
            f.attr = _SWAP_NAME[f.attr]
    elif operator == "boolean":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    return node


def _replace(tree, target, new):
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for j, item in enumerate(value):
                    if item is target:
                        value[j] = new
                        return


def enumerate_mutants(module: str) -> list[Mutant]:
    source = (ROOT / module).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []
    for index, operator in _candidates(tree):
        node = list(ast.walk(tree))[index]
        before = ast.unparse(node)
        clone = copy.deepcopy(node)
        after = ast.unparse(_mutate(clone, operator))
        out.append(Mutant(module, index, node.lineno, operator, before[:80], after[:80],
                          lines[node.lineno - 1].strip()))
    return out


def mutated_source(m: Mutant, source: str) -> str:
    """``source`` (the module as enumerated) with mutant ``m`` applied."""
    tree = ast.parse(source)
    node = list(ast.walk(tree))[m.index]
    new = _mutate(node, m.operator)
    if new is not node:
        _replace(tree, node, new)
    return ast.unparse(tree) + "\n"


def covering_tests(module: str) -> list[str]:
    parts = Path(module).with_suffix("").parts[1:]  # drop "refattn"
    own = Path("proofs_tests", *parts[:-1], f"test_{parts[-1]}.py")
    tests = [str(own)] if (ROOT / own).exists() else []
    return tests + [t for t in EXTRA_TESTS.get(module, []) if t not in tests]


def _worker_copy() -> Path:
    d = Path(tempfile.mkdtemp(prefix="refattn-mutation-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, d / f)
    return d


def _pytest(copy_root: Path, tests, timeout):
    env = dict(os.environ, PYTHONPATH=str(copy_root), NUMBA_CACHE_DIR=str(copy_root / ".numba-cache"),
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy_root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")]
    return ("survived" if r.returncode == 0 else "killed"), time.perf_counter() - t0, (last[0] if last else
                                                                                       r.stdout[-200:])


def run(mutants, *, jobs, timeout, progress=True):
    pool_dirs = [_worker_copy() for _ in range(jobs)]
    free = list(pool_dirs)
    import threading

    lock = threading.Lock()
    done = [0]
    base_seconds: dict[str, float] = {}

    def one(m: Mutant):
        if m.key in EQUIVALENT:
            m.status, m.detail = "equivalent", EQUIVALENT[m.key]
            return m
        with lock:
            d = free.pop()
        target = d / m.module
        original = target.read_text()
        try:
            target.write_text(mutated_source(m, original))
            limit = min(timeout, max(60.0, 10 * base_seconds[m.module]))  # 10x the unmutated run
            m.status, m.seconds, m.detail = _pytest(d, covering_tests(m.module), limit)
        finally:
            target.write_text(original)
            with lock:
                free.append(d)
                done[0] += 1
                if progress:
                    print(f"[{done[0]}/{len(mutants)}] {m.status:9s} {m.seconds:6.1f}s  {m.id}\n      {m.detail[:150]}",
                          flush=True)
        return m

    try:
        # the baseline: every module's covering tests pass unmutated (else a "kill" means nothing)
        modules = sorted({m.module for m in mutants})
        with ThreadPoolExecutor(jobs) as ex:
            base = list(ex.map(lambda mod: (mod, _pytest(pool_dirs[0], covering_tests(mod), timeout)), modules))
        broken = [f"{mod}: {status} {detail}" for mod, (status, _, detail) in base if status != "survived"]
        if broken:
            raise SystemExit("baseline: the covering tests fail without a mutant:\n" + "\n".join(broken))
        base_seconds.update({mod: sec for mod, (_, sec, _) in base})
        if progress:
            print("baseline passes: " + ", ".join(f"{mod} {sec:.0f}s" for mod, (_, sec, _) in base), flush=True)
        with ThreadPoolExecutor(jobs) as ex:
            return list(ex.map(one, mutants))
    finally:
        for d in pool_dirs:
            shutil.rmtree(d, ignore_errors=True)


def summarize(mutants) -> dict:
    count = {s: sum(m.status == s for m in mutants) for s in ("killed", "survived", "timeout", "equivalent")}
    scored = count["killed"] + count["survived"] + count["timeout"]
    score = (count["killed"] + count["timeout"]) / scored if scored else float("nan")
    return {"mutants": len(mutants), **count, "score": score}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", nargs="+", default=MODULES, help="modules to mutate (default: the theory set)")
    p.add_argument("--per-module", type=int, default=6, help="mutants sampled per module (0: all)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (each its own repository copy)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant before it counts as timed out")
    p.add_argument("--list", action="store_true", help="print the sampled mutants and exit")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.add_argument("--rescore", type=Path, metavar="JSON",
                   help="re-read a results file, apply the current EQUIVALENT list, print the summary")
    a = p.parse_args(argv)
    if a.rescore:
        data = json.loads(a.rescore.read_text())
        fields = {f for f in Mutant.__dataclass_fields__}
        results = [Mutant(**{k: v for k, v in m.items() if k in fields}) for m in data["mutants"]]
        for m in results:
            if m.status == "survived" and m.key in EQUIVALENT:
                m.status, m.detail = "equivalent", EQUIVALENT[m.key]
        summary = {**data["summary"], **summarize(results), "rescored": True}
        print(json.dumps(summary, indent=2))
        for m in results:
            if m.status in ("survived", "timeout"):
                print(f"{m.status.upper()}: {m.id}")
        if a.out:
            a.out.write_text(json.dumps({"summary": summary, "mutants": [asdict(m) | {"id": m.id} for m in results]},
                                        indent=1) + "\n")
        return 0
    if a.per_module < 0 or a.jobs < 1 or a.timeout <= 0:
        p.error("--per-module must be >= 0, --jobs >= 1, --timeout > 0")
    sample = []
    for module in a.modules:
        if not (ROOT / module).is_file():
            p.error(f"--modules: no file {module}")
        every = enumerate_mutants(module)
        rnd = random.Random(f"{a.seed}:{module}")
        sample += every if a.per_module == 0 else rnd.sample(every, min(a.per_module, len(every)))
    if a.list:
        for m in sample:
            print(m.id)
        print(f"{len(sample)} mutants")
        return 0
    t0 = time.time()
    results = run(sample, jobs=a.jobs, timeout=a.timeout)
    summary = summarize(results)
    summary.update(seed=a.seed, per_module=a.per_module, seconds=round(time.time() - t0, 1),
                   load_average=os.getloadavg())
    print(json.dumps(summary, indent=2))
    for m in results:
        if m.status in ("survived", "timeout"):
            print(f"{m.status.upper()}: {m.id}")
    if a.out:
        a.out.write_text(json.dumps({"summary": summary, "mutants": [asdict(m) | {"id": m.id} for m in results]},
                                    indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
