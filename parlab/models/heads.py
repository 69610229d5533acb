"""PAR heads on pooled backbone features.

- :class:`LinearHead`: the Rethinking_of_PAR classifier, one linear layer to A
  logits with an optional BatchNorm after it (docs/methods.md section 3).
- :class:`AttributeFeatureHead`: FRDL's attribute-specific features
  (Zhou et al., ICML 2024): f = BN(Linear(C, A*C)(g)) reshaped to (A, C), then
  one Linear(C, 1) per attribute on ReLU(f_j) (docs/methods.md section 4); ``attribute_bn`` adds a
  BatchNorm on its logits, an ablation that shows what that BatchNorm does to the operating point.
- :class:`AttributeClassifiers`: the A per-attribute linear classifiers alone,
  stored as one (A, C) weight so they run as a single einsum; FRDL's stage-2
  head set is another instance of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    def add(factory):
        HEADS[name] = factory
        return factory

    return add


class LinearHead(nn.Module):
    """(B, C) features -> (B, A) logits: Linear, optionally followed by BatchNorm1d."""

    def __init__(self, in_features: int, num_attributes: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_attributes)
        self.bn = nn.BatchNorm1d(num_attributes) if batch_norm else nn.Identity()

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(g))


class AttributeClassifiers(nn.Module):
    """A independent Linear(C, 1): (B, A, C) features -> (B, A) logits."""

    def __init__(self, num_attributes: int, in_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_attributes, in_features))
        self.bias = nn.Parameter(torch.empty(num_attributes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as A separate nn.Linear(C, 1) layers.
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bac,ac->ba", f, self.weight) + self.bias


class AttributeFeatureHead(nn.Module):
    """FRDL's head: (B, C) pooled features -> (B, A, C) attribute features -> (B, A) logits."""

    def __init__(self, in_features: int, num_attributes: int, logit_bn: bool = False) -> None:
        super().__init__()
        self.num_attributes = num_attributes
        self.expand = nn.Linear(in_features, num_attributes * in_features)
        self.bn = nn.BatchNorm1d(num_attributes * in_features)
        self.classifiers = AttributeClassifiers(num_attributes, in_features)
        self.logit_bn = nn.BatchNorm1d(num_attributes) if logit_bn else nn.Identity()

    def features(self, g: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, A, C) attribute-specific features f (before the ReLU)."""
        return self.bn(self.expand(g)).view(g.shape[0], self.num_attributes, -1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.logit_bn(self.classifiers(torch.relu(self.features(g))))


@register_head("linear")
def _linear(in_features: int, num_attributes: int) -> nn.Module:
    return LinearHead(in_features, num_attributes, batch_norm=False)


@register_head("linear_bn")
def _linear_bn(in_features: int, num_attributes: int) -> nn.Module:
    return LinearHead(in_features, num_attributes, batch_norm=True)


@register_head("attribute")
def _attribute(in_features: int, num_attributes: int) -> nn.Module:
    return AttributeFeatureHead(in_features, num_attributes)


@register_head("attribute_bn")
def _attribute_bn(in_features: int, num_attributes: int) -> nn.Module:
    return AttributeFeatureHead(in_features, num_attributes, logit_bn=True)
