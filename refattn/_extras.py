"""How to install an optional dependency, in words that work whether refattn came from a clone or
a wheel: the package itself (always on PyPI), or the extra from a clone's checkout."""

from __future__ import annotations

#: extra -> the PyPI requirement it adds (pyproject.toml's optional-dependencies)
EXTRAS = {"dask": "dask[array] distributed", "plots": "matplotlib", "gpu": "cupy-cuda12x", "torch": "torch", "jax": "jax", "bench": "psutil",
          "peers": "torch performer-pytorch reformer-pytorch",
          "docs": "mkdocs-material mkdocstrings[python] mkdocs-gallery playwright"}


def install_hint(extra: str) -> str:
    """``pip install PACKAGE (or, in a clone of refattn: pip install -e '.[EXTRA]')``."""
    return f"pip install {EXTRAS[extra]} (or, in a clone of refattn: pip install -e '.[{extra}]')"
