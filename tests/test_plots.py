"""Every public figure of :mod:`parlab.plots` and :mod:`parlab.visualisation.figures` on small hand-made inputs:
what is drawn equals what was given."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from parlab import plots
from parlab.data.annotations import Annotations
from parlab.visualisation import figures

ATTRIBUTES = ("Hat", "Glasses", "Backpack")
# rows: 0-5 train, 6-7 test; nobody in train wears glasses
LABELS = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, -1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _size(row: int) -> tuple[int, int]:
    """(height, width) of row ``row``'s image: every row has its own shape."""
    return 10 + 2 * row, 4 + row


@pytest.fixture
def ann(tmp_path) -> Annotations:
    names = []
    for row in range(len(LABELS)):
        h, w = _size(row)
        Image.new("RGB", (w, h), (20 * row, 0, 0)).save(tmp_path / f"{row}.png")
        names.append(f"{row}.png")
    return Annotations.from_raw("tiny", tmp_path / "labels.mat", tmp_path, names, LABELS, ATTRIBUTES, [0, 1, 2],
                                [{"train": np.arange(6), "test": np.array([6, 7])}])


def _offsets(collection) -> np.ndarray:
    return np.asarray(collection.get_offsets(), dtype=float)


def _labels(texts) -> list[str]:
    return [t.get_text() for t in texts]


# --- data exploration --------------------------------------------------------------------------

def test_split_sizes_one_bar_per_split(ann):
    fig = plots.split_sizes(ann)
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [6, 2]
    assert _labels(ax.get_xticklabels()) == ["train", "test"]
    assert _labels(ax.texts) == ["6", "2"]
    assert "tiny" in ax.get_title()


def test_image_size_scatter_plots_width_against_height():
    sizes = np.array([[64, 32], [128, 48], [100, 40]])  # (height, width)
    fig = plots.image_size_scatter(sizes, "some sizes")
    assert isinstance(fig, Figure)
    joint = fig.axes[0]
    assert len(fig.axes) == 3  # joint + two marginals
    np.testing.assert_array_equal(_offsets(joint.collections[0]), sizes[:, ::-1])
    assert joint.get_xlabel() == "width (px)" and joint.get_ylabel() == "height (px)"
    assert fig.get_suptitle() == "some sizes"


def test_image_grid_shows_each_row_with_its_positive_attributes(ann):
    rows = np.array([0, 2, 6])
    fig = plots.image_grid(ann, rows, columns=2, max_attributes=2)
    assert len(fig.axes) == 4  # 2 x 2, the last one empty
    for ax, row in zip(fig.axes, rows):
        assert ax.images[0].get_array().shape == (*_size(row), 3)
    assert not fig.axes[3].images
    assert fig.axes[0].get_title(loc="left") == "Hat\nBackpack"
    assert fig.axes[1].get_title(loc="left") == "Hat"
    assert fig.axes[2].get_title(loc="left") == "Hat\nGlasses\n…"  # three positives, two shown


def test_image_grid_has_no_highlight_parameter(ann):
    with pytest.raises(TypeError):
        plots.image_grid(ann, np.array([0]), highlight="Hat")


def test_attribute_examples_one_positive_per_attribute_blank_when_none(ann):
    fig = plots.attribute_examples(ann, "train", seed=1, columns=2)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == list(ATTRIBUTES)
    train = ann.split("train")
    for j in (0, 2):
        shape = fig.axes[j].images[0].get_array().shape[:2]
        row = next(r for r in train if _size(r) == shape)
        assert LABELS[row, j] == 1
    assert not fig.axes[1].images  # no train image wears glasses
    assert not fig.axes[3].images


# --- label imbalance ---------------------------------------------------------------------------

RATIOS = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25}, name="tiny")


def test_positive_ratios_sorted_percent_bars():
    fig = plots.positive_ratios(RATIOS, title="priors")
    (ax,) = fig.axes
    assert _labels(ax.get_yticklabels()) == ["Glasses", "Backpack", "Hat"]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [2, 25, 40])
    assert ax.get_xscale() == "log" and ax.get_title() == "priors"


