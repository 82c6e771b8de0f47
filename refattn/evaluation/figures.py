"""One look for the comparison figures: oracles and estimators told apart, legends outside the data,
the data named in the title.

Every figure of the report, the examples and the tutorials draws a method with [`style`][refattn.evaluation.figures.style]:
an oracle (it sees the exact matrix: best sparse, best low-rank, sparse + low-rank) as a solid
thick line, an estimator (Performer, Scatterbrain, Reformer, ...) as a dashed line, each method
with its own colour and marker, stable across figures. [`data_title`][refattn.evaluation.figures.data_title] says whether the data
is real (the embedded MiniLM heads) or synthetic. [`finish`][refattn.evaluation.figures.finish] lays out and saves (or returns)
a figure. Needs matplotlib (``pip install matplotlib``) only when a figure is drawn.
"""

from __future__ import annotations

from refattn._extras import install_hint
from refattn._validation import InputError
from refattn.evaluation.methods import REGISTRY

__all__ = ["style", "label", "data_title", "legend_outside", "finish", "pyplot_or_error"]

_MARKERS = "osD^vP*Xph<>8dH"
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22", "#393b79", "#637939", "#843c39", "#e7ba52", "#5254a3")


#: oracles outside the registry (the regime study's): drawn like the registry's oracles
EXTRA_ORACLES = {"robust PCA split": "#555555"}


def style(method: str) -> dict:
    """Matplotlib keywords for ``method``'s line: colour and marker by its place in the registry,
    solid and thick for an oracle, dashed for an estimator (unknown names: grey, dotted)."""
    names = list(REGISTRY)
    if method in EXTRA_ORACLES:
        return {"color": EXTRA_ORACLES[method], "marker": "X", "ls": "-", "lw": 1.6}
    if method not in REGISTRY:
        return {"color": "#555555", "marker": ".", "ls": ":", "lw": 1.2}
    i = names.index(method)
    oracle = REGISTRY[method].oracle
    return {"color": _PALETTE[i % len(_PALETTE)], "marker": _MARKERS[i % len(_MARKERS)],
            "ls": "-" if oracle else "--", "lw": 2.2 if oracle else 1.3}


def label(method: str) -> str:
    """The legend entry: the method's name, with ``(oracle)`` for the ones that see the exact matrix."""
    oracle = method in EXTRA_ORACLES or (method in REGISTRY and REGISTRY[method].oracle)
    return f"{method} (oracle)" if oracle else method


def data_title(name: str) -> str:
    """A figure title's data part: real attention or synthetic, by the data's name."""
    base = name.split(" (temperature")[0]
    if base == "minilm":
        return "real attention: all-MiniLM-L6-v2, 9 heads on the Declaration of Independence"
    return f"synthetic data: {base}"


def legend_outside(ax, **kwargs):
    """The legend to the right of the axes, clear of the data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def pyplot_or_error():
    """``matplotlib.pyplot`` with the Agg backend (unless one is already chosen), or an InputError saying
    how to install it."""
    try:
        import matplotlib

        if "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"--plot: needs matplotlib: {install_hint('plots')}") from None
    return plt


def finish(fig, path=None):
    """Lay out ``fig``; with ``path``, write it (PNG at 120 dpi), close it and return the path; without,
    return the figure open (a notebook or the docs' gallery shows it)."""
    fig.tight_layout()
    if path is None:
        return fig
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
