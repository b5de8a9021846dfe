"""molescope.evaluation.charts: the one bar chart (bars where and as tall as the values say, side by side per
series, colours, legend, rotated labels, log scale) and its PNG bytes (the size asked, the figure closed)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.colors import to_rgba
from PIL import Image

from molescope.evaluation.charts import GROUP_WIDTH, MAX_UPRIGHT_LABELS, bar_chart, png_bytes


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.fixture(autouse=True)
def no_figure_left_open():
    """Each test closes what it opens (charts run in long-lived drivers and workers)."""
    yield
    plt.close("all")


def bars(fig) -> list:
    return list(fig.axes[0].patches)


# ---------------------------------------------------------------------------------------------- PNG bytes


@pytest.mark.parametrize(("size", "dpi"), [((8, 4.5), 100), ((4, 3), 50), ((6.4, 2), 125)])
def test_png_decodes_to_the_size_asked(size, dpi):
    png = png_bytes(bar_chart(["a", "b"], {"n": [1, 2]}, title="t", ylabel="y", size=size), dpi=dpi)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = decoded(png)
    assert image.format == "PNG"
    assert image.size == (round(size[0] * dpi), round(size[1] * dpi))


def test_png_bytes_closes_the_figure():
    fig = bar_chart(["a"], {"n": [1]}, title="t", ylabel="y")
    assert plt.fignum_exists(fig.number)
    png_bytes(fig)
    assert not plt.fignum_exists(fig.number)


def test_tight_png_crops_the_margin_around_the_axes():
    def make():
        return bar_chart(["a", "b"], {"n": [3, 4]}, title="t", ylabel="y", size=(8, 8))

    loose, tight = decoded(png_bytes(make())), decoded(png_bytes(make(), tight=True))
    assert loose.size == (800, 800)
    assert tight.size != loose.size
    assert tight.size[0] <= loose.size[0] + 20 and tight.size[1] <= loose.size[1] + 20


# ---------------------------------------------------------------------------------------------- the bars


def test_one_bar_per_value_as_tall_as_the_value_centred_on_its_category():
    values = [5, 0, 12.5, 3]
    fig = bar_chart(["nv", "mel", "bkl", "df"], {"images": values}, title="t", ylabel="images")
    patches = bars(fig)
    assert [p.get_height() for p in patches] == values
    assert [p.get_x() + p.get_width() / 2 for p in patches] == pytest.approx([0, 1, 2, 3])
    assert all(p.get_width() == pytest.approx(GROUP_WIDTH) for p in patches)
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["nv", "mel", "bkl", "df"]
    assert ax.get_title() == "t" and ax.get_ylabel() == "images"
    assert ax.get_legend() is None  # one series: no legend unless asked


def test_several_series_sit_side_by_side_within_each_category_with_a_legend():
    series = {"before": [10, 2, 1], "after": [10, 10, 10], "augmented": [0, 8, 9]}
    fig = bar_chart(["nv", "mel", "df"], series, title="t", ylabel="y")
    patches = bars(fig)
    width = GROUP_WIDTH / len(series)
    # matplotlib adds the bars series by series; each series' bars in category order.
    for k, (name, values) in enumerate(series.items()):
        own = patches[k * 3 : (k + 1) * 3]
        assert [p.get_height() for p in own] == values, name
        assert all(p.get_width() == pytest.approx(width) for p in own)
        offset = (k - 1) * width  # series 0 left of the category's centre, 1 on it, 2 right of it
        assert [p.get_x() + p.get_width() / 2 for p in own] == pytest.approx([c + offset for c in range(3)])
    # The bars of one category do not overlap and stay inside its slot.
    for category in range(3):
        edges = sorted((p.get_x(), p.get_x() + p.get_width()) for p in patches[category::3])
        assert all(right <= nxt + 1e-9 for (_, right), (nxt, _) in itertools.pairwise(edges))
        assert edges[0][0] >= category - 0.5 and edges[-1][1] <= category + 0.5
    legend = fig.axes[0].get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == list(series)


def test_legend_can_be_forced_on_or_off():
    one = bar_chart(["a"], {"only": [1]}, title="t", ylabel="y", legend=True)
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["only"]
    two = bar_chart(["a"], {"x": [1], "y": [2]}, title="t", ylabel="y", legend=False)
    assert two.axes[0].get_legend() is None


def test_colors_are_one_per_bar_of_a_single_series():
    colors = ["tab:red", "tab:blue", "tab:red"]
    fig = bar_chart(["mel", "nv", "bcc"], {"images": [1, 2, 3]}, title="t", ylabel="y", colors=colors)
    assert [p.get_facecolor() for p in bars(fig)] == [to_rgba(c) for c in colors]


def test_labels_are_rotated_only_past_the_upright_limit():
    upright = [f"c{i}" for i in range(MAX_UPRIGHT_LABELS)]
    rotated = [*upright, "one more"]
    fig_upright = bar_chart(upright, {"n": [1] * len(upright)}, title="t", ylabel="y")
    fig_rotated = bar_chart(rotated, {"n": [1] * len(rotated)}, title="t", ylabel="y")
    assert {label.get_rotation() for label in fig_upright.axes[0].get_xticklabels()} == {0}
    assert {label.get_rotation() for label in fig_rotated.axes[0].get_xticklabels()} == {45}
    assert {label.get_horizontalalignment() for label in fig_rotated.axes[0].get_xticklabels()} == {"right"}


def test_log_scale_limits_and_value_labels():
    fig = bar_chart(
        ["nv", "df"], {"n": [6705, 115]}, title="t", ylabel="y", log=True, ylim=(1, 1e4), value_labels=True
    )
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_ylim() == pytest.approx((1, 1e4))
    assert sorted(text.get_text() for text in ax.texts) == ["115", "6705"]
    assert len(bar_chart(["a"], {"n": [1]}, title="t", ylabel="y").axes[0].texts) == 0


def test_bars_show_in_the_png_in_proportion_to_the_values():
    """Rendered, not just laid out: the red bar's pixel height over the blue one's is the values' ratio."""
    fig = bar_chart(
        ["a", "b"], {"n": [30, 10]}, title="t", ylabel="y", colors=["tab:red", "tab:blue"], ylim=(0, 40)
    )
    pixels = np.asarray(decoded(png_bytes(fig)).convert("RGB")).astype(int)

    def bar_height(color: str) -> int:
        rgb = np.array([round(255 * c) for c in to_rgba(color)[:3]])
        rows = np.flatnonzero((np.abs(pixels - rgb).sum(axis=2) <= 6).any(axis=1))
        return int(rows.max() - rows.min() + 1)

    assert bar_height("tab:red") / bar_height("tab:blue") == pytest.approx(3, rel=0.03)


# ---------------------------------------------------------------------------------------------- empty input


def test_no_category_and_no_series_is_an_empty_chart_not_an_error():
    """eda draws an age chart for a batch without any age: an empty chart with its title."""
    fig = bar_chart([], {}, title="batch: age (none)", ylabel="images")
    assert bars(fig) == []
    assert fig.axes[0].get_title() == "batch: age (none)"
    assert decoded(png_bytes(fig)).size == (800, 450)


def test_a_series_without_values_draws_no_bar():
    fig = bar_chart([], {"images": []}, title="t", ylabel="images")
    assert bars(fig) == []
    assert fig.axes[0].get_legend() is None
    assert decoded(png_bytes(fig)).format == "PNG"
