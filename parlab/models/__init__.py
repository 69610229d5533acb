"""Models: timm backbones loaded offline, PAR heads, and the classifier that joins them.

``build_model(backbone, num_attributes, head=..., weights=...)`` is the one
entry point; the heads are separate modules so that methods (FRDL's
attribute-specific features) reuse them.
"""

from parlab.models.backbones import BackboneError, available_backbones, create_backbone
from parlab.models.classifier import PARModel, build_model
from parlab.models.heads import HEADS, AttributeClassifiers, AttributeFeatureHead, LinearHead

__all__ = [
    "HEADS",
    "AttributeClassifiers",
    "AttributeFeatureHead",
    "BackboneError",
    "LinearHead",
    "PARModel",
    "available_backbones",
    "build_model",
    "create_backbone",
]
