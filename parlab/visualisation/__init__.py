"""Looking inside models: attribute CAMs, PromptPAR's token attention, overlays on the original image.

- :func:`attribute_cams` (:mod:`.cams`): Grad-CAM family maps per image and attribute for
  baseline, FRDL and PromptPAR models;
- :func:`token_attention` (:mod:`.attention`): where CLS and each region's part token look;
- :func:`overlay` (:mod:`.overlays`): a map on the original image at its own aspect ratio.
"""

from parlab.visualisation.attention import token_attention
from parlab.visualisation.cams import CAMLayer, attribute_cams, cam_layer, cam_methods
from parlab.visualisation.overlays import overlay, upscale_grid

__all__ = ["CAMLayer", "attribute_cams", "cam_layer", "cam_methods", "overlay", "token_attention", "upscale_grid"]
