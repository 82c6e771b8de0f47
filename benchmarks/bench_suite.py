"""The whole suite: every method of the registry (refattn.evaluation.methods) at budget 128, T = 1024
.. 65536 (131072 for the streaming oracle; each method up to its own max_T), H = 64, float64 and
float32, with the GEMM rate measured in the same run, judged by the goals in goals.json.

    python benchmarks/bench_suite.py [--quick] [any `refattn bench` option]

Writes results/suite.json and results/suite.png (results/suite_quick.* with --quick) and
prints the tables, the fitted exponents and the goals of goals.json. The same run is
``refattn bench --out ... --plot ...``; this script only fixes where the files go.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    from refattn.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    stem = "suite_quick" if "--quick" in argv else "suite"
    out = [] if "--out" in argv else ["--out", str(HERE / "results" / f"{stem}.json")]
    try:
        import matplotlib  # noqa: F401

        plot = [] if "--plot" in argv else ["--plot", str(HERE / "results" / f"{stem}.png")]
    except ImportError:
        plot = []
    goals = [] if "--goals" in argv else ["--goals", str(HERE / "goals.json")]
    return cli_main(["bench", *out, *plot, *goals, *argv])


if __name__ == "__main__":
    sys.exit(main())
