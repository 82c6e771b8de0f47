"""Suite conventions (the docs' testing page).

- Hypothesis: no deadline (Numba compiles on first call); derandomised when ``CI`` is set,
  so CI is reproducible; ``REFATTN_HYPOTHESIS_PROFILE`` picks a profile by hand
  (``thorough`` runs 500 examples).
- ``seed`` fixture: every statistical test takes its seed from refattn's own pytest plugin
  (:mod:`refattn.pytest_plugin`, the product users get): ``--refattn-seeds`` or ``REFATTN_SEEDS``
  sweeps it: ``"0-99"`` (a range), ``"3,7"`` (a list) or ``"5"``; the default is ``"0"``.
  A sweep shows a test is not tuned to one lucky seed.
- ``user_file``: a module of user implementations for ``refattn check`` targets.
- Markers (pyproject.toml): ``slow`` (left out of the default run), ``statistical``, ``gpu``,
  ``fuzz`` (the whole fuzz grid), ``mutation``.
- Warnings are errors (pyproject.toml).
"""

from __future__ import annotations

import os
import textwrap

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=40, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("REFATTN_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


#: Implementations a user might hand to ``refattn check``: correct, wrong, and broken in every way.
USER_MODULE = textwrap.dedent('''
    import numpy as np
    from refattn.check.planted import exact_attention

    def good(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask)

    def top_left(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask, alignment="top_left")

    def raises(q, k, v):
        raise RuntimeError("boom")

    def nan(q, k, v):
        return np.full((q.shape[-2], v.shape[-1]), np.nan)

    def wrong_shape(q, k, v):
        return np.zeros(3)

    def ints(q, k, v):
        return np.zeros((q.shape[-2], v.shape[-1]), dtype=int)

    def not_array(q, k, v):
        return object()

    def exits(m, d, seed):
        raise SystemExit(3)

    def hash_floats(x, seed):
        return np.random.default_rng(seed).random(x.shape[0])

    not_callable = 3

    # ways a callable can end, stall or damage the process that runs it
    def ends_process(q, k, v):
        import os
        os._exit(0)

    def hangs(q, k, v, causal=False, mask=None):
        import time
        time.sleep(10_000)

    def segfaults(q, k, v):
        import ctypes
        return ctypes.string_at(0)

    def allocates(q, k, v):
        return np.ones(2**33)  # 64 GiB

    def writes_into_v(q, k, v, causal=False, mask=None):
        out = exact_attention(q, k, v, causal=causal, mask=mask)
        v[...] = 0.0
        return out

    def writes_into_a_copy(q, k, v, causal=False, mask=None):
        w = v.copy()
        w[...] = 0.0
        return exact_attention(q, k, v, causal=causal, mask=mask)

    def prints(q, k, v, causal=False, mask=None):
        import os
        print("progress: 50%")
        os.write(2, b"a C library writes here\\n")
        return exact_attention(q, k, v, causal=causal, mask=mask)

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no message")

    def raises_unprintable(q, k, v):
        raise Unprintable()

    def calls_sys_exit(q, k, v):
        raise SystemExit(0)

    def interrupts(q, k, v):
        raise KeyboardInterrupt
''')


@pytest.fixture
def user_file(tmp_path):
    """A file of user implementations, good and broken, as ``refattn check`` targets (``path:name``)."""
    path = tmp_path / "user_impl.py"
    path.write_text(USER_MODULE)
    return path
