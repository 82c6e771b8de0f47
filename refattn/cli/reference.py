"""``refattn reference``: golden outputs of exact attention for your inputs, locally or on a Dask cluster
([`refattn.distributed`][refattn.distributed])."""

from __future__ import annotations

import json
import time

from refattn.cli._args import UsageError, positive_float, positive_int


def add_parser(sub):
    ref = sub.add_parser("reference", help="golden outputs of exact attention for your .npy inputs (out, lse, and "
                                           "with --backward the gradients), locally or on a Dask cluster",
                         description="Exact attention (the float64 oracle's streaming kernel) for q, k, v stored as "
                                     ".npy files, computed shard by shard into an output folder that records the "
                                     "inputs' checksums and refattn's version. An interrupted run resumes when run "
                                     "again; --verify checks a stored reference against inputs.")
    ref.add_argument("--q", required=True, metavar="NPY", help="queries (..., T, H)")
    ref.add_argument("--k", required=True, metavar="NPY", help="keys (..., S, H)")
    ref.add_argument("--v", required=True, metavar="NPY", help="values (..., S, Hv)")
    ref.add_argument("--out", required=True, metavar="DIR",
                     help="output folder: out.npy, lse.npy (dq, dk, dv with --backward), meta.json")
    ref.add_argument("--causal", nargs="?", const="bottom_right", choices=("bottom_right", "top_left"),
                     help="causal masking (default alignment: bottom_right, as FlashAttention)")
    ref.add_argument("--mask", metavar="NPY", help="boolean mask (..., T, S): True where a query may attend")
    ref.add_argument("--bias", metavar="NPY", help="additive bias (..., T, S)")
    ref.add_argument("--key-lengths", metavar="NPY", help="integer key lengths per batch item (padding)")
    ref.add_argument("--scale", type=positive_float, help="softmax scale (default 1/sqrt(H))")
    ref.add_argument("--backward", metavar="NPY", help="dout (..., T, Hv): also compute dq, dk, dv")
    ref.add_argument("--shard", type=positive_int, default=None,
                     help="query rows per task, a multiple of 128 (default 2048)")
    ref.add_argument("--workers", type=positive_int, help="run on a local Dask cluster of this many processes")
    ref.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at this scheduler address")
    ref.add_argument("--overwrite", action="store_true", help="replace an existing reference folder (only a folder refattn wrote)")
    ref.add_argument("--verify", action="store_true",
                     help="do not compute: check that --out was computed from these inputs, that every output "
                          "file matches the checksum recorded at completion, and recompute --verify-blocks query "
                          "blocks with the oracle (exit 1 if any fails)")
    ref.add_argument("--verify-blocks", type=positive_int, default=4, metavar="N",
                     help="query blocks of 128 rows drawn at random and computed again by --verify (default 4)")
    ref.add_argument("--seed", type=int, help="the seed of --verify's draw of blocks (default: fresh, printed)")
    ref.add_argument("--json", action="store_true", help="print a JSON summary")
    ref.set_defaults(func=run)
    return ref


def _load(path, name, *, values=False):
    """An input file: a float array (memory-mapped), or with ``values`` any plain numeric or boolean
    array, left as stored (a mask must be boolean, key lengths integers: refattn refuses, not casts)."""
    from refattn.distributed import input_array, open_npy

    if path is None:
        return None
    if not values:
        return input_array(path, name)
    from pathlib import Path

    if not Path(path).is_file():
        raise UsageError(f"--{name.replace('_', '-')}: no such file {path!r}")
    return open_npy(path, name)


def run(args) -> int:
    from refattn.distributed import DEFAULT_SHARD, cluster, reference, verify_reference

    q, k, v = _load(args.q, "q"), _load(args.k, "k"), _load(args.v, "v")
    dout = _load(args.backward, "dout")
    mask, bias = _load(args.mask, "mask", values=True), _load(args.bias, "bias")
    key_lengths = _load(args.key_lengths, "key_lengths", values=True)
    if args.verify:
        from refattn._validation import InputError

        try:
            found = verify_reference(args.out, q, k, v, dout, mask=mask, bias=bias, blocks=args.verify_blocks,
                                     seed=args.seed)
        except InputError as exc:
            print(f"refattn reference: NOT VERIFIED: {exc}")
            return 1
        print(f"refattn reference: verified {args.out}: computed from these inputs, every output matches its "
              f"checksum, and {len(found['blocks'])} query blocks computed again agree with the oracle (worst "
              f"error {found['worst']:.2g} of the tolerance; --seed {found['seed']})")
        return 0
    t0 = time.perf_counter()
    try:
        with cluster(args.scheduler, args.workers) as client:
            ref = reference(q, k, v, out=args.out, causal=args.causal or False, mask=mask, bias=bias,
                            key_lengths=key_lengths, scale=args.scale, dout=dout,
                            shard=args.shard or DEFAULT_SHARD, client=client, overwrite=args.overwrite)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {args.out!r} ({exc.strerror or exc}); the folder resumes when "
                         "the same command runs again") from None
    seconds = time.perf_counter() - t0
    summary = {"out": str(ref.path), "arrays": ref.meta["arrays"], "shards": ref.meta["n_shards"],
               "seconds": round(seconds, 3), "where": args.scheduler or (f"LocalCluster({args.workers})"
                                                                         if args.workers else "this process"),
               "checksums": ref.meta["checksums"], "outputs": ref.meta["outputs"], "refattn": ref.meta["refattn"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {ref.path}: {', '.join(f'{n} {tuple(s)}' for n, s in ref.meta['arrays'].items())} in "
              f"{seconds:.1f} s ({ref.meta['n_shards']} shards, {summary['where']})")
    return 0
