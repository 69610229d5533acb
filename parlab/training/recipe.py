"""What the training engine trains: the model, its optimiser, its loss and what its checkpoints hold.

The engine (:mod:`parlab.training.engine`) owns everything a method shares:
data, sharding, AMP, EMA, gradient clipping, checkpoints and resuming,
selection and the final evaluation. A :class:`Recipe` supplies the rest. The
baseline recipe trains a timm backbone with a PAR head on the config's
optimiser and loss; methods with their own model (PromptPAR) subclass it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from parlab.data.images import PARTransform, build_transform
from parlab.models import build_model
from parlab.training.checkpoint import load_state_strict
from parlab.training.config import TrainConfig
from parlab.training.losses import PARLoss
from parlab.training.optim import build_optimizer, build_scheduler, steps_per_batch


class Recipe:
    """The baseline: ``config.backbone`` with ``config.head``, trained end to end."""

    method = "baseline"
    method_config = None  # the method's own config dataclass, beside the TrainConfig

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, num_attributes: int, sentences: tuple[str, ...] = (), pretrained: bool = True) -> nn.Module:
        """The model; ``sentences`` describe the attributes; ``pretrained=False`` when a checkpoint will be loaded."""
        c = self.config
        return build_model(c.backbone, num_attributes, c.head, c.weights if pretrained else None, c.drop_rate,
                           c.image_size)

    def transform(self, train: bool) -> PARTransform:
        return build_transform(self.config.image_size, train=train)

    def optimizer(self, model: nn.Module, steps_per_epoch: int):
        """(optimizer, scheduler or None, whether the scheduler steps per batch)."""
        optimizer = build_optimizer(model.parameters(), self.config)
        return optimizer, build_scheduler(optimizer, self.config, steps_per_epoch), steps_per_batch(self.config)

    def criterion(self, train_ratio: np.ndarray) -> nn.Module:
        """The training loss: ``criterion(outputs, targets)`` with outputs as the model returns them."""
        return PARLoss(self.config.loss, train_ratio)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What checkpoints store of the model."""
        return model.state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_strict(model, state, source)

    def checkpoint_fields(self) -> dict:
        """Extra fields of every checkpoint and of ``config.json`` (the method and its own config)."""
        return {}

    def check_resume(self, checkpoint: dict, source: str) -> None:
        """Refuse to resume ``checkpoint`` when the method's own config or inputs changed."""
