"""Figures of the notebooks: datasets, label statistics and training results.

Each function returns a matplotlib Figure and changes no global state; the
notebooks save them with :func:`parlab.files.save_figure`. The figures of what
models look at (CAMs, token attention, feature maps) are in
:mod:`parlab.visualisation.figures`, beside the code that computes them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from parlab.data.annotations import Annotations
from parlab.data.images import load_rgb


def split_sizes(annotations: Annotations) -> Figure:
    sizes = {s: len(annotations.split(s)) for s in annotations.splits()}
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.bar(list(sizes), list(sizes.values()), color="#4c72b0")
    for k, v in enumerate(sizes.values()):
        ax.text(k, v, f"{v:,}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title(f"{annotations.name}: split sizes")
    fig.tight_layout()
    return fig


def image_size_scatter(sizes: np.ndarray, title: str = "image sizes") -> Figure:
    """Scatter of (height, width) pairs with marginal histograms."""
    grid = sns.JointGrid(x=sizes[:, 1], y=sizes[:, 0], height=3.6)
    grid.plot_joint(sns.scatterplot, s=8, alpha=0.4, edgecolor=None)
    grid.plot_marginals(sns.histplot, bins=30)
    grid.set_axis_labels("width (px)", "height (px)")
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def image_grid(annotations: Annotations, rows: np.ndarray, columns: int = 8, max_attributes: int = 6) -> Figure:
    """Images with their positive attributes written beneath."""
    n = len(rows)
    nrows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(nrows, columns, figsize=(1.6 * columns, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(load_rgb(annotations.image_path(row)))
        pos = [a for a, v in zip(annotations.attributes, annotations.labels[row]) if v == 1]
        shown = pos[:max_attributes] + (["…"] if len(pos) > max_attributes else [])
        ax.set_title("\n".join(shown), fontsize=6, loc="left")
    fig.tight_layout()
    return fig


def attribute_examples(annotations: Annotations, split: str, seed: int = 0, columns: int = 9) -> Figure:
    """One positive example per attribute (blank where the split has none)."""
    rng = np.random.default_rng(seed)
    rows = annotations.split(split)
    labels = annotations.labels[rows]
    a = annotations.num_attributes
    nrows = int(np.ceil(a / columns))
    fig, axes = plt.subplots(nrows, columns, figsize=(1.5 * columns, 3.0 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, ax in zip(range(a), axes.flat):
        candidates = rows[labels[:, j] == 1]
        ax.set_title(annotations.attributes[j], fontsize=7)
        if len(candidates):
            row = candidates[rng.integers(len(candidates))]
            ax.imshow(load_rgb(annotations.image_path(row)))
    fig.tight_layout()
    return fig


def positive_ratios(ratios: pd.Series, reference: pd.Series | None = None, log: bool = True,
                    title: str = "positive ratio per attribute") -> Figure:
    """Sorted horizontal bars of positive ratios (optionally beside a reference set)."""
    order = ratios.sort_values().index
    fig, ax = plt.subplots(figsize=(5, 0.2 * len(order) + 1))
    y = np.arange(len(order))
    if reference is not None:
        ax.barh(y + 0.2, 100 * ratios[order], height=0.4, label=ratios.name or "data")
        ax.barh(y - 0.2, 100 * reference[order], height=0.4, label=reference.name or "reference")
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.barh(y, 100 * ratios[order], color="#4c72b0")
    ax.set_yticks(y, order, fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("positive ratio (%)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def imbalance_ratios(ratios: pd.Series) -> Figure:
    order = ratios.sort_values().index
    fig, ax = plt.subplots(figsize=(5, 0.2 * len(order) + 1))
    ax.barh(np.arange(len(order)), ratios[order], color="#dd8452")
    ax.set_yticks(np.arange(len(order)), order, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("majority / minority count")
    ax.set_title("imbalance ratio per attribute")
    fig.tight_layout()
    return fig


def cardinality(counts: np.ndarray) -> Figure:
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="#55a868")
    ax.axvline(counts.mean(), color="black", lw=1, ls="--", label=f"mean {counts.mean():.2f}")
    ax.set_xlabel("positive attributes per image")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def heatmap(matrix: np.ndarray, names: list[str] | tuple[str, ...], title: str, center: float | None = 0.0,
            cmap: str = "vlag", fmt_percent: bool = False) -> Figure:
    size = 0.28 * len(names) + 1.5
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(matrix * (100 if fmt_percent else 1), xticklabels=names, yticklabels=names, center=center,
                cmap=cmap, square=True, ax=ax, cbar_kws={"shrink": 0.6})
    ax.tick_params(labelsize=6)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def prior_shift(table: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(4, 4))
    lim = [0, 100 * float(np.nanmax(table[["train", "test"]].to_numpy())) * 1.05]
    ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
    ax.scatter(100 * table["train"], 100 * table["test"], s=12)
    for name, r in table.iterrows():
        if abs(r["shift_points"]) >= table["shift_points"].abs().quantile(0.8):
            ax.annotate(name, (100 * r["train"], 100 * r["test"]), fontsize=6)
    ax.set_xlabel("train positive ratio (%)")
    ax.set_ylabel("test positive ratio (%)")
    ax.set_title("train/test prior shift")
    fig.tight_layout()
    return fig


def balancing(natural: pd.Series, best: pd.Series, max_deviation: float) -> Figure:
    """Natural priors vs the priors of the best image weighting, against the 50% goal."""
    order = natural.sort_values().index
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(5, 0.2 * len(order) + 1))
    ax.scatter(100 * natural[order], y, label="natural", s=14)
    ax.scatter(100 * best[order], y, label="best image weighting", s=14, marker="s")
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.axvspan(50 - 100 * max_deviation, 50 + 100 * max_deviation, color="grey", alpha=0.12)
    ax.set_yticks(y, order, fontsize=7)
    ax.set_xlabel("prior (%)")
    ax.set_title(f"best image re-weighting: max |prior - 50%| = {100 * max_deviation:.1f} points")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --- training runs (notebooks 03 onwards) ---------------------------------------------------------

def learning_curves(histories: dict[str, pd.DataFrame], split: str = "val") -> Figure:
    """Loss and ``split`` mA / F1 per epoch for each run (``histories``: name -> per-epoch log)."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for k, (name, log) in enumerate(histories.items()):
        color = f"C{k}"
        axes[0].plot(log["epoch"], log["train_loss"], color=color, label=f"{name} train")
        axes[0].plot(log["epoch"], log["val_loss"], color=color, ls="--", label=f"{name} val")
        axes[1].plot(log["epoch"], log[f"{split}_ma"], color=color, marker="o", ms=3, label=name)
        axes[2].plot(log["epoch"], log[f"{split}_f1"], color=color, marker="o", ms=3, label=name)
        best = log.loc[log["best"].astype(bool)].iloc[-1] if log["best"].astype(bool).any() else None
        if best is not None:
            axes[1].scatter([best["epoch"]], [best[f"{split}_ma"]], color=color, marker="*", s=90, zorder=3)
    axes[0].set_ylabel("loss (sum over attributes)")
    axes[1].set_ylabel(f"{split} mA (%)")
    axes[2].set_ylabel(f"{split} F1 (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, title="* selected epoch", title_fontsize=7)
    fig.tight_layout()
    return fig


def batchnorm_statistics_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Validation loss and mA per epoch under the BatchNorm statistics training kept (dashed) and recomputed at
    the epoch's weights (solid), one colour per run: what ``precise_bn`` changed (``histories``: name -> log)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for k, (name, log) in enumerate(histories.items()):
        for ax, column in zip(axes, ("val_loss", "val_ma"), strict=True):
            ax.plot(log["epoch"], log[column], color=f"C{k}", marker="o", ms=3, label=f"{name}, recomputed")
            ax.plot(log["epoch"], log[f"{column}_running_bn"], color=f"C{k}", ls="--", marker="x", ms=4,
                    label=f"{name}, running")
    axes[0].set_ylabel("validation loss")
    axes[0].set_yscale("log")  # a stale statistic can put it an order of magnitude up
    axes[1].set_ylabel("validation mA (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def tpr_tnr_vs_ratio(per_attribute: dict[str, pd.DataFrame], train_ratio: pd.Series) -> Figure:
    """Per-attribute TPR and TNR against the training positive ratio, one panel per run.

    The imbalance effect: rare attributes get a low TPR and a high TNR under plain BCE.
    """
    fig, axes = plt.subplots(1, len(per_attribute), figsize=(4.2 * len(per_attribute), 3.4), sharey=True,
                             squeeze=False)
    x = 100 * train_ratio
    for ax, (name, table) in zip(axes[0], per_attribute.items()):
        table = table.reindex(train_ratio.index)
        ax.scatter(x, 100 * table["tpr"], s=16, label="TPR (recall of positives)", color="C3")
        ax.scatter(x, 100 * table["tnr"], s=16, marker="s", label="TNR (recall of negatives)", color="C0")
        ax.set_xscale("log")
        ax.set_xlabel("training positive ratio (%)")
        ax.set_title(name, fontsize=9)
        ax.axhline(50, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test rate (%)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def gain_vs_ratio(gains: pd.DataFrame, train_ratio: pd.Series, reference: str = "stage 1") -> Figure:
    """Per-attribute test mA gain (points) of each method (columns of ``gains``) against the training ratio."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = 100 * train_ratio.reindex(gains.index)
    for k, method in enumerate(gains.columns):
        ax.scatter(x, gains[method], s=18, color=f"C{k}", marker="os^Dv"[k % 5], label=method)
    rarest = x.nsmallest(3).index
    for name in rarest:
        ax.annotate(name, (x[name], gains.loc[name].max()), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training positive ratio (%)")
    ax.set_ylabel(f"test mA gain over {reference} (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def label_prior(natural: pd.Series, seen: pd.DataFrame, p: float = 0.5) -> Figure:
    """The positive prior each head trained on, per attribute.

    ``natural``: training positive ratios (what stage-1 heads see); ``seen``: an FRDL run's
    per-epoch label prior (:func:`parlab.runs.label_prior`), split into its natural and
    balanced epochs.
    """
    order = natural.sort_values().index
    y = np.arange(len(order))
    flags = seen["balanced"].astype(bool)
    values = seen.drop(columns="balanced")
    fig, ax = plt.subplots(figsize=(5, 0.2 * len(order) + 1))
    ax.scatter(100 * natural[order], y, s=16, label="stage-1 heads (natural sampling)")
    if (~flags).any():
        ax.scatter(100 * values[~flags].mean()[order], y, s=16, marker="x",
                   label=f"h_ft, natural epochs ({int((~flags).sum())})")
    if flags.any():
        ax.scatter(100 * values[flags].mean()[order], y, s=16, marker="s",
                   label=f"h_ft, balanced epochs ({int(flags.sum())})")
    ax.axvline(100 * p, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, order, fontsize=7)
    ax.set_xlabel("positive share of training labels (%)")
    ax.set_title("label prior seen by the classifiers")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def per_attribute_vs_ratio(per_attribute: pd.DataFrame, train_ratio: pd.Series) -> Figure:
    """Test mA per attribute of each method (columns) against the attribute's training positive ratio."""
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    x = 100 * train_ratio.reindex(per_attribute.index)
    for k, method in enumerate(per_attribute.columns):
        ax.scatter(x, per_attribute[method], s=16, color=f"C{k}", marker="os^Dvp<>"[k % 8], label=method, alpha=0.85)
    for name in x.nsmallest(3).index:
        ax.annotate(name, (x[name], per_attribute.loc[name].min()), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training positive ratio (%)")
    ax.set_ylabel("test mA (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def method_bars(table: pd.DataFrame, metrics: tuple[str, ...] = ("mA", "F1")) -> Figure:
    """Mean ± std of each method in the standard and label-balanced settings (a repeated settings table)."""
    settings = list(dict.fromkeys(table.index.get_level_values("setting")))
    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / len(settings)
    for ax, metric in zip(axes[0], metrics):
        for k, setting in enumerate(settings):
            means = np.array([table.loc[(m, setting), metric] for m in methods])
            stds = np.array([table.loc[(m, setting), f"{metric} std"] for m in methods])
            x = np.arange(len(methods)) + (k - (len(settings) - 1) / 2) * width
            ax.bar(x, means, width, label=setting, color=f"C{k}")
            repeated = np.isfinite(stds)  # single runs have no spread to draw
            ax.errorbar(x[repeated], means[repeated], yerr=stds[repeated], fmt="none", ecolor="k", capsize=2, lw=1)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"test {metric} (%)")
        low = np.nanmin(table[metric].to_numpy())
        ax.set_ylim(max(0, low - 10), 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
