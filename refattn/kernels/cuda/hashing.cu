// LSH bucket ids (refattn.lsh; the docs' LSH page). One thread per (table or round, point).
// x (n, d) float64 row-major; codes/buckets (tables, n) int64.
#include "refattn_cuda.cuh"

// SimHash (Charikar 2002): bit b of table t is [planes[t, b] . x > 0]; planes (tables, r, d).
RA_GLOBAL void simhash_codes(i64 n_threads, const double* x, const double* planes, i64 n, i64 d, i64 r,
                             i64* codes) {
    RA_FOR_EACH_THREAD(t, n_threads) {
        const i64 table = t / n, i = t % n;
        const double* xi = x + i * d;
        i64 code = 0;
        for (i64 b = 0; b < r; ++b) {
            if (ra_dot(xi, planes + (table * r + b) * d, d) > 0.0) code |= (i64)1 << b;
        }
        codes[t] = code;
    }
}

// argmax over [p, -p] with p_c = sum_h x_h M[round, h * stride_h + c * stride_c], c < half;
// the first index wins ties (as numpy.argmax). Reformer's angular hash (Kitaev et al. 2020,
// section 2.2): M = R (rounds, d, half), stride_h = half, stride_c = 1. Cross-polytope
// (Andoni et al. 2015): M = rotations (rounds, d, d), half = d, stride_h = 1, stride_c = d.
RA_GLOBAL void argmax_buckets(i64 n_threads, const double* x, const double* M, i64 n, i64 d, i64 half,
                              i64 stride_h, i64 stride_c, i64* buckets) {
    RA_FOR_EACH_THREAD(t, n_threads) {
        const i64 round = t / n, i = t % n;
        const double* xi = x + i * d;
        const double* Mr = M + round * d * half;
        double best_pos = 0, best_neg = 0;
        i64 arg_pos = 0, arg_neg = 0;
        for (i64 c = 0; c < half; ++c) {
            const double p = ra_dot_strided(xi, Mr + c * stride_c, d, stride_h);
            if (c == 0 || p > best_pos) { best_pos = p; arg_pos = c; }
            if (c == 0 || -p > best_neg) { best_neg = -p; arg_neg = c; }
        }
        buckets[t] = best_neg > best_pos ? half + arg_neg : arg_pos;
    }
}

// E2LSH (Datar et al. 2004): floor((a_t . x + b_t) / width); a (tables, d), b (tables,).
RA_GLOBAL void e2lsh_buckets(i64 n_threads, const double* x, const double* a, const double* b, double width,
                             i64 n, i64 d, i64* buckets) {
    RA_FOR_EACH_THREAD(t, n_threads) {
        const i64 table = t / n, i = t % n;
        buckets[t] = (i64)floor((ra_dot(x + i * d, a + table * d, d) + b[table]) / width);
    }
}
