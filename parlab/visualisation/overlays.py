"""Maps laid over the original image, at the image's own size and aspect ratio."""

from __future__ import annotations

import numpy as np
from PIL import Image


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """RGB float array (H0, W0, 3) in [0, 1]: ``image`` with ``heatmap`` (h, w) in [0, 1] resized onto it.

    The map is resized to the original image (not the other way round), so a map computed at the
    model's 64x32 or 224x224 input lands on the person as the dataset stores it.
    """
    import matplotlib

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h0, w0 = rgb.shape[:2]
    resized = Image.fromarray(np.clip(heatmap, 0.0, 1.0).astype(np.float32), mode="F").resize((w0, h0),
                                                                                            Image.Resampling.BILINEAR)
    colours = matplotlib.colormaps[cmap](np.asarray(resized))[..., :3]
    return np.clip((1 - alpha) * rgb + alpha * colours, 0.0, 1.0)  # float rounding may step past 1


def upscale_grid(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) token grid as an (H, W) map, each token a block (no smoothing), scaled to [0, 1]."""
    top = float(values.max())
    scaled = values / top if top > 0 else values
    image = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image)
