"""refattn against the tools a user would pick instead, in one process: torch SDPA, performer-pytorch,
reformer-pytorch, plus the sparse kernel against the GEMM rate and the Monte Carlo engine against a
NumPy loop. The same as ``refattn bench --peers``; see refattn.bench.peers for the method.

    pip install -e '.[peers,plots]'
    python benchmarks/peers.py [--quick] [--lengths 4096,16384,65536] [--families exact,reformer]

Writes results/peers.json, results/peers.png and results/peers.txt (the table and the goals).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refattn.cli import main as cli_main

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T = 256, 512, one repeat (a smoke run)")
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--families", help="a comma-separated subset: exact, performer, reformer, sparse, montecarlo")
    ap.add_argument("--repeats", default="3")
    ap.add_argument("--name", default="peers", help="results/NAME.json, .png, .txt")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure nothing but every point's peak memory again, into the saved results/NAME.json")
    args = ap.parse_args(argv)
    out = HERE / "results" / args.name
    if args.memory_only:
        import json

        from refattn.bench.peers import add_peak_memory

        run = add_peak_memory(json.loads(Path(f"{out}.json").read_text()), progress=print)
        Path(f"{out}.json").write_text(json.dumps(run, indent=1))
        return _table(out)
    cmd = ["bench", "--peers", "--peer-lengths", args.lengths, "--repeats", args.repeats,
           "--out", f"{out}.json", "--plot", f"{out}.png"]
    if args.quick:
        cmd.append("--quick")
    if args.families:
        cmd += ["--peer-families", args.families]
    code = cli_main(cmd)
    return _table(out) if code == 0 else code


def _table(out) -> int:
    """results/NAME.txt: the table and goals, re-derived from the JSON (and the plot redrawn)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(["bench", "--peers", "--from-json", f"{out}.json", "--plot", f"{out}.png"])
    Path(f"{out}.txt").write_text(buf.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main())
