"""``parlab cam``: one PNG per image and attribute, the attribute's CAM on the image, titled with its probability.

pytorch-grad-cam's and mmpretrain's CAM scripts write one overlay per image; PAR is multi-label, so each
image gets one file per attribute asked for, ``{image stem}_{attribute}.png`` (characters other than
letters, digits, ``.``, ``-`` and ``_`` in the attribute's name become ``_``). Images whose files would
share a name (the same stem in two folders) are refused, not renamed, so that a file's name always says
which image it shows. The title's probability is the one :func:`parlab.inference.predict` gives; the PNG
carries the title in its ``Title`` text chunk too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parlab.data.images import load_rgb
from parlab.errors import ConfigError, ParlabError
from parlab.files import write_atomic
from parlab.inference import LoadedModel, list_images, load_model, predict
from parlab.visualisation.cams import attribute_cams, cam_method
from parlab.visualisation.overlays import overlay
from parlab.visualisation.selection import attribute_index

MIN_HEIGHT = 320  # pixels: a 64x32 crop is drawn large enough to see where the map lies
DPI = 100
_UNSAFE = re.compile(r"[^\w.-]")  # "Skirt&Dress" -> "Skirt_Dress": no shell quoting, no folders


@dataclass(frozen=True)
class CAMFile:
    """One overlay :func:`write_cams` wrote."""

    path: Path
    image: Path
    attribute: str
    probability: float  # the model's for ``attribute`` on ``image``, as parlab predict reports it


def cam_file_name(image: Path, attribute: str) -> str:
    """``{image stem}_{attribute}.png``, the attribute's unsafe characters replaced by ``_``."""
    return f"{image.stem}_{_UNSAFE.sub('_', attribute)}.png"


def _outputs(files: list[Path], attributes: list[str], output: Path, overwrite: bool) -> dict[tuple[Path, str], Path]:
    """The output path of each (image, attribute); a name two images share, or an existing file, is refused."""
    if output.exists() and not output.is_dir():
        raise ParlabError(f"{output} is a file, not a folder for the PNGs")
    paths: dict[tuple[Path, str], Path] = {}
    shown_by: dict[Path, Path] = {}
    for image in files:
        for attribute in attributes:
            path = output / cam_file_name(image, attribute)
            if shown_by.setdefault(path, image) != image:
                raise ConfigError(f"{shown_by[path]} and {image} would both be written to {path}; give them in "
                                  "separate commands with different output folders")
            paths[image, attribute] = path
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ParlabError(f"{existing[0]} exists{more}; pass --overwrite to replace it")
    return paths


def _save(shown: np.ndarray, title: str, path: Path) -> None:
    """``shown`` (H, W, 3) uint8 under ``title``, as a PNG at least :data:`MIN_HEIGHT` pixels high."""
    from matplotlib.figure import Figure  # no pyplot: nothing global, no figure left open

    height, width = shown.shape[:2]
    scale = max(1.0, MIN_HEIGHT / height) / DPI
    fig = Figure(figsize=(width * scale, height * scale), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(shown)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.02,
                                               metadata={"Title": title.replace("\n", " ")}))


def write_cams(checkpoint: str | Path | LoadedModel, images: Iterable[str | Path], attributes: Iterable[str],
               output: str | Path, method: str = "gradcam", overwrite: bool = False, device: str = "cpu",
               clip_weights: str | None = None) -> list[CAMFile]:
    """Write ``output/{image stem}_{attribute}.png`` for every image and attribute; return them in that order.

    Args:
        checkpoint: a ``best.pt``, its run folder, or a :class:`~parlab.inference.LoadedModel`.
        images: image files or folders (searched recursively).
        attributes: attribute names of the model.
        output: the folder of the PNGs (made when missing).
        method: a name of :func:`~parlab.visualisation.cams.cam_methods`.
        overwrite: replace existing PNGs; without it, one that exists is refused before any work.
        device, clip_weights: as :func:`~parlab.inference.load_model` takes them.
    """
    files = list(dict.fromkeys(f for item in images for f in list_images(item)))
    names = list(dict.fromkeys(attributes))
    cam_method(method)  # an unknown name is refused before any work
    paths = _outputs(files, names, Path(output), overwrite)
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device, clip_weights)
    indices = [attribute_index(name, loaded.attributes) for name in names]
    probs = predict(loaded, files)[[f"prob.{name}" for name in names]].to_numpy()  # (N, K)
    cams = []
    for i, image_path in enumerate(files):
        image = load_rgb(image_path)
        x = loaded.transform(image).unsqueeze(0).to(loaded.device)
        maps = attribute_cams(loaded.model, x, indices, method)[0]  # (K, H, W)
        for k, name in enumerate(names):
            shown = overlay(image, maps[k], letterboxed=loaded.transform.square)
            _save(shown, f"{name} ({method})\np = {probs[i, k]:.3f}", paths[image_path, name])
            cams.append(CAMFile(paths[image_path, name], image_path, name, float(probs[i, k])))
    return cams
