"""The figures fit the book's text column: panels wrap instead of widening, legends sit outside the data."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from snipnb import plots  # noqa: E402


def drawn_width(fig) -> float:
    """The figure's width in inches as the page gets it (saved with a tight bounding box, as inline does)."""
    fig.canvas.draw()
    return fig.get_tightbbox(fig.canvas.get_renderer()).width


def summary():
    return pd.DataFrame([dict(k=k, method=m, mean=50.0 + i + k, std=1.0)
                         for i, m in enumerate(["dense", "snip", "snip_pseudo_labels", "random", "shuffled_snip"])
                         for k in (1, 2, 5, 10)])


@pytest.mark.parametrize("n, ncols, shape", [(1, 2, (1, 1)), (3, 2, (2, 2)), (6, 3, (2, 3)), (4, 1, (4, 1))])
def test_panels_wrap_into_rows_at_page_width_and_drop_the_unused_cells(n, ncols, shape):
    fig, axes = plots.panels(n, ncols=ncols)
    assert len(axes) == n == len(fig.axes)
    assert fig.get_size_inches()[0] == pytest.approx(plots.PAGE_WIDTH)
    rows, cols = shape
    assert {ax.get_subplotspec().rowspan.start for ax in axes} == set(range(rows))
    assert max(ax.get_subplotspec().colspan.stop for ax in axes) == cols
    plt.close(fig)


def test_a_panel_count_below_one_is_refused_with_its_value():
    with pytest.raises(ValueError, match="n=0"):
        plots.panels(0)


def test_a_shared_legend_names_each_line_once_below_the_panels_and_leaves_them_none():
    fig, axes = plots.panels(4)
    for ax in axes:
        plots.errorbars(summary(), x="k", hue="method", ax=ax, logx=True)
    legend = plots.shared_legend(fig, axes)
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "snip", "snip_pseudo_labels", "random",
                                                          "shuffled_snip"]
    assert all(ax.get_legend() is None for ax in axes)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    below = min(ax.get_tightbbox(renderer).y0 for ax in axes)
    assert legend.get_window_extent(renderer).y1 <= below + 1  # under every panel, over none
    assert drawn_width(fig) <= plots.PAGE_WIDTH * 1.05
    plt.close(fig)


def test_a_legend_beside_its_axis_covers_none_of_its_data():
    ax = plots.errorbars(summary(), x="k", hue="method")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    plt.close(fig)


def test_an_image_grid_of_six_wraps_into_two_rows_at_page_width():
    fig = plots.image_grid({f"map {i}": np.random.default_rng(i).random((28, 28)) for i in range(6)}, ncols=3)
    images = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(images) == 6 and len({ax.get_subplotspec().rowspan.start for ax in images}) == 2
    assert drawn_width(fig) <= plots.PAGE_WIDTH * 1.05
    plt.close(fig)