def test_positive_ratios_beside_a_reference():
    reference = pd.Series({"Hat": 0.3, "Glasses": 0.1, "Backpack": 0.5}, name="PA100k")
    fig = plots.positive_ratios(RATIOS, reference, log=False)
    (ax,) = fig.axes
    widths = [p.get_width() for p in ax.patches]
    np.testing.assert_allclose(widths, [2, 25, 40, 10, 50, 30])  # data bars, then reference bars, both sorted by data
    assert _labels(ax.get_legend().get_texts()) == ["tiny", "PA100k"]
    assert ax.get_xscale() == "linear"


def test_imbalance_ratios_sorted_log_bars():
    ratios = pd.Series({"Hat": 1.5, "Glasses": 49.0, "Backpack": 3.0})
    fig = plots.imbalance_ratios(ratios)
    (ax,) = fig.axes
    assert _labels(ax.get_yticklabels()) == ["Hat", "Backpack", "Glasses"]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [1.5, 3.0, 49.0])
    assert ax.get_xscale() == "log"


def test_cardinality_histogram_counts_and_mean():
    counts = np.array([0, 1, 1, 2, 2, 2, 4])
    fig = plots.cardinality(counts)
    (ax,) = fig.axes
    np.testing.assert_array_equal([p.get_height() for p in ax.patches], np.bincount(counts))
    (mean,) = ax.lines
    assert mean.get_xdata()[0] == pytest.approx(counts.mean())
    assert _labels(ax.get_legend().get_texts()) == [f"mean {counts.mean():.2f}"]


@pytest.mark.parametrize("percent", [False, True])
def test_heatmap_cells_are_the_matrix(percent):
    matrix = np.array([[1.0, -0.2, 0.1], [-0.2, 1.0, 0.5], [0.1, 0.5, 1.0]])
    fig = plots.heatmap(matrix, list(ATTRIBUTES), "phi", fmt_percent=percent)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the map and its colour bar
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).ravel(),
                               (100 if percent else 1) * matrix.ravel())
    assert _labels(ax.get_xticklabels()) == list(ATTRIBUTES) and _labels(ax.get_yticklabels()) == list(ATTRIBUTES)
    assert ax.get_title() == "phi"


def test_prior_shift_scatter_and_names_of_the_largest_shifts():
    table = pd.DataFrame({"train": [0.1, 0.2, 0.3, 0.4, 0.5], "test": [0.1, 0.25, 0.3, 0.2, 0.5]},
                         index=["a", "b", "c", "d", "e"])
    table["shift_points"] = 100 * (table["test"] - table["train"])
    fig = plots.prior_shift(table)
    (ax,) = fig.axes
    np.testing.assert_allclose(_offsets(ax.collections[0]), 100 * table[["train", "test"]].to_numpy())
    assert _labels(ax.texts) == ["d"]  # the one shift in the top quintile
    diagonal = ax.lines[0]
    np.testing.assert_allclose(diagonal.get_xdata(), diagonal.get_ydata())


def test_balancing_natural_and_best_priors():
    natural = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25})
    best = pd.Series({"Hat": 0.5, "Glasses": 0.3, "Backpack": 0.45})
    fig = plots.balancing(natural, best, 0.2)
    (ax,) = fig.axes
    order = ["Glasses", "Backpack", "Hat"]
    assert _labels(ax.get_yticklabels()) == order
    np.testing.assert_allclose(_offsets(ax.collections[0])[:, 0], 100 * natural[order])
    np.testing.assert_allclose(_offsets(ax.collections[1])[:, 0], 100 * best[order])
    assert "20.0 points" in ax.get_title()
    (band,) = ax.patches
    box = band.get_window_extent()  # a Rectangle or a Polygon depending on the matplotlib version
    np.testing.assert_allclose(ax.transData.inverted().transform([[box.x0, box.y0], [box.x1, box.y1]])[:, 0], [30, 70])


# --- training runs -----------------------------------------------------------------------------

