"""Models: timm backbones loaded offline, PAR heads, the classifier that joins them, CLIP.

``build_model(backbone, num_attributes, head=..., weights=...)`` is the one
entry point; the heads are separate modules so that methods (FRDL's
attribute-specific features) reuse them. ``create_clip(name, weights)``
(:mod:`parlab.models.clip`) builds an open_clip model from a local weights file.
"""

from parlab.models.backbones import BackboneError, available_backbones, create_backbone
from parlab.models.classifier import PARModel, build_model
from parlab.models.clip import clip_models, create_clip
from parlab.models.heads import HEADS, AttributeClassifiers, AttributeFeatureHead, LinearHead
from parlab.models.parameters import count_parameters

__all__ = [
    "HEADS",
    "AttributeClassifiers",
    "AttributeFeatureHead",
    "BackboneError",
    "LinearHead",
    "PARModel",
    "available_backbones",
    "build_model",
    "clip_models",
    "count_parameters",
    "create_backbone",
    "create_clip",
]
