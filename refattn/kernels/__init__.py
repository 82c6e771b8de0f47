"""Hand-written kernels: for each loop a NumPy twin (the readable reference) and a
parallel Numba CPU version; a test asserts that the two agree (proofs_tests/test_kernels_*).

Modules here take plain 2-D arrays that [`refattn.problem`][refattn.problem] has already validated;
they do no input checking of their own. Setting ``REFATTN_DISABLE_NUMBA=1`` makes every
dispatcher fall back to the NumPy twin.
"""

import os


def numba_enabled() -> bool:
    """True when Numba imports and ``REFATTN_DISABLE_NUMBA`` is not set to a true value."""
    if os.environ.get("REFATTN_DISABLE_NUMBA", "").lower() in ("1", "true", "yes"):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a hard dependency
        return False
    return True
