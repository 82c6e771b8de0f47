"""The rule audit: which rule catches which real bug, and each rule's false alarms.

Every bug of `refattn.check.bugs.BUGS` and every correct kernel of `CORRECT_KERNELS` is checked by
`refattn check` at its defaults (the `tiles` sizes) on ``--seeds`` seeds; every call the checker
makes is also judged by the anchors' rules of `refattn.check.rules.ANCHOR_RULES` (flash-attention's,
FlexAttention's, fixed tolerances 1e-2 and 1e-3, cosine similarity > 0.99). A run fails a rule when
any output of any call fails it. Writes the counts (and the load average) as JSON and prints the
table in markdown.

    python scripts/rule_audit.py [--seeds 30] [--only NAME] [--out benchmarks/results/rule_audit.json]

With PyTorch installed, torch's ``scaled_dot_product_attention`` (the CPU kernels, through
`refattn.check.adapters`) is audited too, forward at four precisions and backward at two, as a
correct implementation; with JAX, ``jax.nn.dot_product_attention`` at float32 and bfloat16. ``--only`` measures the entries whose name contains NAME and merges
their rows into the existing file (marked ``remeasured``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def entries():
    """name -> (fn, kind, options, bug-or-None): the catalogue at each precision it names, and the correct kernels."""
    from refattn.check.bugs import BUGS, CORRECT_KERNELS, stored_in

    out = {}
    for name, b in CORRECT_KERNELS.items():
        out[name] = (b.fn, b.kind, b.options, None)
    for name, b in BUGS.items():
        out[name] = (b.fn, b.kind, b.options, b)
    for name, b in BUGS.items():
        if b.kind == "exact":
            lo = stored_in(b, "bfloat16")
            out[name + " (bfloat16)"] = (lo.fn, lo.kind, lo.options, lo)
    out.update(torch_entries())
    out.update(jax_entries())
    return out


def torch_entries():
    """torch SDPA (CPU) as a correct implementation: (B, N, T, H), causal top-left aligned."""
    try:
        import torch
    except ImportError:
        return {}
    from refattn.check.adapters import torch_backward, torch_forward

    sdpa, kw = torch.nn.functional.scaled_dot_product_attention, {"causal": "is_causal", "mask": "attn_mask"}
    claims = dict(layout="BNTH", alignment="top_left")
    out = {f"torch SDPA {p}": (torch_forward(sdpa, dtype=p, layout="BNTH", keywords=kw), "exact",
                               dict(claims, precision=p), None) for p in ("float64", "float32", "bfloat16", "float16")}
    out.update({f"torch SDPA backward {p}": (torch_backward(sdpa, dtype=p, keywords=kw), "backward",
                                             dict(claims, precision=p), None) for p in ("float64", "float32")})
    return out


def jax_entries():
    """jax.nn.dot_product_attention (CPU) as a correct implementation: (B, T, N, H), causal top-left,
    its own convention for rows that see no key (uniform weights: ``empty_rows="any"``)."""
    try:
        import jax
    except ImportError:
        return {}
    from refattn.check.adapters import jax_forward

    kw = {"causal": "is_causal", "mask": "mask", "bias": "bias"}
    claims = dict(layout="BTNH", alignment="top_left", equal_head_dims=True, empty_rows="any")
    return {f"JAX dot_product_attention {p}": (jax_forward(jax.nn.dot_product_attention, dtype=p, keywords=kw),
                                               "exact", dict(claims, precision=p), None)
            for p in ("float32", "bfloat16")}


def main(argv=None):
    from refattn.check.rules import ANCHOR_RULES, audit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rule_audit.json"))
    ap.add_argument("--only", help="measure the entries whose name contains this; merge their rows into --out")
    args = ap.parse_args(argv)
    todo = {n: e for n, e in entries().items() if args.only is None or args.only in n}
    start, load = time.time(), os.getloadavg()
    table = audit({n: e[:3] for n, e in todo.items()}, range(args.seeds))
    rules = ["refattn"] + list(ANCHOR_RULES)
    result = {"seeds": args.seeds, "seconds": round(time.time() - start, 1), "load_average_before": load,
              "load_average_after": os.getloadavg(), "machine": platform.processor() or platform.machine(),
              "rules": rules, "rows": []}
    print("| implementation | precision | source | " + " | ".join(rules) + " |")
    print("|---" * (len(rules) + 3) + "|")
    for name, row in table.items():
        fn, kind, options, bug = todo[name]
        source = "correct" if bug is None else bug.source
        result["rows"].append({"name": name, "kind": kind, "precision": options.get("precision", "float64"),
                               "source": source, "correct": bug is None, **row,
                               **({"remeasured": True} if args.only else {})})
        cells = [f"{row[r]}/{row['runs']}" for r in rules]
        print(f"| {name} | {options.get('precision', 'float64')} | {source} | " + " | ".join(cells) + " |")
    summary = f"{result['seconds']} s; load {load[0]:.2f} -> {result['load_average_after'][0]:.2f}; wrote {args.out}"
    if args.only and Path(args.out).exists():  # merge: the other rows as they were measured
        old = json.loads(Path(args.out).read_text())
        mine = {r["name"] for r in result["rows"]}
        old["rows"] = [r for r in old["rows"] if r["name"] not in mine] + result["rows"]
        old.setdefault("remeasured", []).append({k: result[k] for k in result if k != "rows"} | {"only": args.only})
        result = old
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(summary)


if __name__ == "__main__":
    main()
