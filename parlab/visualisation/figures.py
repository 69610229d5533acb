"""Figures of what models look at: CAMs per method, PromptPAR's token attention, feature maps, head decisions.

They draw what the rest of :mod:`parlab.visualisation` computes (:func:`~.cams.attribute_cams`,
:func:`~.attention.token_attention`, :func:`~.features.strongest_channels`, :func:`~.features.pca_2d`),
on the original images at their own aspect ratio. Each returns a matplotlib Figure and changes no global
state; notebook 06 saves them with :func:`parlab.files.save_figure`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from parlab.visualisation.overlays import overlay, upscale_grid


def cam_grid(images: list, cams: dict[str, np.ndarray], probs: dict[str, np.ndarray], labels: np.ndarray,
             attribute: str, threshold: float = 0.5) -> Figure:
    """One attribute's CAMs: a row per method over the same images, the originals on top.

    Args:
        images: PIL images as stored (each keeps its own aspect ratio).
        cams: method -> (B, h, w) maps in [0, 1] for this attribute.
        probs: method -> (B,) predicted probabilities.
        labels: (B,) ground truth (1, 0 or -1 ignored).
    Titles give the probability; green when the decision at ``threshold`` is right, red when wrong.
    """
    methods = list(cams)
    fig, axes = plt.subplots(1 + len(methods), len(images), figsize=(1.3 * len(images), 2.6 * (1 + len(methods))),
                             squeeze=False)
    for i, img in enumerate(images):
        axes[0, i].imshow(img)
        axes[0, i].set_title({1: "present", 0: "absent"}.get(int(labels[i]), "ignored"), fontsize=7)
        for m, method in enumerate(methods):
            ax = axes[1 + m, i]
            ax.imshow(overlay(img, cams[method][i]))
            p = float(probs[method][i])
            right = int(labels[i]) < 0 or (p > threshold) == bool(labels[i])
            ax.set_title(f"p={p:.2f}", fontsize=7, color="tab:green" if right else "tab:red")
    for m, method in enumerate(["image"] + methods):
        axes[m, 0].set_ylabel(method, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(attribute, fontsize=10)
    fig.tight_layout()
    return fig


def cam_gallery(images: list, cams: np.ndarray, titles: list[str], title: str, columns: int = 4,
                letterboxed: bool = False) -> Figure:
    """Images with their CAMs laid over, ``columns`` a row, one axes per image under its own title.

    Args:
        images: PIL images as stored (each keeps its own aspect ratio).
        cams: (B, h, w) maps in [0, 1], one per image.
        titles: B strings, e.g. the outcome and the probability.
        letterboxed: the maps cover the images letterboxed to squares (see :func:`overlay`).
    """
    rows = max(1, -(-len(images) // columns))
    width = min(columns, max(len(images), 1))
    fig, axes = plt.subplots(rows, width, figsize=(1.6 * width, 3.0 * rows), squeeze=False)
    for ax, img, cam, text in zip(axes.flat, images, cams, titles):
        ax.imshow(overlay(img, cam, letterboxed=letterboxed))
        ax.set_title(text, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(images):]:  # only the images' axes remain
        ax.remove()
    if not images:
        fig.text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def token_attention_figure(image, attention: np.ndarray, bands: list[tuple[int, int]],
                           input_size: tuple[int, int]) -> Figure:
    """PromptPAR's CLS and part-token attention over the patches, with each part token's band outlined.

    Args:
        image: the PIL image as stored.
        attention: (1 + K, rows, cols) from :func:`~parlab.visualisation.attention.token_attention`.
        bands: inclusive (first, last) patch rows of each band.
        input_size: (H, W) the model saw.
    """
    rows = attention.shape[1]
    fig, axes = plt.subplots(1, 1 + len(attention), figsize=(1.5 * (1 + len(attention)), 3.2))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    height = image.size[1]
    for k, ax in enumerate(axes[1:]):
        ax.imshow(overlay(image, upscale_grid(attention[k], input_size), alpha=0.55, cmap="magma"))
        ax.set_title("CLS" if k == 0 else f"part {k}", fontsize=8)
        if k > 0:
            first, last = bands[k - 1]
            for edge in (first, last + 1):  # band edges in the image's own pixel rows
                ax.axhline(edge * height / rows - 0.5, color="white", lw=1, ls="--")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def channel_maps(maps: np.ndarray, channels: np.ndarray, title: str) -> Figure:
    """The strongest channels of a layer on one image, each scaled to its own range."""
    fig, axes = plt.subplots(1, len(maps), figsize=(1.2 * len(maps), 2.4), squeeze=False)
    for ax, m, c in zip(axes[0], maps, channels):
        ax.imshow(m, cmap="viridis")
        ax.set_title(f"ch {c}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def head_boundaries(points: np.ndarray, labels: np.ndarray, decisions: dict[str, np.ndarray], attribute: str) -> Figure:
    """2-D embedding of one attribute's features, coloured by each head's decision, ringed by the truth.

    ``decisions``: head name -> (N,) 0/1 predictions on the same features (e.g. stage 1 and FRDL).
    """
    fig, axes = plt.subplots(1, len(decisions), figsize=(3.6 * len(decisions), 3.4), squeeze=False)
    for ax, (name, decided) in zip(axes[0], decisions.items()):
        known = labels >= 0
        ax.scatter(points[known, 0], points[known, 1], c=np.where(decided[known] == 1, "tab:orange", "tab:blue"),
                   s=8, alpha=0.6, linewidths=0)
        positives = known & (labels == 1)
        ax.scatter(points[positives, 0], points[positives, 1], facecolors="none", edgecolors="k", s=22,
                   linewidths=0.5, label="labelled present")
        recall = float((decided[positives] == 1).mean()) if positives.any() else float("nan")
        ax.set_title(f"{name}: predicted present (orange)\nrecall of present {100 * recall:.0f}%", fontsize=8)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(attribute, fontsize=10)
    fig.tight_layout()
    return fig
