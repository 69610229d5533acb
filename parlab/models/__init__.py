"""Models: timm backbones, PAR heads, the classifier that joins them, CLIP.

``build_model(backbone, num_attributes, head=..., weights=...)`` is the one
entry point; the heads are separate modules so that methods (FRDL's
attribute-specific features) reuse them. ``create_clip(name, weights)``
(:mod:`parlab.models.clip`) builds an open_clip model. Weights are a local file,
a named pretrained tag (``"pretrained"`` for timm, ``"openai"``... for open_clip)
or ``"hf-hub:ORG/NAME"``, the last two through the Hugging Face cache
(:mod:`parlab.models.weights`); :func:`backbone_weights_record` and
:func:`clip_weights_record` give the file and sha256 a run starts from.
"""

from parlab.models.backbones import BackboneError, available_backbones, backbone_weights_record, create_backbone
from parlab.models.classifier import PARModel, build_model
from parlab.models.clip import clip_models, clip_weights_record, create_clip, resolve_clip_weights
from parlab.models.heads import HEADS, AttributeClassifiers, AttributeFeatureHead, LinearHead
from parlab.models.parameters import count_parameters
from parlab.models.weights import weights_record

__all__ = [
    "HEADS",
    "AttributeClassifiers",
    "AttributeFeatureHead",
    "BackboneError",
    "LinearHead",
    "PARModel",
    "available_backbones",
    "backbone_weights_record",
    "build_model",
    "clip_models",
    "clip_weights_record",
    "count_parameters",
    "create_backbone",
    "create_clip",
    "resolve_clip_weights",
    "weights_record",
]
