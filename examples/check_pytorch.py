"""Check PyTorch implementations with refattn check: exact attention and FAVOR+.

Run: `python examples/check_pytorch.py` (needs torch: `pip install -e ".[torch]"`)

Each pair is written here in PyTorch (CPU): one correct, one with a subtle bug that passes a
casual glance and a quick allclose on square inputs.

- exact attention: `attention_explicit` (bottom-right causal mask, as FlashAttention >= 2.1
  and refattn) is correct; `attention_sdpa` calls `torch.nn.functional.scaled_dot_product_attention`
  with `is_causal=True`, whose mask is top-left aligned: identical for T == S, wrong for T != S
  when bottom-right is claimed.
- FAVOR+ kernel estimator: `favor_kernel` draws orthogonal features with Mezzadri's sign
  correction; `favor_kernel_plain_qr` uses torch.linalg.qr's Q as is, which is not Haar: the
  first coordinates get a fixed sign, and the estimate is biased on axis-aligned inputs.

The same checks from the command line:
    refattn check examples/check_pytorch.py:attention_sdpa --kind exact
    refattn check examples/check_pytorch.py:favor_kernel_plain_qr --kind kernel --features 64
The recorded output is in docs/check.md.
"""

import math

try:
    import torch
except ImportError:  # an optional extra: the example (and its smoke test) skip cleanly
    torch = None

from refattn.check import check


def attention_explicit(q, k, v, causal=False, mask=None):
    """softmax(q k^T / sqrt(H) + mask) v in float64, bottom-right causal alignment."""
    q, k, v = (torch.as_tensor(x).double() for x in (q, k, v))
    T, S = q.shape[-2], k.shape[-2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (..., T, S)
    allowed = torch.ones(T, S, dtype=torch.bool)
    if causal:
        allowed = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
    if mask is not None:
        allowed = allowed & torch.as_tensor(mask)
    logits = logits.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows that see no key: zeros
    return p @ v


def attention_sdpa(q, k, v, causal=False, mask=None):
    """The library call: top-left causal alignment (the subtle bug when T != S)."""
    q, k, v = (torch.as_tensor(x).double() for x in (q, k, v))
    m = None if mask is None else torch.as_tensor(mask)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=bool(causal))
    return out.nan_to_num(0.0)


def _orthogonal(m, d, gen, sign_correction):
    blocks = []
    for _ in range(-(-m // d)):
        Q, R = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        if sign_correction:
            Q = Q * torch.sign(torch.diagonal(R))  # Mezzadri 2007: makes Q Haar
        blocks.append(Q.T)
    norms = torch.sqrt(torch.distributions.Chi2(torch.tensor(float(d))).sample((m, 1)).double())
    return torch.cat(blocks)[:m] * norms


def favor_kernel(q, k, seed, m=64, sign_correction=True):
    """FAVOR+ estimate of exp(q k^T / sqrt(H)) with orthogonal random features."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # the chi norms use the global generator: seeded here
    q, k = (torch.as_tensor(x).double() for x in (q, k))
    W = _orthogonal(m, q.shape[-1], gen, sign_correction)  # (m, H)
    root = q.shape[-1] ** -0.25

    def phi(x):
        x = x * root
        return torch.exp(x @ W.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    return phi(q) @ phi(k).T


def favor_kernel_plain_qr(q, k, seed, m=64):
    return favor_kernel(q, k, seed, m=m, sign_correction=False)


def main():
    if torch is None:
        print("torch is not installed: skipping (pip install -e '.[torch]')")
        return 0
    torch.set_num_threads(1)
    results = {}
    for name, fn, kind, opts in [
        ("attention_explicit", attention_explicit, "exact", {}),
        ("attention_sdpa", attention_sdpa, "exact", {}),
        ("favor_kernel", favor_kernel, "kernel", {"m": 64, "n_draws": 1000}),
        ("favor_kernel_plain_qr", favor_kernel_plain_qr, "kernel", {"m": 64, "n_draws": 1000}),
    ]:
        rep = check(fn, kind, seed=0, **opts)
        print(rep.format_table(), end="\n\n")
        results[name] = rep.passed
    expected = {"attention_explicit": True, "attention_sdpa": False, "favor_kernel": True,
                "favor_kernel_plain_qr": False}
    assert results == expected, results
    return 0


if __name__ == "__main__":
    main()
