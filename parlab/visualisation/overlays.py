"""Maps laid over the original image, at the image's own size and aspect ratio."""

from __future__ import annotations

import numpy as np
from PIL import Image


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet",
            letterboxed: bool = False) -> np.ndarray:
    """RGB uint8 array (H0, W0, 3): ``image`` with ``heatmap`` (h, w) in [0, 1] resized onto it.

    The map is resized to the original image (not the other way round), so a map computed at the
    model's 64x32 or 224x224 input lands on the person as the dataset stores it. ``letterboxed``: the
    map covers the image centred on a square (a ``PARTransform(square=True)`` input); only the part
    over the image is laid on it, not the black bars.
    """
    import matplotlib

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h0, w0 = rgb.shape[:2]
    heat = Image.fromarray(np.clip(heatmap, 0.0, 1.0).astype(np.float32), mode="F")
    box = None
    if letterboxed:  # where letterbox() pasted the image on its square, in map pixels
        side = max(w0, h0)
        left, top = (side - w0) // 2, (side - h0) // 2
        sx, sy = heat.width / side, heat.height / side
        box = (left * sx, top * sy, (left + w0) * sx, (top + h0) * sy)
    resized = heat.resize((w0, h0), Image.Resampling.BILINEAR, box=box)
    colours = matplotlib.colormaps[cmap](np.asarray(resized))[..., :3]
    blend = (1 - alpha) * rgb + alpha * colours
    return np.round(255 * np.clip(blend, 0.0, 1.0)).astype(np.uint8)  # Image.fromarray and PNG writers take it


def upscale_grid(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) token grid as an (H, W) map, each token a block (no smoothing), scaled to [0, 1]."""
    top = float(values.max())
    scaled = values / top if top > 0 else values
    image = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image)
