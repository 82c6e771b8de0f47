// Sparse attention on a CSR support (refattn.lsh.sparse; the docs' LSH page), float64:
// SDDMM (one thread per stored entry), row softmax with lse (one thread per row), SpMM
// (one thread per (row, output column)).
#include "refattn_cuda.cuh"

// logits[n] = scale * q[rows[n]] . k[indices[n]] + entry_bias[n]; q (T, H), k (S, H).
RA_GLOBAL void sddmm(i64 n_threads, const double* q, const double* k, const i64* rows, const i64* indices,
                     const double* entry_bias, double scale, i64 H, double* logits) {
    RA_FOR_EACH_THREAD(n, n_threads) {
        logits[n] = ra_dot(q + rows[n] * H, k + indices[n] * H, H) * scale + entry_bias[n];
    }
}

// In place: logits of row i -> probabilities exp(l - m) / sum; lse[i] = m + log(sum).
// A row that is empty or all -inf gets probabilities 0 and lse = -inf.
RA_GLOBAL void row_softmax(i64 n_threads, const i64* indptr, double* p, double* lse) {
    RA_FOR_EACH_THREAD(i, n_threads) {
        const i64 a = indptr[i], b = indptr[i + 1];
        const double neg_inf = ra_neg_inf(0.0);
        double m = neg_inf;
        for (i64 n = a; n < b; ++n) m = p[n] > m ? p[n] : m;
        if (m == neg_inf) {
            for (i64 n = a; n < b; ++n) p[n] = 0.0;
            lse[i] = neg_inf;
            continue;
        }
        double total = 0;
        for (i64 n = a; n < b; ++n) {
            p[n] = ra_exp(p[n] - m);
            total += p[n];
        }
        for (i64 n = a; n < b; ++n) p[n] /= total;
        lse[i] = m + ra_log(total);
    }
}

// out[i, h] = sum_{n in row i} p[n] v[indices[n], h]; v (S, Hv), out (T, Hv).
RA_GLOBAL void spmm(i64 n_threads, const i64* indptr, const i64* indices, const double* p, const double* v,
                    i64 Hv, double* out) {
    RA_FOR_EACH_THREAD(t, n_threads) {
        const i64 i = t / Hv, h = t % Hv;
        double acc = 0;
        for (i64 n = indptr[i]; n < indptr[i + 1]; ++n) acc += p[n] * v[indices[n] * Hv + h];
        out[t] = acc;
    }
}
