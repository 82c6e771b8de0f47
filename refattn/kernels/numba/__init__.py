"""CPU kernels: one file per loop, each a NumPy twin (the readable reference) beside a parallel
Numba version that a test holds to the twin."""