def _history(offset: float, best_epoch: int | None) -> pd.DataFrame:
    epochs = np.arange(1, 5)
    return pd.DataFrame({"epoch": epochs, "train_loss": 3.0 - 0.5 * epochs + offset, "val_loss": 3.2 - 0.4 * epochs,
                         "val_ma": 50 + 5 * epochs + offset, "val_f1": 40 + 4 * epochs, "test_ma": 45 + 5 * epochs,
                         "test_f1": 35 + 4 * epochs, "best": [e == best_epoch for e in epochs]})


def test_learning_curves_lines_per_run_and_the_selected_epoch():
    histories = {"bce": _history(0.0, 3), "weighted": _history(1.0, None)}
    fig = plots.learning_curves(histories)
    loss, ma, f1 = fig.axes
    assert len(loss.lines) == 4 and len(ma.lines) == 2 and len(f1.lines) == 2
    np.testing.assert_allclose(loss.lines[0].get_ydata(), histories["bce"]["train_loss"])
    np.testing.assert_allclose(loss.lines[3].get_ydata(), histories["weighted"]["val_loss"])
    np.testing.assert_allclose(ma.lines[1].get_ydata(), histories["weighted"]["val_ma"])
    (star,) = ma.collections  # only the run with a selected epoch
    np.testing.assert_allclose(_offsets(star), [[3, 65]])
    assert ma.get_ylabel() == "val mA (%)"
    assert _labels(ma.get_legend().get_texts()) == ["bce", "weighted"]
    test = plots.learning_curves(histories, split="test")
    np.testing.assert_allclose(test.axes[2].lines[0].get_ydata(), histories["bce"]["test_f1"])


def test_batchnorm_statistics_curves_recomputed_solid_running_dashed():
    histories = {"seed 0": _history(0.0, 3), "seed 1": _history(1.0, 2)}
    for log in histories.values():
        log["val_loss_running_bn"] = log["val_loss"] * 10
        log["val_ma_running_bn"] = log["val_ma"] - 8
    fig = plots.batchnorm_statistics_curves(histories)
    loss, ma = fig.axes
    assert len(loss.lines) == len(ma.lines) == 4 and loss.get_yscale() == "log"
    recomputed, running = ma.lines[2], ma.lines[3]  # seed 1
    np.testing.assert_allclose(recomputed.get_ydata(), histories["seed 1"]["val_ma"])
    np.testing.assert_allclose(running.get_ydata(), histories["seed 1"]["val_ma_running_bn"])
    assert recomputed.get_linestyle() == "-" and running.get_linestyle() == "--"
    np.testing.assert_allclose(loss.lines[1].get_ydata(), histories["seed 0"]["val_loss_running_bn"])
    assert _labels(ma.get_legend().get_texts())[:2] == ["seed 0, recomputed", "seed 0, running"]


def test_tpr_tnr_vs_ratio_one_panel_per_run_in_ratio_order():
    train_ratio = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25})
    a = pd.DataFrame({"tpr": [0.9, 0.1, 0.6], "tnr": [0.8, 0.99, 0.9]}, index=list(ATTRIBUTES))
    b = a.iloc[::-1] * 0.5  # another order: must be matched by name
    fig = plots.tpr_tnr_vs_ratio({"bce": a, "frdl": b}, train_ratio)
    assert [ax.get_title() for ax in fig.axes] == ["bce", "frdl"]
    for ax, table in zip(fig.axes, (a, b)):
        tpr, tnr = ax.collections
        np.testing.assert_allclose(_offsets(tpr), np.c_[100 * train_ratio, 100 * table.loc[train_ratio.index, "tpr"]])
        np.testing.assert_allclose(_offsets(tnr)[:, 1], 100 * table.loc[train_ratio.index, "tnr"])
        assert ax.get_xscale() == "log"


