// FAVOR+ causal attention by chunked prefix sums (Choromanski et al. 2021, section 2.6;
// refattn.performer, the docs' Performer page). With features phi_q (T, F), phi_k (S, F) and
// V1 = [V | 1] (S, Hv + 1), query i sees keys j < e_i = min(S, i + offset + 1) and
//   [num_i | den_i] = phi_q[i] . (P[c_i] + sum_{c_i C <= j < e_i} phi_k[j] V1[j]^T),
// where c_i = floor(e_i / C) and P[c] = sum_{j < c C} phi_k[j] V1[j]^T (chunks of C keys).
// Three kernels: per-chunk sums, an exclusive scan over chunks, the rows. F = double or float.
#include "refattn_cuda.cuh"

template <typename F>
RA_DEVICE F v1(const F* v, i64 j, i64 h, i64 Hv) { return h < Hv ? v[j * Hv + h] : F(1); }

// P[c + 1, f, h] = sum_{j in chunk c} phi_k[j, f] V1[j, h]; P (n_chunks + 1, F, Hv + 1), P[0] untouched.
template <typename F>
RA_DEVICE void chunk_sums(i64 t, const F* pk, const F* v, i64 S, i64 Fd, i64 Hv, i64 C, F* P) {
    const i64 W = Hv + 1;
    const i64 c = t / (Fd * W), f = (t / W) % Fd, h = t % W;
    const i64 j1 = (c + 1) * C < S ? (c + 1) * C : S;
    F acc = 0;
    for (i64 j = c * C; j < j1; ++j) acc += pk[j * Fd + f] * v1(v, j, h, Hv);
    P[(c + 1) * Fd * W + f * W + h] = acc;
}

// P[c] <- P[0] + ... + P[c] for c = 1..n_chunks: one thread per (f, h); P[0] = 0.
template <typename F>
RA_DEVICE void scan_chunks(i64 t, i64 n_chunks, i64 FW, F* P) {
    F acc = 0;
    P[t] = 0;
    for (i64 c = 1; c <= n_chunks; ++c) {
        acc += P[c * FW + t];
        P[c * FW + t] = acc;
    }
}

// out[i, h] = [num_i | den_i][h]; out (T, Hv + 1).
template <typename F>
RA_DEVICE void causal_rows(i64 t, const F* pq, const F* pk, const F* v, const F* P, i64 S, i64 Fd, i64 Hv,
                           i64 C, i64 offset, F* out) {
    const i64 W = Hv + 1;
    const i64 i = t / W, h = t % W;
    const i64 last = i + offset + 1;
    const i64 e = last < 0 ? 0 : (last < S ? last : S);
    const i64 c = e / C;
    const F* qi = pq + i * Fd;
    F acc = 0;
    for (i64 f = 0; f < Fd; ++f) acc += qi[f] * P[c * Fd * W + f * W + h];
    for (i64 j = c * C; j < e; ++j) acc += ra_dot(qi, pk + j * Fd, Fd) * v1(v, j, h, Hv);
    out[t] = acc;
}

#define RA_FAVOR_KERNELS(F, SUFFIX)                                                                   \
    RA_GLOBAL void favor_chunk_sums_##SUFFIX(i64 n_threads, const F* pk, const F* v, i64 S, i64 Fd,    \
                                             i64 Hv, i64 C, F* P) {                                  \
        RA_FOR_EACH_THREAD(t, n_threads) chunk_sums<F>(t, pk, v, S, Fd, Hv, C, P);                   \
    }                                                                                                \
    RA_GLOBAL void favor_scan_chunks_##SUFFIX(i64 n_threads, i64 n_chunks, F* P) {                    \
        RA_FOR_EACH_THREAD(t, n_threads) scan_chunks<F>(t, n_chunks, n_threads, P);                   \
    }                                                                                                \
    RA_GLOBAL void favor_causal_rows_##SUFFIX(i64 n_threads, const F* pq, const F* pk, const F* v,    \
                                              const F* P, i64 S, i64 Fd, i64 Hv, i64 C, i64 offset,  \
                                              F* out) {                                              \
        RA_FOR_EACH_THREAD(t, n_threads) causal_rows<F>(t, pq, pk, v, P, S, Fd, Hv, C, offset, out); \
    }

RA_FAVOR_KERNELS(double, f64)
RA_FAVOR_KERNELS(float, f32)
