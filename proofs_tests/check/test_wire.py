"""The worker's replies (refattn.check.wire): numeric arrays and bounded text round-trip exactly;
anything else (an object or structured dtype, a pickle, a header that lies about sizes, trailing
bytes, oversized bodies) is refused with a WireError, never unpickled. Deterministic."""

import json
import pickle
import struct

import numpy as np
import pytest

from refattn.check.wire import (TEXT_LIMIT, WireError, decode_control, decode_reply, encode_control,
                                encode_reply)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_, np.complex128])
def test_numeric_arrays_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    got = decode_reply(encode_reply("ok", [a]), max_bytes=1 << 20)
    assert got["status"] == "ok" and got["arrays"].dtype == a.dtype and np.array_equal(got["arrays"], a)
    parts = decode_reply(encode_reply("ok", [a, a[0]], is_tuple=True), max_bytes=1 << 20)["arrays"]
    assert isinstance(parts, tuple) and len(parts) == 2 and parts[1].shape == (3, 4)


def test_big_endian_and_strided_arrays_arrive_as_values():
    a = np.arange(6, dtype=">f8").reshape(2, 3)[:, ::2]
    got = decode_reply(encode_reply("ok", [a]), max_bytes=1 << 20)["arrays"]
    assert np.array_equal(got, a) and got.dtype == np.dtype("<f8")


def test_texts_are_bounded_and_kept():
    r = decode_reply(encode_reply("raised", error_type="ValueError", message="x" * 10**6, changed=["q"],
                                  printed="p" * 10**6), max_bytes=0)
    assert r["status"] == "raised" and r["error_type"] == "ValueError" and len(r["message"]) == TEXT_LIMIT
    assert r["changed"] == ["q"] and len(r["printed"]) == TEXT_LIMIT and r["arrays"] is None


def test_object_and_structured_results_are_not_sent():
    for a in (np.array([object()]), np.zeros(2, dtype=[("x", "f8"), ("y", "O")]), np.zeros(2, "V8"),
              np.array(["a"]), np.zeros(2, "M8[s]")):
        with pytest.raises(WireError):
            encode_reply("ok", [a])


def _forged(header, body=b""):
    raw = json.dumps(header).encode()
    return struct.pack(">Q", len(raw)) + raw + body


@pytest.mark.parametrize("data", [
    pickle.dumps(("ok", np.zeros(3), None, [], "")),  # what the old channel carried: never unpickled
    b"\x00" * 3,
    struct.pack(">Q", 1 << 40) + b"{}",  # a header longer than the message
    _forged({"status": "PASS", "arrays": []}),  # an unknown status
    _forged({"status": "ok", "arrays": [{"dtype": "|O", "shape": [1]}]}, b"\x00" * 8),  # object dtype
    _forged({"status": "ok", "arrays": [{"dtype": "[('x', '<f8')]", "shape": [1]}]}, b"\x00" * 8),
    _forged({"status": "ok", "arrays": [{"dtype": "<f8", "shape": [2**40]}]}, b"\x00" * 8),  # lies about its size
    _forged({"status": "ok", "arrays": [{"dtype": "<f8", "shape": [-1]}]}, b"\x00" * 8),
    _forged({"status": "ok", "arrays": [{"dtype": "<f8", "shape": [True]}]}, b"\x00" * 8),
    _forged({"status": "ok", "arrays": [{"dtype": "<f8", "shape": [1]}]}, b"\x00" * 16),  # trailing bytes
    _forged({"status": "ok", "arrays": [], "message": {"a": 1}}),  # a non-string text
    _forged({"status": "ok", "arrays": "x"}),
], ids=lambda d: str(len(d)))
def test_malformed_or_hostile_replies_are_refused(data):
    with pytest.raises(WireError):
        decode_reply(data, max_bytes=1 << 20)


def test_the_size_limit_holds():
    a = np.zeros(1000)
    with pytest.raises(WireError, match="more than the 100 allowed"):
        decode_reply(encode_reply("ok", [a]), max_bytes=100)


def test_control_messages_are_text_only():
    msg = decode_control(encode_control("ready", keywords=["causal", "mask"]))
    assert msg == {"status": "ready", "keywords": ["causal", "mask"]}
    for bad in (pickle.dumps(("ready", ["causal"])), b'{"status": "ready", "keywords": [1]}', b'{"status": "go"}',
                b"[1]"):
        with pytest.raises(WireError):
            decode_control(bad)
