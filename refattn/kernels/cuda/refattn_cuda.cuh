// Shared definitions of refattn's CUDA kernels (refattn/kernels/cuda/*.cu).
//
// Every kernel is written as a grid-stride loop over independent "threads" with no shared
// memory and no synchronisation, so the same source has two builds:
//   - nvcc / NVRTC (__CUDACC__ defined): RA_GLOBAL is `extern "C" __global__` and
//     RA_FOR_EACH_THREAD is the usual grid-stride loop; CuPy loads it with RawModule;
//   - a host C++ compiler (g++ -x c++): RA_GLOBAL is `extern "C"` and RA_FOR_EACH_THREAD a
//     serial loop over the same thread indices; refattn.kernels.cuda_host loads the shared
//     library with ctypes, so the kernel logic is tested against the NumPy twins on a
//     machine without a GPU (proofs_tests/test_cuda_kernels.py).
// Every kernel's first argument is its thread count n_threads; the launcher picks the grid.
#pragma once

typedef long long i64;

#ifdef __CUDACC__
#define RA_GLOBAL extern "C" __global__
#define RA_DEVICE __device__ __forceinline__
#define RA_FOR_EACH_THREAD(t, n)                                                  \
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < (n);            \
         t += (i64)blockDim.x * gridDim.x)
RA_DEVICE double ra_neg_inf(double) { return __longlong_as_double(0xfff0000000000000ULL); }
RA_DEVICE float ra_neg_inf(float) { return __int_as_float(0xff800000); }
RA_DEVICE double ra_exp(double x) { return exp(x); }
RA_DEVICE float ra_exp(float x) { return expf(x); }
RA_DEVICE double ra_log(double x) { return log(x); }
RA_DEVICE float ra_log(float x) { return logf(x); }
#else
#include <cmath>
#include <limits>
#define RA_GLOBAL extern "C"
#define RA_DEVICE static inline
#define RA_FOR_EACH_THREAD(t, n) for (i64 t = 0; t < (n); ++t)
template <typename F> RA_DEVICE F ra_neg_inf(F) { return -std::numeric_limits<F>::infinity(); }
RA_DEVICE double ra_exp(double x) { return std::exp(x); }
RA_DEVICE float ra_exp(float x) { return std::exp(x); }
RA_DEVICE double ra_log(double x) { return std::log(x); }
RA_DEVICE float ra_log(float x) { return std::log(x); }
using std::floor;
#endif

// Sequential dot product of two contiguous length-n vectors, in the precision F.
template <typename F>
RA_DEVICE F ra_dot(const F* a, const F* b, i64 n) {
    F s = 0;
    for (i64 h = 0; h < n; ++h) s += a[h] * b[h];
    return s;
}

// Dot product of the contiguous x (length n) with a strided column c[h * stride].
RA_DEVICE double ra_dot_strided(const double* x, const double* c, i64 n, i64 stride) {
    double s = 0;
    for (i64 h = 0; h < n; ++h) s += x[h] * c[h * stride];
    return s;
}
