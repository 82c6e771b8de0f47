"""SEA's estimated attention mask (Lee et al. 2024) beside the teacher, on a language-model-like process.

Run: `python examples/sea_mask.py [--T 256] [--plot out.png]`

Causal attention with locality and an attention sink (refattn.evaluation.methods.local_sink_inputs). The script
1. learns a decoder by distillation on 4 calibration inputs and shows it beats the fixed decoder on
   held-out inputs (KL of the binned teacher against A~);
2. checks the KL chain rule on a held-out input: the oracle decoder reaches the floor, no decoder goes below;
3. prints SEA (fixed, learned, oracle decoders) against Performer alone and a window at the same memory
   (recall of the true top-k keys, captured mass, output error);
4. with --plot (needs matplotlib), draws teacher, estimate and mask.
"""

import argparse

import numpy as np

from refattn import attention_probabilities
from refattn.evaluation.datasets import local_sink_inputs
from refattn.performer.projections import projection
from refattn.sea import binned_attention, kernel_estimate, kl_decomposition, row_lengths, sea_attention
from refattn.sea.decoder import distill_decoder, fixed_decoder
from refattn.sea.metrics import compare_at_memory, interpretable, plot_interpretable, sea_sweep


def mean_kl(teacher, est):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(teacher > 0, teacher * (np.log(teacher) - np.log(est)), 0.0).sum(axis=1).mean())


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--topk", type=int, default=16)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--plot", help="write teacher | estimate | mask to this PNG (needs matplotlib)")
    args = ap.parse_args()
    T, H, K = args.T, args.H, args.bins
    rng = np.random.default_rng(2024)
    W = projection("orthogonal", args.m, H, np.random.default_rng(1))
    decoder = distill_decoder([local_sink_inputs(T, H, rng) for _ in range(4)], n_bins=K, W=W, causal=True)
    print("learned decoder theta:", np.round(decoder.theta, 3))

    L = row_lengths(T, T, True)
    from refattn.sea import compressed_softmax

    gains = []
    for _ in range(10):
        q, k = local_sink_inputs(T, H, rng)
        E, _ = kernel_estimate(q, k, n_basis=K, W=W, causal=True)
        t = binned_attention(q, k, K, causal=True)
        kls = [mean_kl(t, compressed_softmax(d(E, L, T, K), L, K)) for d in (fixed_decoder, decoder)]
        gains.append(kls[0] - kls[1])
    print(f"held-out KL(A_down || A~): learned is lower by {np.mean(gains):.3f} nats on average (10 inputs)")
    assert np.mean(gains) > 0, "distillation should beat the fixed decoder on held-out inputs"

    q, k = local_sink_inputs(T, H, rng)
    v = rng.normal(size=(T, 8))
    P = attention_probabilities(q, k, causal=True)
    print("\nKL chain rule on a held-out input (mean over rows, nats):")
    print(f"{'decoder':>8} {'KL(A||up A~)':>13} {'KL(A_down||A~)':>15} {'floor':>8}")
    for name, dec in (("fixed", "fixed"), ("learned", decoder), ("oracle", "oracle")):
        res = sea_attention(q, k, v, n_bins=K, topk=args.topk, W=W, decoder=dec, causal=True)
        total, comp, floor = kl_decomposition(P, res.estimate, res.lengths)
        print(f"{name:>8} {total.mean():>13.4f} {comp.mean():>15.4f} {floor.mean():>8.4f}")
        assert np.allclose(total, comp + floor, rtol=1e-9, atol=1e-12)
        if name == "oracle":
            assert np.allclose(comp, 0.0, atol=1e-12)

    print(f"\nagainst the oracle at the same memory (K + k = {K + args.topk} numbers per query):")
    rows = compare_at_memory(q, k, v, n_bins=K, topk=args.topk, m=args.m, rng=1, causal=True,
                             decoders={"fixed": "fixed", "learned": decoder, "oracle": "oracle"})
    print(f"{'method':>14} {'recall':>7} {'captured':>9} {'min':>6} {'out err':>8}")
    for r in rows:
        print(f"{r.method:>14} {r.recall:>7.3f} {r.captured_mean:>9.3f} {r.captured_min:>6.3f} {r.output_error:>8.3f}")

    print("\nas K and k vary (oracle decoder: what a perfect width-K estimate gives):")
    print(f"{'K':>4} {'k':>4} {'decoder':>14} {'recall':>7} {'captured':>9} {'out err':>8}")
    for K_, k_, r in sea_sweep(q, k, v, n_bins_list=(8, 16, 32), topk_list=(8, 16, 32), m=args.m, rng=1, causal=True,
                               decoders={"oracle": "oracle"}):
        print(f"{K_:>4} {k_:>4} {r.method:>14} {r.recall:>7.3f} {r.captured_mean:>9.3f} {r.output_error:>8.3f}")

    # the figure: written with --plot, shown in the docs' gallery
    res = sea_attention(q, k, v, n_bins=K, topk=args.topk, W=W, decoder=decoder, causal=True)
    try:
        plot_interpretable(interpretable(q, k, res, causal=True), args.plot,
                           title=f"SEA, learned decoder: T = {T}, K = {K}, k = {args.topk}")
        if args.plot:
            print("wrote", args.plot)
    except ImportError as exc:  # matplotlib missing: the claims above are checked, the figure is not drawn
        print(exc)


if __name__ == "__main__":
    main()
