"""GOAT, FRDL's gradient-oriented feature augmentation (Zhou et al., ICML 2024; docs/methods.md section 4).

The paper describes a Bayesian feature augmentation that adds in-distribution
novelty through gradient-driven translations. As in the public code, it is
realised by letting a copy of the stage-1 extractor wander around its
converged solution: the copy is trained through the **frozen** stage-1
classifiers on a flooded BCE, ``|l - b| + b`` per element, where the flood
level ``b`` is the stage-1 model's mean loss of positives (b+) or negatives
(b-) of that attribute. Elements easier than the flood level are pushed up,
harder ones down, so the features move without converging anywhere new. Every
P steps the copy is reset to the stage-1 weights, which are kept in memory;
as in the public code, its Adam moments carry over a reset (unless asked
otherwise) and it trains with weight decay.
The features the copy produces feed FRDL's bank; at test time the extractor
is always the stage-1 one.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from parlab.methods.frdl_config import GOAT_MODULES
from parlab.models.heads import AttributeFeatureHead
from parlab.training.evaluation import autocast
from parlab.training.optim import fused, load_optimizer_state


def flood_levels(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute mean BCE of positives (b+) and of negatives (b-).

    Args:
        logits: (N, A) stage-1 logits.
        labels: (N, A) in {0, 1}; -1 entries are ignored.

    Returns:
        b_pos, b_neg: (A,) each. An attribute with no positives (negatives) gets b+ (b-) = 0,
        which makes the flooded loss the plain BCE for those elements.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels)
    per = F.binary_cross_entropy_with_logits(z, y.clamp(min=0).to(z.dtype), reduction="none")
    levels = []
    for value in (1, 0):
        mask = (y == value).to(z.dtype)
        count = mask.sum(0)
        levels.append(torch.where(count > 0, (per * mask).sum(0) / count.clamp(min=1), torch.zeros_like(count)))
    return levels[0].numpy(), levels[1].numpy()


def flooded_bce(logits: torch.Tensor, targets: torch.Tensor, b_pos: torch.Tensor, b_neg: torch.Tensor) -> torch.Tensor:
    """``sum_j |l_ij - b_ij| + b_ij`` averaged over the batch; -1 targets are ignored.

    Args:
        logits, targets: (B, A).
        b_pos, b_neg: (A,) flood levels of positives and negatives.
    """
    logits = logits.float()
    per = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), reduction="none")
    level = torch.where(targets == 1, b_pos.to(logits), b_neg.to(logits))
    flooded = (per - level).abs() + level
    return (flooded * (targets >= 0).to(logits.dtype)).sum(dim=1).mean()


class PerturbedExtractor(nn.Module):
    """A trainable copy of the stage-1 extractor in front of the frozen stage-1 classifiers.

    Input: images (B, 3, H, W) for ``modules="extractor"``, pooled features g (B, C) for
    ``modules="attribute_features"``. Output: attribute features f (B, A, C) and logits (B, A).
    """

    def __init__(self, stage1: nn.Module, modules: str = "extractor") -> None:
        super().__init__()
        if modules not in GOAT_MODULES:
            raise ValueError(f"GOAT modules must be one of {', '.join(GOAT_MODULES)}, got {modules!r}")
        if not isinstance(stage1.head, AttributeFeatureHead):
            raise ValueError("GOAT needs a stage-1 model with FRDL's attribute head (head='attribute')")
        self.backbone = copy.deepcopy(stage1.backbone) if modules == "extractor" else None
        self.head = copy.deepcopy(stage1.head)
        self.requires_grad_(True)  # the stage-1 model may come frozen
        self.head.classifiers.requires_grad_(False)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.backbone(inputs) if self.backbone is not None else inputs
        f = self.head.features(g)
        return f, self.head.classifiers(torch.relu(f))


class GOAT:
    """The wandering extractor: :meth:`step` trains it once and returns the features it produced.

    Args:
        stage1: the stage-1 PARModel (not modified).
        b_pos, b_neg: (A,) flood levels from :func:`flood_levels`.
        modules: which part is perturbed, one of :data:`GOAT_MODULES`.
        period: P, steps between resets to the stage-1 weights.
        lr: Adam learning rate of the perturbed parameters.
        weight_decay: Adam's L2 weight decay of the perturbed parameters (5e-4 in the public code).
        reset_optimizer: also clear Adam's moments at each reset (the public code keeps them).
        device: where the copy lives.
        distributed: wrap the copy in DistributedDataParallel, so that every rank's copy takes the
            same (averaged) steps and stays identical.
        amp: autocast of the forward pass ("none", "bf16", "fp16" with loss scaling).
    """

    def __init__(self, stage1: nn.Module, b_pos, b_neg, modules: str = "extractor", period: int = 50,
                 lr: float = 1e-5, weight_decay: float = 5e-4, reset_optimizer: bool = False,
                 device: torch.device | str = "cpu", distributed: bool = False, amp: str = "none") -> None:
        if period < 1:
            raise ValueError(f"GOAT period must be >= 1, got {period}")
        device = torch.device(device)
        self.module = PerturbedExtractor(stage1, modules).to(device)
        # BatchNorm keeps stage 1's running statistics: bank features stay in the space of the
        # test-time features, and only the weights wander.
        self.module.eval()
        self.reference = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        wandering = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(wandering, lr=lr, weight_decay=weight_decay, **fused(wandering))
        self.reset_optimizer = reset_optimizer
        self.b_pos = torch.tensor(np.asarray(b_pos, dtype=np.float32), device=device)  # a copy: inputs may be read-only
        self.b_neg = torch.tensor(np.asarray(b_neg, dtype=np.float32), device=device)
        self.period = period
        self.steps = 0  # since the last reset
        self.device, self.amp = device, amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.net = DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None) \
            if distributed else self.module

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the stage-1 weights (and fresh optimiser moments with ``reset_optimizer``)."""
        for key, value in self.module.state_dict().items():
            value.copy_(self.reference[key])
        if self.reset_optimizer:
            self.optimizer.state.clear()
        self.steps = 0

    def state_dict(self) -> dict:
        """What an exact resume needs at an epoch start, where the weights are stage 1's: optimiser and scaler."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One flooded-loss step on a batch; returns its features f (B, A, C), detached, and the loss.

        The features are those of the forward pass, before the update; after every ``period``-th
        step the weights go back to stage 1.
        """
        with autocast(self.device, self.amp):
            f, logits = self.net(inputs)
        loss = flooded_bce(logits, targets, self.b_pos, self.b_neg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps += 1
        if self.steps == self.period:
            self.reset()
        return f.detach().float(), float(loss.detach())