def test_gain_vs_ratio_one_series_per_method_rarest_named():
    ratio = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25, "Boots": 0.1})
    gains = pd.DataFrame({"FRDL": [1.0, 8.0, -2.0, 3.0], "GOAT": [0.5, 4.0, 1.0, 2.0]},
                         index=["Hat", "Glasses", "Backpack", "Boots"])
    fig = plots.gain_vs_ratio(gains, ratio, reference="bce")
    (ax,) = fig.axes
    for collection, method in zip(ax.collections, gains.columns):
        np.testing.assert_allclose(_offsets(collection), np.c_[100 * ratio[gains.index], gains[method]])
    assert sorted(_labels(ax.texts)) == ["Backpack", "Boots", "Glasses"]
    assert _labels(ax.get_legend().get_texts()) == ["FRDL", "GOAT"]
    assert "bce" in ax.get_ylabel()


def test_label_prior_means_of_natural_and_balanced_epochs():
    natural = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25})
    seen = pd.DataFrame({"balanced": [0, 1, 1], "Hat": [0.4, 0.5, 0.6], "Glasses": [0.02, 0.4, 0.5],
                         "Backpack": [0.25, 0.5, 0.4]}, index=pd.Index([1, 2, 3], name="epoch"))
    fig = plots.label_prior(natural, seen)
    (ax,) = fig.axes
    order = ["Glasses", "Backpack", "Hat"]
    stage1, natural_epochs, balanced_epochs = ax.collections
    np.testing.assert_allclose(_offsets(stage1)[:, 0], 100 * natural[order])
    np.testing.assert_allclose(_offsets(natural_epochs)[:, 0], [2, 25, 40])
    np.testing.assert_allclose(_offsets(balanced_epochs)[:, 0], [45, 45, 55])
    legend = _labels(ax.get_legend().get_texts())
    assert "(1)" in legend[1] and "(2)" in legend[2]
    only_natural = plots.label_prior(natural, seen.iloc[:1])
    assert len(only_natural.axes[0].collections) == 2


# --- looking inside models ---------------------------------------------------------------------

def test_cam_grid_rows_of_methods_titles_coloured_by_correctness():
    images = [Image.new("RGB", (8, 16), (255, 255, 255)), Image.new("RGB", (10, 20), (0, 0, 0))]
    cams = {"gradcam": np.zeros((2, 4, 2)), "hirescam": np.ones((2, 4, 2))}
    probs = {"gradcam": np.array([0.9, 0.8]), "hirescam": np.array([0.2, 0.1])}
    labels = np.array([1, 0])
    fig = figures.cam_grid(images, cams, probs, labels, "Hat")
    axes = np.array(fig.axes).reshape(3, 2)
    assert [ax.get_title() for ax in axes[0]] == ["present", "absent"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["image", "gradcam", "hirescam"]
    for i, img in enumerate(images):
        for ax in axes[:, i]:
            assert ax.images[0].get_array().shape[:2] == (img.height, img.width)
    assert [ax.get_title() for ax in axes[1]] == ["p=0.90", "p=0.80"]
    green, red = mcolors.to_rgba("tab:green"), mcolors.to_rgba("tab:red")
    assert [mcolors.to_rgba(ax.title.get_color()) for ax in axes[1]] == [green, red]  # gradcam: right, wrong
    assert [mcolors.to_rgba(ax.title.get_color()) for ax in axes[2]] == [red, green]  # hirescam: wrong, right
    assert fig.get_suptitle() == "Hat"


def test_token_attention_figure_panels_and_band_edges():
    image = Image.new("RGB", (16, 40), (128, 128, 128))  # (W, H): 40 image rows
    attention = np.random.default_rng(0).random((3, 4, 2))  # CLS + 2 part tokens over a 4 x 2 patch grid
    fig = figures.token_attention_figure(image, attention, [(0, 1), (2, 3)], input_size=(64, 32))
    assert [ax.get_title() for ax in fig.axes] == ["image", "CLS", "part 1", "part 2"]
    for ax in fig.axes:
        assert ax.images[0].get_array().shape[:2] == (40, 16)
    assert not fig.axes[1].lines  # CLS has no band
    edges = [[line.get_ydata()[0] for line in ax.lines] for ax in fig.axes[2:]]
    assert edges == [[-0.5, 19.5], [19.5, 39.5]]  # patch rows 0-1 and 2-3 of 4, on 40 image rows


def test_channel_maps_one_panel_per_channel():
    maps = np.random.default_rng(0).random((3, 5, 4))
    fig = figures.channel_maps(maps, np.array([7, 2, 11]), "layer4")
    assert [ax.get_title() for ax in fig.axes] == ["ch 7", "ch 2", "ch 11"]
    for ax, m in zip(fig.axes, maps):
        np.testing.assert_allclose(ax.images[0].get_array(), m)
    assert fig.get_suptitle() == "layer4"


def test_head_boundaries_panel_per_head_with_recall():
    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [3.0, 3.0], [4.0, 1.0]])
    labels = np.array([1, 1, 0, -1, 1])
    decisions = {"stage 1": np.array([1, 0, 0, 1, 0]), "FRDL": np.array([1, 1, 1, 0, 1])}
    fig = figures.head_boundaries(points, labels, decisions, "Hat")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("stage 1") and "recall of present 33%" in fig.axes[0].get_title()
    assert fig.axes[1].get_title().startswith("FRDL") and "recall of present 100%" in fig.axes[1].get_title()
    decided, rings = fig.axes[1].collections
    np.testing.assert_allclose(_offsets(decided), points[labels >= 0])  # the ignored label is left out
    np.testing.assert_allclose(_offsets(rings), points[labels == 1])
    assert fig.get_suptitle() == "Hat"


