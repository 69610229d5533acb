"""Looking inside models: attribute CAMs, PromptPAR's token attention, overlays on the original image.

- :func:`attribute_cams` (:mod:`.cams`): Grad-CAM family maps per image and attribute for
  baseline, FRDL and PromptPAR models;
- :func:`token_attention` (:mod:`.attention`): where CLS and each region's part token look;
  :func:`attention_rollout` for ViT backbones;
- :func:`overlay` (:mod:`.overlays`): a map on the original image at its own aspect ratio;
- :func:`write_cams` (:mod:`.cam_files`, the ``parlab cam`` command): a PNG per image and attribute;
- :func:`select_rows` (:mod:`.selection`): one attribute's true/false positives/negatives, ordered;
- :func:`strongest_channels`, :func:`attribute_features` (:mod:`.features`): a layer's strongest
  feature maps and FRDL's attribute-specific features;
- :func:`cam_grid`, :func:`cam_gallery`, :func:`token_attention_figure`, :func:`channel_maps`,
  :func:`head_boundaries` (:mod:`.figures`): the figures of all of the above.

The two ipywidgets, each with a static form for papermill, are imported from their modules:
:mod:`.dataset_browser` (a dataset's images and labels) and :mod:`.prediction_explorer`
(trained models' predictions, metrics at a threshold, CAMs, the worst mistakes' gallery).
"""

from parlab.visualisation.attention import attention_rollout, token_attention
from parlab.visualisation.cam_files import CAMFile, write_cams
from parlab.visualisation.cams import CAMLayer, attribute_cams, cam_layer, cam_method, cam_methods
from parlab.visualisation.features import attribute_features, pca_2d, strongest_channels
from parlab.visualisation.figures import cam_gallery, cam_grid, channel_maps, head_boundaries, token_attention_figure
from parlab.visualisation.overlays import overlay, upscale_grid
from parlab.visualisation.selection import attribute_index, model_inputs, pick_rows, select_rows

__all__ = ["CAMFile", "CAMLayer", "attention_rollout", "attribute_cams", "attribute_features", "attribute_index",
           "cam_gallery", "cam_grid", "cam_layer", "cam_method", "cam_methods", "channel_maps", "head_boundaries",
           "model_inputs", "overlay", "pca_2d", "pick_rows", "select_rows", "strongest_channels", "token_attention",
           "token_attention_figure", "upscale_grid", "write_cams"]
