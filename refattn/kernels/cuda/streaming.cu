// Streaming exact attention (the oracle on the GPU): one thread per query row, online softmax
// over tiles of TILE keys (Milakov & Gimelshein 2018; Dao et al. 2022, Algorithm 1;
// the docs' exact-attention page; the CPU twin is refattn.kernels.numba.streaming). Per tile with logits s:
//   m' = max(m, max s),  l' = l e^{m - m'} + sum e^{s - m'},  o' = o e^{m - m'} + sum e^{s - m'} v.
// The running o lives in the output row; out = o / l, lse = m + log l at the end. A row that
// sees no key gets zeros and lse = -inf. Query i sees key j iff j < key_length,
// j <= i + offset, mask[i, j] (if has_mask) and its logit is not -inf (bias may hold -inf).
// q (T, H), k (S, H), v (S, Hv), mask (T, S) uint8, bias (T, S); F = double or float.
#include "refattn_cuda.cuh"

#define RA_TILE 32

template <typename F>
RA_DEVICE void stream_row(i64 i, const F* q, const F* k, const F* v, F scale, i64 offset,
                          const unsigned char* mask, int has_mask, const F* bias, int has_bias,
                          i64 key_length, i64 S, i64 H, i64 Hv, F* out, F* lse) {
    const F neg_inf = ra_neg_inf(F(0));
    const F* qi = q + i * H;
    F* oi = out + i * Hv;
    for (i64 h = 0; h < Hv; ++h) oi[h] = 0;
    F m = neg_inf, l = 0;
    const i64 last = i + offset + 1;
    const i64 j_end = last < key_length ? (last < 0 ? 0 : last) : key_length;
    F s[RA_TILE];
    for (i64 j0 = 0; j0 < j_end; j0 += RA_TILE) {
        const i64 bk = j_end - j0 < RA_TILE ? j_end - j0 : RA_TILE;
        F tile_max = neg_inf;
        for (i64 c = 0; c < bk; ++c) {
            const i64 j = j0 + c;
            F x = ra_dot(qi, k + j * H, H) * scale;
            if (has_bias) x += bias[i * S + j];
            if (has_mask && !mask[i * S + j]) x = neg_inf;
            s[c] = x;
            tile_max = x > tile_max ? x : tile_max;
        }
        const F m_new = tile_max > m ? tile_max : m;
        if (m_new == neg_inf) continue;  // nothing visible yet: l = 0, o = 0
        const F alpha = ra_exp(m - m_new);  // 0 while m = -inf
        l *= alpha;
        for (i64 h = 0; h < Hv; ++h) oi[h] *= alpha;
        for (i64 c = 0; c < bk; ++c) {
            const F p = ra_exp(s[c] - m_new);  // 0 where masked
            l += p;
            const F* vj = v + (j0 + c) * Hv;
            for (i64 h = 0; h < Hv; ++h) oi[h] += p * vj[h];
        }
        m = m_new;
    }
    if (l > 0) {
        for (i64 h = 0; h < Hv; ++h) oi[h] /= l;
        lse[i] = m + ra_log(l);
    } else {
        for (i64 h = 0; h < Hv; ++h) oi[h] = 0;
        lse[i] = neg_inf;
    }
}

#define RA_STREAM_KERNEL(F, SUFFIX)                                                                  \
    RA_GLOBAL void stream_attention_##SUFFIX(i64 n_threads, const F* q, const F* k, const F* v,      \
                                             F scale, i64 offset, const unsigned char* mask,          \
                                             int has_mask, const F* bias, int has_bias,               \
                                             i64 key_length, i64 S, i64 H, i64 Hv, F* out, F* lse) {  \
        RA_FOR_EACH_THREAD(i, n_threads)                                                             \
            stream_row<F>(i, q, k, v, scale, offset, mask, has_mask, bias, has_bias, key_length, S,  \
                          H, Hv, out, lse);                                                          \
    }

RA_STREAM_KERNEL(double, f64)
RA_STREAM_KERNEL(float, f32)
