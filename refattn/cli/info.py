"""``refattn info``: versions and usable backends ([`refattn.info`][refattn.info])."""

from __future__ import annotations

import json

from refattn.info import collect_info, format_info


def add_parser(sub):
    inf = sub.add_parser("info", help="versions and usable backends (Numba, CuPy, GPU, nvcc)")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=run)
    return inf


def run(args) -> int:
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


