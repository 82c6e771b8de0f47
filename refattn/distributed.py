"""Golden outputs past one machine: the exact oracle sharded by query blocks on Dask.

Query blocks of exact attention are independent given ``K`` and ``V``, so a reference output for
a long-context kernel (ring, blockwise, sliding window: 128k to 1M tokens) splits into tasks of
``shard`` query rows. [`reference`][refattn.distributed.reference] runs them

- in this process (``client=None``, the default: no Dask needed),
- or on a ``dask.distributed`` cluster (``client=``: a ``LocalCluster`` on this machine or a
  scheduler's address; ``K`` and ``V`` are sent to every worker once with ``Client.scatter``).

Every task runs the same function either way, so the two give the same bits. The forward task is
the oracle's streaming kernel ([`softmax_attention`][refattn.exact.softmax_attention] with
``implementation="numba"``) on the shard's rows; shards start at multiples of the kernel's query
block, so the forward output and ``lse`` equal the local oracle's bit for bit. A causal shard
``[a, b)`` sees only keys ``j < b + S - T`` (bottom-right; ``j < b`` top-left), so its task gets
those keys alone and the bottom-right rule on them, which is the same visibility. The backward
task is [`attention_backward`][refattn.exact.attention_backward] on the shard's rows (dense in
the shard: ``O(shard x S)`` memory per task): ``dq`` comes row by row; ``dk`` and ``dv`` are sums
over query rows, written per shard and added in shard order at the end, so they do not depend on
which worker finished first (they equal the unsharded backward to rounding: a different order of
the same sum).

Outputs are written shard by shard into ``.npy`` files of an output folder, never held whole by
the client; a folder interrupted mid-job resumes from the shards it has. The folder's
``meta.json`` records the inputs' checksums (sha256 of shape, dtype and bytes), the options and
the refattn version, so a test suite can trust a stored reference
([`load_reference`][refattn.distributed.load_reference] refuses inputs that do not match). A
folder is marked complete only after every output is written, reduced and checksummed (sha256
of each output in ``meta.json``); ``load_reference`` re-reads the outputs against those checksums
and [`verify_reference`][refattn.distributed.verify_reference] also computes a random sample of
query blocks again with the oracle. ``overwrite`` replaces only a folder refattn wrote.
Dask retries a task whose worker dies (``retries``): a killed worker costs a retry, not a wrong
or missing block. Needs the ``dask`` extra only with a client (``pip install 'dask[array]'
distributed``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from refattn import __version__
from refattn._extras import install_hint
from refattn._validation import InputError, InputTypeError, check_bool, check_positive_int
from refattn.exact import attention_backward, softmax_attention
from refattn.kernels.numba.streaming import DEFAULT_BLOCK_Q
from refattn.problem import CAUSAL_ALIGNMENTS, as_key_lengths, as_mask, causal_mask

__all__ = ["DEFAULT_SHARD", "Reference", "reference", "load_reference", "verify_reference", "input_array", "npy_header",
           "open_npy", "checksum", "connect",
           "cluster",
           "sweep_seeds", "sweep", "calibrate_check", "run_claim_batched"]

#: Query rows per task (a multiple of the streaming kernel's query block).
DEFAULT_SHARD = 16 * DEFAULT_BLOCK_Q
_FORMAT = 2  # 2: outputs checksummed at completion


def _dask():
    try:
        import dask.distributed as dd
    except ImportError:
        raise ImportError(f"refattn.distributed needs Dask for a cluster: {install_hint('dask')}") from None
    return dd


#: Seconds to wait for a scheduler before "cannot reach" (the environment's REFATTN_SCHEDULER_TIMEOUT
#: overrides it: a slow network may need longer).
SCHEDULER_TIMEOUT = 10.0


def _scheduler_timeout():
    text = os.environ.get("REFATTN_SCHEDULER_TIMEOUT")
    if text is None:
        return SCHEDULER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise InputError(f"REFATTN_SCHEDULER_TIMEOUT: expected seconds > 0, got {text!r}")
    return value


def connect(scheduler=None, *, workers=None, threads_per_worker=1):
    """A ``dask.distributed.Client``: to the scheduler at ``scheduler`` (an address, e.g.
    ``tcp://10.0.0.1:8786``; waited for `SCHEDULER_TIMEOUT` seconds, or the environment's
    ``REFATTN_SCHEDULER_TIMEOUT``), or to a new ``LocalCluster`` of ``workers`` processes."""
    dd = _dask()
    if scheduler is not None:
        try:
            return dd.Client(scheduler, timeout=f"{_scheduler_timeout():g}s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"scheduler: cannot reach {scheduler!r} ({exc})") from None
    workers = check_positive_int(workers or 1, "workers", maximum=1024)
    import dask

    # non-daemonic workers (a check run on a worker starts its own isolated process for the callable);
    # set for this process, so a worker the nanny restarts after a crash is non-daemonic too
    dask.config.set({"distributed.worker.daemon": False})
    # Dask pins every worker's OpenMP/BLAS to one thread; the oracle's Numba kernel is threaded too, so
    # give each worker its share of this machine's cores instead (BLAS stays at one per task)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    cluster = dd.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                              dashboard_address=None, env={"OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads})
    return dd.Client(cluster)


@contextlib.contextmanager
def cluster(scheduler=None, workers=None):
    """``with cluster(scheduler, workers) as client:``: ``None`` (run here) when neither is given, a
    client of the scheduler at ``scheduler``, or of a ``LocalCluster`` of ``workers`` processes that is
    closed with the block. Giving both is an error."""
    if scheduler and workers:
        raise InputError("workers, scheduler: give one (a local cluster, or the address of a running one)")
    if not (scheduler or workers):
        yield None
        return
    client = connect(scheduler, workers=workers)
    local = client.cluster if workers else None
    try:
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def input_array(x, name):
    """An input as an array the client can slice without loading it: a NumPy array, a ``.npy``
    file (memory-mapped), or a Dask array. Anything else is a clear error naming ``name``."""
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise InputError(f"{name}: no such file {str(path)!r}")
        x = open_npy(path, name)
    elif type(x).__module__.startswith("dask"):
        return x
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise InputTypeError(f"{name}: expected an array, a .npy path or a Dask array ({exc})") from None
    if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
        raise InputTypeError(f"{name}: expected float16, float32 or float64 values, got {x.dtype}")
    return x


def npy_header(path, name):
    """``(shape, dtype, fortran_order, data_offset)`` of a ``.npy`` file, read from its header alone,
    or an InputError naming ``name``: no NumPy header, an object dtype (a pickle), or a header whose
    shape needs more bytes than the file holds (a truncated file, or one that lies about its size)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise InputError(f"{name}: {str(path)!r} is not a .npy array file (no NumPy header)")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise InputError(f"{name}: {str(path)!r} has .npy format version {version}, which refattn does not read")
            shape, fortran, dtype = read[version](f, max_header_size=10_000)
            offset = f.tell()
        size = path.stat().st_size
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{name}: {str(path)!r} is not a readable .npy array file ({exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"{name}: {str(path)!r} holds {dtype} values (refattn reads plain numeric arrays only)")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if offset + need != size:
        raise InputError(f"{name}: {str(path)!r}: its header declares {tuple(shape)} {dtype} ({need} bytes) but the "
                         f"file holds {size - offset} bytes of data (truncated or corrupt)")
    return tuple(shape), dtype, fortran, offset


def open_npy(path, name):
    """A ``.npy`` file memory-mapped read-only, after [`npy_header`][refattn.distributed.npy_header] checked it."""
    shape, dtype, fortran, offset = npy_header(path, name)
    if 0 in shape:
        return np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _slice(x, sl):
    """Rows ``sl`` of the query axis (-2), as an in-memory float array."""
    part = x[..., sl, :]
    if hasattr(part, "compute"):
        part = part.compute()
    return np.ascontiguousarray(part)


def checksum(x) -> str:
    """sha256 of an array's shape, dtype and bytes (in row blocks: a memory-mapped input is read once)."""
    h = hashlib.sha256(f"{tuple(x.shape)} {np.dtype(x.dtype).str}".encode())
    flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    step = max(1, (1 << 24) // max(1, flat.shape[-1] * flat.dtype.itemsize))
    for i in range(0, flat.shape[0], step):
        part = flat[i:i + step]
        h.update(np.ascontiguousarray(part.compute() if hasattr(part, "compute") else part).tobytes())
    return h.hexdigest()


def _check_shapes(q, k, v, dout):
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim < 2:
            raise InputError(f"{name}: expected shape (..., L, H), got {tuple(x.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise InputError(f"k: head dim {k.shape[-1]} does not match q's {q.shape[-1]}")
    if v.shape[-2] != k.shape[-2]:
        raise InputError(f"v: {v.shape[-2]} rows, but k has {k.shape[-2]} keys")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise InputError(f"k, v: batch dims {k.shape[:-2]}, {v.shape[:-2]} differ from q's {q.shape[:-2]}")
    dtypes = {np.dtype(x.dtype) for x in (q, k, v)}
    if len(dtypes) > 1:
        raise InputTypeError(f"k, v: dtypes {np.dtype(k.dtype)}, {np.dtype(v.dtype)} differ from q's {np.dtype(q.dtype)}")
    if dout is not None and tuple(dout.shape) != tuple(q.shape[:-1]) + (v.shape[-1],):
        raise InputError(f"dout: expected the output's shape {tuple(q.shape[:-1]) + (v.shape[-1],)}, got {tuple(dout.shape)}")


def _causal(causal):
    if causal is False or causal is None:
        return None
    if causal is True:
        return "bottom_right"
    if causal in CAUSAL_ALIGNMENTS:
        return causal
    raise InputError(f"causal: expected a bool or one of {CAUSAL_ALIGNMENTS}, got {causal!r}")


def _visible(a, b, T, S, causal):
    """``(stop, mask)``: the keys a causal shard ``[a, b)`` needs (``k[..., :stop]``, with the
    bottom-right rule on them), or, where that cannot express it (top-left with ``b > S``), the
    shard's rows of the causal mask."""
    if causal is None:
        return S, None
    stop = b + (S - T if causal == "bottom_right" else 0)
    if stop <= S:
        return max(stop, 0), None
    return S, causal_mask(T, S, causal)[a:b]


_ALIGNED = {}


def _aligned(x, *, keep=False):
    """``x`` C-contiguous and aligned. Dask may deserialize an array at an unaligned address (seen: a
    scattered K at an address = 4 mod 8 on one of two workers), and NumPy's matmul then skips BLAS
    for its own loop, which rounds differently. A copy is made only then; with ``keep`` (K and V,
    the same for every task) once per worker and array, not per task."""
    if x is None or (x.flags.c_contiguous and x.flags.aligned):
        return x
    if not keep:
        return np.require(x, requirements=["C", "A"]).copy()
    key = (x.__array_interface__["data"][0], x.shape, x.dtype.str)
    if key not in _ALIGNED:
        if len(_ALIGNED) >= 4:
            _ALIGNED.clear()
        _ALIGNED[key] = np.require(x, requirements=["C", "A"]).copy()
    return _ALIGNED[key]


def _shard(k, v, mask_rows, bias_rows, a, b, opts):
    """What a shard ``[a, b)`` computes on: ``(k, v, keyword arguments)`` with the keys it can see
    (``_visible``) and the options cut to them."""
    k, v = _aligned(k, keep=True), _aligned(v, keep=True)
    stop, cmask = _visible(a, b, opts["T"], k.shape[-2], opts["causal"])
    kw = {"scale": opts["scale"]}
    if opts["causal"] is not None and cmask is None:
        kw["causal"] = "bottom_right"  # on the keys the shard sees: the same visibility as the full problem
    masks = [m for m in (None if mask_rows is None else mask_rows[..., :stop], cmask) if m is not None]
    if masks:
        kw["mask"] = masks[0] if len(masks) == 1 else masks[0] & masks[1]
    if bias_rows is not None:
        kw["bias"] = bias_rows[..., :stop]
    if opts["key_lengths"] is not None:
        kw["key_lengths"] = np.minimum(opts["key_lengths"], stop)
    return k[..., :stop, :], v[..., :stop, :], kw


def _forward_task(q_rows, k, v, mask_rows, bias_rows, a, b, opts):
    """One shard's ``(out, lse)``: the oracle's streaming kernel on rows ``[a, b)``."""
    k, v, kw = _shard(k, v, mask_rows, bias_rows, a, b, opts)
    return softmax_attention(_aligned(q_rows), k, v, return_lse=True, implementation=opts["implementation"], **kw)


def _backward_task(q_rows, k, v, dout_rows, mask_rows, bias_rows, a, b, opts):
    """One shard's ``(out, lse, dq rows, dk partial, dv partial, stop)``: the forward task's output
    and ``lse``, and the gradients (partials over the ``stop`` keys the shard sees)."""
    q_rows, dout_rows = _aligned(q_rows), _aligned(dout_rows)
    out, lse = _forward_task(q_rows, k, v, mask_rows, bias_rows, a, b, opts)
    k, v, kw = _shard(k, v, mask_rows, bias_rows, a, b, opts)
    # BLAS on one thread wherever the task runs: a GEMM split over threads may round differently, and
    # a worker process (one thread) must give the bits this process gives
    with threadpool_limits(limits=1, user_api="blas"):
        dq, dk, dv = attention_backward(q_rows, k, v, dout_rows, **kw)
    return out, lse, dq, dk, dv, k.shape[-2]


#: The outputs a reference folder may hold, in the order they are written.
_NAMES = ("out", "lse", "dq", "dk", "dv")
#: Every file a reference folder may hold: refattn deletes (``overwrite``) only folders of these.
_OWN_FILE = re.compile(r"(out|lse|dq|dk|dv)\.npy|d[kv]\.part\d+\.npy(\.tmp)?|meta\.json(\.tmp)?")


@dataclass
class Reference:
    """A stored reference: the folder, its metadata and its arrays (memory-mapped ``.npy``, read-only,
    their headers checked against the manifest)."""

    path: Path
    meta: dict

    def __getitem__(self, name) -> np.ndarray:
        if name not in self.meta["arrays"]:
            raise KeyError(f"{name!r}: this reference holds {sorted(self.meta['arrays'])}")
        return _output(self.path, name, self.meta)

    @property
    def complete(self) -> bool:
        """Every shard written, the gradients reduced and every output's checksum recorded."""
        return bool(self.meta.get("complete"))


def _output(path, name, meta):
    """The stored output ``name``, memory-mapped, or an InputError when its file is missing, truncated,
    not float64 or not the manifest's shape."""
    file = path / f"{name}.npy"
    if not file.is_file():
        raise InputError(f"reference: {str(file)!r} is missing")
    arr = open_npy(file, f"reference: {name}.npy")
    want = tuple(meta["arrays"][name])
    if arr.shape != want or arr.dtype != np.float64:
        raise InputError(f"reference: {str(file)!r} holds {arr.shape} {arr.dtype}, the manifest says {want} float64")
    return arr


def _manifest_problem(meta):
    """What is wrong with a parsed ``meta.json`` (``None``: a well-formed manifest)."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    n = meta.get("n_shards")
    if meta.get("format") not in (1, _FORMAT):
        return f"format {meta.get('format')!r}"
    if not isinstance(n, int) or n < 1:
        return "n_shards"
    done = meta.get("done")
    if not (isinstance(done, list) and all(isinstance(i, int) and 0 <= i < n for i in done)):
        return "done"
    arrays = meta.get("arrays")
    if not (isinstance(arrays, dict) and {"out", "lse"} <= set(arrays) <= set(_NAMES)
            and all(isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in arrays.values())):
        return "arrays"
    for key in ("checksums", "options"):
        if not isinstance(meta.get(key), dict):
            return key
    outputs = meta.get("outputs")
    if meta.get("complete") and not (isinstance(outputs, dict) and set(outputs) == set(arrays)):
        return "outputs"
    return None


def _read_meta(path):
    """The folder's manifest, or an InputError saying why it is not one."""
    file = path / "meta.json"
    if not file.is_file():
        raise InputError(f"reference: {str(path)!r} is not a refattn reference folder (no meta.json)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"reference: {str(file)!r} is unreadable or corrupt ({exc})") from None
    problem = _manifest_problem(meta)
    if problem:
        raise InputError(f"reference: {str(file)!r} is not a refattn reference manifest (bad {problem})")
    return meta


def _shards(T, shard):
    return [(a, min(a + shard, T)) for a in range(0, T, shard)]


def _preallocate(file):
    """Reserve a new file's blocks on disk, so a full disk is an OSError here, not a SIGBUS when a
    memory-mapped write finds no block later."""
    size = file.stat().st_size
    with open(file, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            chunk = b"\0" * (1 << 20)  # a file system without fallocate: write the zeros
            f.seek(0)
            for start in range(0, size, len(chunk)):
                f.write(chunk[:size - start])


def _open(path, name, shape, dtype=np.float64):
    arr = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
    arr.flush()
    del arr
    _preallocate(path / f"{name}.npy")


def _save(file, arr):
    """``np.save`` through a temporary file: a kill mid-write never leaves a torn ``file``."""
    tmp = file.with_name(file.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, file)


def _write_meta(path, meta):
    tmp = path / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / "meta.json")  # atomic: an interrupted job never leaves a torn manifest


def load_reference(path, q=None, k=None, v=None, dout=None, *, check_outputs=True) -> Reference:
    """Open a finished reference folder; with inputs given, check that they are the ones it was
    computed from (sha256 checksums) and refuse otherwise.

    An unfinished folder is refused, and so is one whose output files do not match the checksums
    recorded when it was completed (a flipped byte, a truncated, replaced or deleted file);
    ``check_outputs=False`` skips reading the outputs for that (their headers are still checked)."""
    path = Path(path)
    meta = _read_meta(path)
    ref = Reference(path, meta)
    if meta["format"] != _FORMAT:
        raise InputError(f"reference: {str(path)!r} was written by an older refattn that recorded no output "
                         "checksums; compute it again (--overwrite)")
    if not ref.complete:
        raise InputError(f"reference: {str(path)!r} is unfinished ({len(meta['done'])} of {meta['n_shards']} "
                         "shards); run the same command again to resume it")
    for x, name in ((q, "q"), (k, "k"), (v, "v"), (dout, "dout")):
        if x is not None:
            got = checksum(input_array(x, name))
            want = meta["checksums"].get(name)
            if got != want:
                raise InputError(f"{name}: its checksum {got[:12]}... does not match the reference's "
                                 f"{(want or 'none')[:12]}...: this reference was computed from other inputs")
    for name in meta["arrays"]:
        arr = ref[name]
        if check_outputs and checksum(arr) != meta["outputs"][name]:
            raise InputError(f"reference: {name}.npy in {str(path)!r} does not match the checksum recorded when the "
                             "reference was completed: the file changed or is corrupt")
    return ref


def verify_reference(path, q, k, v, dout=None, *, mask=None, bias=None, blocks=4, seed=None) -> dict:
    """Check a stored reference against its inputs: [`load_reference`][refattn.distributed.load_reference]
    (input and output checksums), then ``blocks`` query blocks drawn at random (``seed``) computed
    again by the oracle and judged by refattn's tolerance rule at float64
    ([`check_attention_output`][refattn.tolerance.check_attention_output]; ``lse`` within
    ``4 eps max|lse|`` of the block's). ``mask`` and ``bias`` must be the ones the reference was
    computed with (checked by checksum). Returns ``{"blocks": [first rows], "seed", "worst": error / bound}``;
    a reference that fails raises InputError."""
    from refattn.tolerance import check_attention_output, compare

    ref = load_reference(path, q=q, k=k, v=v, dout=dout)
    q, k, v = (input_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    opts = dict(ref.meta["options"])
    for arr, name in ((mask, "mask"), (bias, "bias")):
        want = opts.get(name)
        got = None if arr is None else checksum(np.asarray(arr, dtype=np.uint8 if name == "mask" else np.float64))
        if got != want:
            raise InputError(f"{name}: " + ("this reference was computed with one; pass it to verify" if got is None
                                            else "not the one this reference was computed with"))
    T = q.shape[-2]
    starts = list(range(0, T, DEFAULT_BLOCK_Q))
    seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else check_positive_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    chosen = sorted(int(a) for a in rng.choice(starts, size=min(check_positive_int(blocks, "blocks"), len(starts)),
                                               replace=False))
    lengths = opts.get("key_lengths")
    task = {"T": T, "causal": opts["causal"], "scale": opts["scale"], "implementation": "numba",
            "key_lengths": None if lengths is None else np.asarray(lengths, dtype=np.int64)}
    worst = 0.0
    for a in chosen:
        b = min(a + DEFAULT_BLOCK_Q, T)
        m = None if mask is None else np.ascontiguousarray(np.asarray(mask)[..., a:b, :])
        bs = None if bias is None else np.ascontiguousarray(np.asarray(bias, dtype=np.float64)[..., a:b, :])
        kk, vv, kw = _shard(np.asarray(k), np.asarray(v), m, bs, a, b, task)
        q_rows = _slice(q, slice(a, b))
        stored_out = np.asarray(ref["out"][..., a:b, :])
        out_check = check_attention_output(stored_out, q_rows, kk, vv, precision="float64", **kw)
        lse64 = softmax_attention(q_rows, kk, vv, return_lse=True, **kw)[1]
        finite = np.isfinite(lse64)
        stored_lse = np.asarray(ref["lse"][..., a:b])
        if not np.array_equal(np.isfinite(stored_lse), finite) or not np.array_equal(stored_lse[~finite],
                                                                                       lse64[~finite]):
            raise InputError(f"reference: lse rows {a}..{b - 1} differ from the oracle's where a row sees no key")
        lse_check = compare(stored_lse[finite], lse64[finite], lse64[finite], precision="float64")
        for check, name in ((out_check, "out"), (lse_check, "lse")):
            if not check.passed:
                raise InputError(f"reference: {name} rows {a}..{b - 1} differ from the oracle's computed again: "
                                 f"{check.summary()}")
            worst = max(worst, check.error / check.bound if check.bound > 0 else 0.0)
    return {"blocks": chosen, "seed": seed, "worst": worst}


def _prepare(path, meta, overwrite):
    """Make ``path`` ready for ``meta``'s job: resume an unfinished folder of the same job, start a new
    one, or (``overwrite``) empty a refattn reference folder. Never deletes a folder that is not one."""
    if path.is_symlink():
        raise InputError(f"out: {str(path)!r} is a symbolic link; give the folder itself")
    if path.exists() and not path.is_dir():
        raise InputError(f"out: {str(path)!r} exists and is not a folder")
    entries = list(path.iterdir()) if path.is_dir() else []
    if not entries:
        return []
    foreign = sorted(e.name for e in entries if e.is_symlink() or not e.is_file() or not _OWN_FILE.fullmatch(e.name))
    try:
        old, why = _read_meta(path), None
    except InputError as exc:
        old = None
        why = "no meta.json" if not (path / "meta.json").is_file() else str(exc).removeprefix("reference: ")
    if old is None or foreign:
        if foreign:
            why = f"it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which refattn did not write"
        raise InputError(f"out: {str(path)!r} is not a refattn reference folder ({why}); refattn replaces only its "
                         "own folders: choose another --out, or remove it yourself")
    same = all(old.get(key) == meta[key] for key in ("format", "checksums", "options", "arrays", "shard_bounds"))
    if same and not old.get("complete") and not overwrite:
        return _resumable(path, old, meta)
    if not overwrite:
        what = "a finished reference of these inputs" if same else "a reference of other inputs or options"
        raise InputError(f"out: {str(path)!r} exists ({what}); pass overwrite=True (--overwrite) to replace it")
    for e in entries:
        e.unlink()
    return []


def _resumable(path, old, meta):
    """The shards of an unfinished folder that can be kept: all of ``old["done"]`` when every output
    file is intact (else none: start again), less any backward shard whose partial sums are gone."""
    for name in meta["arrays"]:
        try:
            _output(path, name, meta)
        except InputError:
            return []
    done = []
    for i in old["done"]:
        parts = [path / f"{n}.part{i}.npy" for n in ("dk", "dv")] if "dk" in meta["arrays"] else []
        try:
            for p in parts:
                npy_header(p, p.name)
        except InputError:
            continue
        done.append(i)
    return done


def reference(q, k, v, *, out, causal=False, mask=None, bias=None, key_lengths=None, scale=None, dout=None,
              shard=DEFAULT_SHARD, client=None, overwrite=False, retries=3, progress=None) -> Reference:
    """Compute exact attention (and with ``dout`` its gradients) shard by shard into the folder ``out``.

    Parameters
    ----------
    q, k, v : arrays (..., T, H), (..., S, H), (..., S, Hv), ``.npy`` paths or Dask arrays
        The same dtype and batch dims (the oracle computes in float64).
    out : path
        The output folder: ``out.npy (..., T, Hv)``, ``lse.npy (..., T)``, with ``dout`` also
        ``dq.npy``, ``dk.npy``, ``dv.npy``, and ``meta.json``. An unfinished folder computed
        from the same inputs and options is resumed; a finished one is an error unless
        ``overwrite``.
    causal, mask, bias, key_lengths, scale
        As [`softmax_attention`][refattn.exact.softmax_attention] (``mask``/``bias`` as arrays of shape
        ``(..., T, S)``, read a shard of rows at a time).
    shard : int
        Query rows per task, a multiple of 128 (the streaming kernel's query block) or all of ``T``.
    client : dask.distributed.Client, optional
        Where the tasks run ([`connect`][refattn.distributed.connect]); ``None`` runs them here.
    retries : int
        Dask's retries of a task whose worker died or raised.
    progress : bool or None
        A progress bar (``None``: on a terminal).
    """
    from tqdm.auto import tqdm

    q, k, v = (input_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    dout = None if dout is None else input_array(dout, "dout")
    _check_shapes(q, k, v, dout)
    causal = _causal(causal)
    overwrite = check_bool(overwrite, "overwrite")
    T, S = q.shape[-2], k.shape[-2]
    shard = check_positive_int(shard, "shard", maximum=2**31)
    if shard % DEFAULT_BLOCK_Q and shard < T:
        raise InputError(f"shard: must be a multiple of {DEFAULT_BLOCK_Q} (the kernel's query block) or >= T = {T}, "
                         f"got {shard}")
    for arr, name in ((mask, "mask"), (bias, "bias")):
        if arr is not None and tuple(np.shape(arr))[-2:] != (T, S):
            raise InputError(f"{name}: expected trailing shape (T, S) = ({T}, {S}), got {tuple(np.shape(arr))}")
    if scale is not None:
        from refattn._validation import check_scale

        scale = check_scale(scale, q.shape[-1])
    if mask is not None:
        mask = as_mask(mask)
    if bias is not None:
        bias = input_array(bias, "bias")
    lengths = None if key_lengths is None else as_key_lengths(key_lengths, S)
    opts = {"T": T, "causal": causal, "scale": scale, "key_lengths": lengths, "implementation": "numba"}
    checksums = {name: checksum(x) for x, name in ((q, "q"), (k, "k"), (v, "v"), (dout, "dout")) if x is not None}
    options = {"causal": causal, "scale": scale, "shard": shard, "backward": dout is not None,
               "mask": None if mask is None else checksum(np.asarray(mask, dtype=np.uint8)),
               "bias": None if bias is None else checksum(np.asarray(bias, dtype=np.float64)),
               "key_lengths": None if lengths is None else lengths.tolist()}
    shards = _shards(T, shard)
    batch, Hv, H = tuple(q.shape[:-2]), v.shape[-1], q.shape[-1]
    arrays = {"out": batch + (T, Hv), "lse": batch + (T,)}
    if dout is not None:
        arrays.update(dq=batch + (T, H), dk=batch + (S, H), dv=batch + (S, Hv))
    path = Path(out)
    meta = {"format": _FORMAT, "refattn": __version__, "checksums": checksums, "options": options,
            "n_shards": len(shards), "shard_bounds": [list(b) for b in shards],
            "arrays": {n: list(s) for n, s in arrays.items()}, "done": [], "complete": False}
    meta["done"] = _prepare(path, meta, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    if not meta["done"]:
        _write_meta(path, meta)  # first: a folder interrupted while its files are made is still ours
        for name, shp in arrays.items():
            _open(path, name, shp)
    todo = [i for i in range(len(shards)) if i not in set(meta["done"])]

    def rows(x, a, b):
        return None if x is None else _slice(x, slice(a, b))

    def task_args(i):
        a, b = shards[i]
        m = None if mask is None else np.ascontiguousarray(np.asarray(mask)[..., a:b, :])
        bs = None if bias is None else np.ascontiguousarray(np.asarray(bias)[..., a:b, :])
        if dout is None:
            return (_forward_task, rows(q, a, b), m, bs, a, b)
        return (_backward_task, rows(q, a, b), rows(dout, a, b), m, bs, a, b)

    def store(i, result):
        a, b = shards[i]
        o, lse = result[:2]
        mo, ml = np.load(path / "out.npy", mmap_mode="r+"), np.load(path / "lse.npy", mmap_mode="r+")
        mo[..., a:b, :], ml[..., a:b] = o, lse
        mo.flush(), ml.flush()
        if dout is not None:
            dq, dk, dv, stop = result[2:]
            mq = np.load(path / "dq.npy", mmap_mode="r+")
            mq[..., a:b, :] = dq
            mq.flush()
            _save(path / f"dk.part{i}.npy", dk)  # partial sums, added in shard order at the end
            _save(path / f"dv.part{i}.npy", dv)
        meta["done"] = sorted(set(meta["done"]) | {i})
        _write_meta(path, meta)

    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc="reference", unit="shard",
               disable=(not progress) if progress is not None else None)
    try:
        if client is None:
            kk, vv = (_slice(x, slice(None)) if hasattr(x, "compute") else x for x in (k, v))
            for i in todo:
                fn, *args = task_args(i)
                store(i, fn(args[0], kk, vv, *args[1:], opts))
                bar.update(1)
        else:
            dd = _dask()
            kk, vv = (_slice(x, slice(None)) if hasattr(x, "compute") else np.asarray(x) for x in (k, v))
            k_f, v_f = client.scatter([kk, vv], broadcast=True)  # K and V reach each worker once
            futures = {}
            for i in todo:
                fn, *args = task_args(i)
                fut = client.submit(fn, args[0], k_f, v_f, *args[1:], opts, retries=retries, pure=False,
                                    key=f"refattn-reference-{os.getpid()}-{id(meta)}-{i}")
                futures[fut] = i
            for fut in dd.as_completed(futures):
                store(futures[fut], fut.result())
                bar.update(1)
    finally:
        bar.close()
    if dout is not None:
        _reduce_partials(path, shards, batch, S, H, Hv)
    # completion last: every output written, reduced and checksummed; a kill before this line leaves
    # an unfinished folder that the same command resumes
    meta["outputs"] = {name: checksum(_output(path, name, meta)) for name in arrays}
    meta["complete"] = True
    _write_meta(path, meta)
    for f in path.glob("d[kv].part*.npy"):
        f.unlink()
    return Reference(path, _read_meta(path))


def _reduce_partials(path, shards, batch, S, H, Hv):
    """``dk``, ``dv``: the shards' partial sums added in shard order (the same bits whatever finished
    first). The partial files stay until the folder is marked complete, so a kill here reduces again."""
    for name, width in (("dk", H), ("dv", Hv)):
        total = np.zeros(batch + (S, width))
        for i in range(len(shards)):
            part = np.load(path / f"{name}.part{i}.npy", allow_pickle=False)
            total[..., :part.shape[-2], :] += part
        m = np.load(path / f"{name}.npy", mmap_mode="r+")
        m[...] = total
        m.flush()


# ----------------------------------------------------------------------------- sweeps over seeds
def sweep_seeds(seed, n):
    """``n`` independent 63-bit seeds from ``SeedSequence(seed).spawn(n)``: the same list whatever runs them."""
    n = check_positive_int(n, "n", maximum=10**7)
    return [int(s.generate_state(1, np.uint64)[0] >> np.uint64(1)) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def sweep(fn, seeds, *, client=None, retries=3, progress=None):
    """``[fn(s) for s in seeds]``, in this process or as one Dask task per seed (results in seed order)."""
    from tqdm.auto import tqdm

    seeds = list(seeds)
    bar = tqdm(total=len(seeds), desc="sweep", unit="run", disable=(not progress) if progress is not None else None)
    try:
        if client is None:
            out = []
            for s in seeds:
                out.append(fn(s))
                bar.update(1)
            return out
        dd = _dask()
        futures = client.map(fn, seeds, retries=retries, pure=False)
        for _ in dd.as_completed(futures):
            bar.update(1)
        return client.gather(futures)
    finally:
        bar.close()


def _one_check(seed, target, kind, kwargs):
    from refattn.check import check

    rep = check(target, kind, seed=seed, **kwargs)
    return {"seed": seed, "passed": not rep.failures}  # a false alarm is a FAIL (INCONCLUSIVE is not one)


def calibrate_check(target, kind, n, *, seed=0, client=None, level=0.95, progress=None, **check_kwargs):
    """Run ``refattn.check.check(target, kind, seed=s, ...)`` over ``n`` seeds (``sweep_seeds``) and
    report how often it failed, with the Clopper-Pearson interval at ``level``.

    For a correct implementation the failure rate is the checker's false-alarm rate, which its
    family-wise ``alpha`` bounds: the interval should reach below ``alpha``. For a defective one it
    is the check's power. Returns a dict: ``runs``, ``failures``, ``rate``, ``low``, ``high``,
    ``alpha``, ``verdict`` and the per-seed ``results``.
    """
    from functools import partial

    from scipy.stats import binomtest

    seeds = sweep_seeds(seed, n)
    results = sweep(partial(_one_check, target=target, kind=kind, kwargs=check_kwargs), seeds, client=client,
                    progress=progress)
    failures = sum(not r["passed"] for r in results)
    ci = binomtest(failures, len(results)).proportion_ci(level, method="exact")
    alpha = check_kwargs.get("alpha", 1e-3)
    if ci.low > alpha:
        verdict = (f"fails more often than the false-alarm rate allows (alpha = {alpha:g}): a real defect, "
                   f"detected with power >= {ci.low:.3g}")
    else:
        verdict = (f"consistent with a correct implementation: false-alarm rate <= {ci.high:.3g} "
                   f"({level:.0%} Clopper-Pearson; the checks allow {alpha:g})")
    return {"runs": len(results), "failures": failures, "rate": failures / len(results), "low": float(ci.low),
            "high": float(ci.high), "level": level, "alpha": alpha, "verdict": verdict, "results": results}


#: claims whose rows are rates of successes (their batches add up hits; the others' rows are means)
_RATE_CLAIMS = ("collision",)


def _claim_batch(seed, name, draws, kwargs):
    from refattn.evaluation.claims import run_claim

    return run_claim(name, draws=draws, seed=seed, progress=lambda it: it, **kwargs)


def run_claim_batched(name, *, draws=20_000, batches=20, seed=0, client=None, alpha=1e-3, progress=None, **kwargs):
    """A theory claim's table with its draws split into ``batches`` independent batches
    (``sweep_seeds(seed, batches)``), run here or one Dask task per batch; the same numbers whatever
    runs them.

    A row that is a mean over draws (an MSE, a mean) becomes the mean of its batch estimates, with
    a t-interval at level ``1 - alpha`` from their spread (the batch-means method: the batches are
    independent and identically distributed); a row that is a rate (``collision``) adds its batches'
    hits and gets the exact Clopper-Pearson interval. Closed-form-only rows are copied. ``rpca``
    runs a fixed, small number of trials and is not split.
    """
    from functools import partial

    from scipy import stats

    from refattn.evaluation.claims import CLAIMS, ClaimRow

    if name not in CLAIMS or name == "rpca":
        raise InputError(f"claim: {name!r} cannot be split into batches; expected one of "
                         f"{sorted(c for c in CLAIMS if c != 'rpca')}")
    batches = check_positive_int(batches, "batches", minimum=2)
    per = check_positive_int(draws, "draws") // batches
    if per < 2:
        raise InputError(f"draws: {draws} draws in {batches} batches leaves fewer than 2 per batch")
    results = sweep(partial(_claim_batch, name=name, draws=per, kwargs=dict(alpha=alpha, **kwargs)),
                    sweep_seeds(seed, batches), client=client, progress=progress)
    rows = []
    for parts in zip(*results):
        first = parts[0]
        values = np.array([r.empirical for r in parts], dtype=float)
        if np.isnan(values).all():
            rows.append(first)
        elif name in _RATE_CLAIMS:
            hits = int(round(float(np.sum(values * per))))
            ci = stats.binomtest(hits, per * batches, min(max(first.closed_form, 0.0), 1.0)).proportion_ci(
                1 - alpha, method="exact")
            rows.append(ClaimRow(first.quantity, first.setting, first.closed_form, hits / (per * batches),
                                 float(ci.low), float(ci.high)))
        else:
            mean = float(values.mean())
            half = float(stats.t.ppf(1 - alpha / 2, batches - 1) * values.std(ddof=1) / np.sqrt(batches))
            rows.append(ClaimRow(first.quantity, first.setting, first.closed_form, mean, mean - half, mean + half))
    return rows