def test_per_attribute_vs_ratio_one_series_per_method():
    ratio = pd.Series({"Hat": 0.4, "Glasses": 0.02, "Backpack": 0.25})
    table = pd.DataFrame({"bce": [80.0, 55.0, 70.0], "frdl": [81.0, 65.0, 72.0]}, index=["Backpack", "Hat", "Glasses"])
    fig = plots.per_attribute_vs_ratio(table, ratio)
    (ax,) = fig.axes
    for collection, method in zip(ax.collections, table.columns):
        np.testing.assert_allclose(_offsets(collection), np.c_[100 * ratio[table.index], table[method]])
    assert sorted(_labels(ax.texts)) == sorted(ATTRIBUTES)  # the three rarest (all of them here)
    assert _labels(ax.get_legend().get_texts()) == ["bce", "frdl"]


def test_method_bars_mean_bars_and_error_bars_only_where_repeated():
    index = pd.MultiIndex.from_product([["bce", "frdl", "goat"], ["standard", "balanced"]], names=["method", "setting"])
    table = pd.DataFrame({"mA": [70.0, 60.0, 75.0, 68.0, 74.0, 66.0], "mA std": [1.0, 2.0, np.nan, np.nan, 0.5, 0.4],
                          "F1": [80.0, 79.0, 81.0, 80.0, 82.0, 78.0], "F1 std": [0.1, 0.2, np.nan, np.nan, 0.3, 0.3]},
                         index=index)
    fig = plots.method_bars(table)
    ma, f1 = fig.axes
    for ax, metric in ((ma, "mA"), (f1, "F1")):
        standard, balanced = ax.containers[0], ax.containers[2]  # bars, error bars, bars, error bars
        np.testing.assert_allclose([p.get_height() for p in standard], table[metric].xs("standard", level="setting"))
        np.testing.assert_allclose([p.get_height() for p in balanced], table[metric].xs("balanced", level="setting"))
        assert len(ax.containers[1].lines[2][0].get_segments()) == 2  # frdl is a single run: no error bar
        assert _labels(ax.get_xticklabels()) == ["bce", "frdl", "goat"]
        assert ax.get_ylabel() == f"test {metric} (%)"
    assert ma.get_ylim() == (50.0, 100.0)
    assert _labels(ma.get_legend().get_texts()) == ["standard", "balanced"]
    assert len(plots.method_bars(table, metrics=("mA",)).axes) == 1


def test_every_public_plot_function_is_tested():
    public = {name for name, value in vars(plots).items()
              if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == plots.__name__}
    source = Path(__file__).read_text()
    assert {name for name in public if f"plots.{name}(" not in source} == set()
    assert all(vars(plots)[name].__annotations__.get("return") in ("Figure", Figure) for name in public)
