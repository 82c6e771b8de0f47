"""The comparison figures' one look (refattn.evaluation.figures): oracles and estimators told apart,
every method its own colour and marker, the data named, legends outside the data. Deterministic."""

import pytest

from refattn.evaluation.figures import data_title, finish, label, legend_outside, pyplot_or_error, style
from refattn.evaluation.methods import REGISTRY

plt = pytest.importorskip("matplotlib.pyplot", reason="pip install -e '.[plots]'")


def test_oracles_are_solid_and_estimators_dashed():
    for name, method in REGISTRY.items():
        assert style(name)["ls"] == ("-" if method.oracle else "--"), name
        assert label(name).endswith("(oracle)") == bool(method.oracle), name


def test_every_method_has_its_own_colour_and_marker():
    looks = [(style(n)["color"], style(n)["marker"]) for n in REGISTRY]
    assert len(set(looks)) == len(looks)
    assert style("not a method")["ls"] == ":"


@pytest.mark.parametrize("name,real", [("minilm", True), ("minilm (temperature 2)", True),
                                       ("gaussian (temperature 1)", False), ("clustered", False)])
def test_the_title_says_real_or_synthetic(name, real):
    title = data_title(name)
    assert title.startswith("real attention") is real and title.startswith("synthetic") is (not real)


def test_finish_returns_the_open_figure_or_writes_the_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="x")
    legend = legend_outside(ax)
    fig.canvas.draw()
    assert legend.get_window_extent().x0 > ax.get_window_extent().x1  # right of the axes
    assert finish(fig) is fig and plt.fignum_exists(fig.number)
    path = tmp_path / "f.png"
    assert finish(fig, path) == path and path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)
    assert pyplot_or_error() is plt


def test_the_regimes_figure_names_its_data_and_marks_oracles():
    from refattn.evaluation.datasets import gaussian_inputs
    from refattn.evaluation.report import plot_error_vs_entropy, run_comparison

    data = gaussian_inputs(16, 4, 0, n_heads=2)
    rows = run_comparison(data, budget=4, methods=("best sparse", "performer"), temperatures=(0.5, 2.0),
                          progress=False)
    fig = plot_error_vs_entropy(rows)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "best sparse (oracle)" in labels and "performer" in labels
    assert ax.get_title().startswith("synthetic data: gaussian")
    plt.close(fig)
