r"""What the worker may tell the checker: numeric arrays and bounded text, never a Python object.

The worker runs code the checker's user may not trust, and that code can reach the worker's end of
the pipe (it is in a caller's frame). So the checker never unpickles what comes back: a reply is
one message of bytes, [`encode_reply`][refattn.check.wire.encode_reply] on the worker's side and
[`decode_reply`][refattn.check.wire.decode_reply] on the checker's,

    8 bytes: the header's length n (big-endian) | n bytes: a JSON header | the arrays' raw bytes

where the header holds the status (``"ok"``, ``"raised"``, ``"not an array"``), bounded strings
(an exception's type and message, the names of arguments the call changed, what it printed) and,
per array, a dtype string and a shape. The checker accepts only plain numeric dtypes (bool,
integers, floats, complex: no object, structured, void or datetime dtype), shapes of non-negative
integers whose sizes add up to exactly the bytes that follow, and at most ``max_bytes`` of them;
anything else is a reply it cannot judge, which fails the call (a verdict can only be computed
from the arrays, in the checker). bfloat16 and FP8 results travel as float32 (exact).
"""

from __future__ import annotations

import json
import struct

import numpy as np

__all__ = ["encode_reply", "decode_reply", "WireError", "TEXT_LIMIT", "NUMERIC_KINDS"]

#: Characters kept of each string in a reply (an exception message, what the call printed).
TEXT_LIMIT = 4000
#: Bytes a header may have.
HEADER_LIMIT = 1 << 20
#: dtype kinds a reply may carry: bool, signed and unsigned integers, floats, complex.
NUMERIC_KINDS = "biufc"
_STATUSES = ("ok", "raised", "not an array")


class WireError(ValueError):
    """A reply the checker will not read (malformed, oversized, or not plain numbers)."""


def _text(value) -> str:
    return str(value)[:TEXT_LIMIT]


def encode_reply(status, arrays=(), *, is_tuple=False, error_type="", message="", changed=(), printed="") -> bytes:
    """The bytes of one reply (module docstring). ``arrays``: the call's result (one array, or the
    parts of a tuple result with ``is_tuple``); each must be a plain numeric NumPy array."""
    if status not in _STATUSES:
        raise ValueError(f"status: expected one of {_STATUSES}, got {status!r}")
    specs, blobs = [], []
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in NUMERIC_KINDS or a.dtype.fields is not None or a.dtype.subdtype is not None:
            raise WireError(f"dtype {a.dtype} is not a plain numeric dtype")
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        specs.append({"dtype": a.dtype.str, "shape": [int(n) for n in a.shape]})
        blobs.append(a.tobytes())
    header = json.dumps({"status": status, "arrays": specs, "tuple": bool(is_tuple), "error_type": _text(error_type),
                         "message": _text(message), "changed": [_text(c) for c in changed][:64],
                         "printed": _text(printed)}).encode("utf-8")
    return struct.pack(">Q", len(header)) + header + b"".join(blobs)


def _dtype(text) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise WireError(f"dtype: {text!r} is not a dtype string")
    try:
        dt = np.dtype(text)
    except TypeError:
        raise WireError(f"dtype: {text!r} is not a dtype string") from None
    if dt.kind not in NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None or dt.itemsize > 16:
        raise WireError(f"dtype {dt} is not a plain numeric dtype")
    return dt


def decode_reply(data: bytes, *, max_bytes: int) -> dict:
    """The reply in ``data`` as ``{"status", "arrays" (a tuple or one array or None), "error_type",
    "message", "changed", "printed"}``; a [`WireError`][refattn.check.wire.WireError] for anything that is not a
    well-formed reply of plain numeric arrays of at most ``max_bytes`` in all."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise WireError("the reply is not a message of bytes")
    data = memoryview(data)
    (n,) = struct.unpack(">Q", data[:8])
    if n > HEADER_LIMIT or 8 + n > len(data):
        raise WireError(f"the reply's header declares {n} bytes")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("the reply's header is not JSON") from None
    if not isinstance(header, dict) or header.get("status") not in _STATUSES:
        raise WireError("the reply has no known status")
    specs = header.get("arrays")
    if not isinstance(specs, list) or len(specs) > 16:
        raise WireError("the reply's arrays are not a short list")
    body = data[8 + n:]
    if len(body) > max_bytes:
        raise WireError(f"the reply carries {len(body)} bytes, more than the {max_bytes} allowed")
    arrays, offset = [], 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise WireError("an array of the reply has no description")
        dt = _dtype(spec.get("dtype"))
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > 32 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in shape):
            raise WireError(f"an array of the reply has shape {shape!r}")
        count = 1
        for s in shape:
            count *= s
        size = count * dt.itemsize
        if size > len(body) - offset:
            raise WireError(f"an array of the reply declares {size} bytes; {len(body) - offset} follow")
        arrays.append(np.frombuffer(body[offset:offset + size], dtype=dt).reshape(shape).copy())
        offset += size
    if offset != len(body):
        raise WireError(f"the reply carries {len(body) - offset} bytes no array declares")
    strings = {key: header.get(key, "") for key in ("error_type", "message", "printed")}
    if not all(isinstance(v, str) for v in strings.values()):
        raise WireError("the reply's texts are not strings")
    changed = header.get("changed", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        raise WireError("the reply's changed arguments are not names")
    result = None
    if arrays:
        result = tuple(arrays) if header.get("tuple") else arrays[0]
    return {"status": header["status"], "arrays": result, "changed": [c[:TEXT_LIMIT] for c in changed[:64]],
            **{k: v[:TEXT_LIMIT] for k, v in strings.items()}}


def encode_control(status, **fields) -> bytes:
    """A control message of the worker (``"ready"`` with the callable's keywords, ``"load"`` or
    ``"load-raised"`` with a message): JSON of strings and lists of strings, bounded."""
    clean = {k: ([_text(x) for x in v][:256] if isinstance(v, (list, tuple)) else _text(v)) for k, v in fields.items()}
    return json.dumps({"status": str(status), **clean}).encode("utf-8")


def decode_control(data, *, statuses=("ready", "load", "load-raised")) -> dict:
    """A control message as a dict of strings (and lists of strings); a `WireError` otherwise."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > HEADER_LIMIT:
        raise WireError("the worker's message is not a short message of bytes")
    try:
        msg = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("the worker's message is not JSON") from None
    if not isinstance(msg, dict) or msg.get("status") not in statuses:
        raise WireError("the worker's message has no known status")
    for k, v in msg.items():
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise WireError(f"the worker's message field {k[:40]!r} is not text")
    return msg
