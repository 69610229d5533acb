"""PromptPAR prompt tuning on the shared training engine.

:func:`train_promptpar` runs :func:`parlab.training.engine.fit` with a
:class:`PromptPARTask`: the data, splits, AMP, EMA, gradient clipping,
resuming, ``torchrun`` and the final evaluation are the baseline's; the
task supplies the model, two parameter groups as in the reference code's two
optimisers (heads, embeddings and fusion at the method's ``lr`` and
``warmup_epochs``; prompts, part tokens, text prompts, the global-local
BatchNorm and the temperature at ``prompt_lr`` and ``prompt_warmup_epochs``,
each with its own warm-up before a common cosine; each group's gradient norm
clipped at ``grad_clip`` on its own), the loss (the method's loss on the main
logits plus ``aux_weight`` times the same on the global-local logits) and
CLIP's input normalisation.

Checkpoints hold only the trained parameters, the configs and the sha256
of the base CLIP weights file; loading one onto another file is refused.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from parlab.errors import ConfigError
from parlab.methods.promptpar.config import PromptPARConfig
from parlab.methods.promptpar.model import PromptPAR, build_model
from parlab.models.clip import clip_weights_record
from parlab.training.checkpoint import CheckpointError
from parlab.runs import RunResult
from parlab.training.config import DataConfig, RunFields
from parlab.training.engine import fit
from parlab.training.losses import PARLoss
from parlab.training.optim import WarmupCosine, build_optimizer, build_scheduler
from parlab.training.task import SupervisedTask

# The reference's prompt optimiser: the trainable parameters of its CLIP (prompt_deep, prompt_text_deep,
# part_class_embedding, agg_bn, softmax_model's temperature). Matched on the first component of a name.
PROMPT_PARAMETERS = ("prompts", "part_tokens", "text_prompts", "aux_bn", "temperature")


class PromptPARLoss(nn.Module):
    """The method's loss on the main logits plus ``aux_weight`` times it on the auxiliary logits."""

    def __init__(self, loss: PARLoss, aux_weight: float) -> None:
        super().__init__()
        self.loss, self.aux_weight = loss, aux_weight

    def forward(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, tuple):
            logits, aux = outputs
            return self.loss(logits, targets) + self.aux_weight * self.loss(aux, targets)
        return self.loss(outputs, targets)


def base_weights_record(model_config: PromptPARConfig) -> dict:
    """Id, path and sha256 of the base CLIP weights (path and sha256 None for random weights).

    ``model_config.weights`` is a local file, an open_clip tag (``"openai"``) or ``"hf-hub:ORG/NAME"``; for the
    last two the path and sha256 are those of the Hugging Face cache file the model is built from, so a
    checkpoint trained on ``"openai"`` loads wherever that same file is cached.
    """
    return clip_weights_record(model_config.clip_model, model_config.weights)


class GroupGradClip:
    """An optimiser step pre-hook: clip the gradient norm of each parameter group at ``max_norm`` separately.

    The reference code clips its two modules (heads and fusion; its CLIP with the prompts) one at a time, which
    are exactly PromptPAR's two groups. Run inside ``optimizer.step()``; under fp16 the engine has unscaled the
    gradients before (:func:`~parlab.training.engine.optimizer_step`). On an overflow the update is skipped (by
    the GradScaler, or inside a fused kernel after this hook ran), so clipping inf gradients changes nothing.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            nn.utils.clip_grad_norm_([p for p in group["params"] if p.grad is not None], self.max_norm)


class PromptPARTask(SupervisedTask):
    """PromptPAR for the engine; ``method`` must already name the dataset's attributes (:meth:`for_dataset`).

    Gradient clipping is per parameter group, as in the reference code (which clips its heads/fusion module and
    its prompted CLIP separately, each at 10): :attr:`grad_clip` is 0, so the engine's single clip over all
    parameters is off, and the optimiser carries a :class:`GroupGradClip` step pre-hook at the method's
    ``grad_clip`` instead.
    """

    name = "PromptPAR"
    method_class = PromptPARConfig

    def __init__(self, run: RunFields, data: DataConfig, method: PromptPARConfig, base: dict | None = None) -> None:
        # The model's image size is the one the data is resized to.
        super().__init__(run, data, replace(method, image_size=data.image_size))
        self._base = base

    @property
    def base(self) -> dict:
        """The base CLIP weights' record, hashed on first use: a run opened from its saved predictions never
        needs it (a ViT-L/14 file is 1.7 GB)."""
        if self._base is None:
            self._base = base_weights_record(self.method)
        return self._base

    @classmethod
    def from_record(cls, record: dict, source: str, clip_weights: str | None = None, **_) -> PromptPARTask:
        """The task of a run's checkpoint or ``config.json``; ``clip_weights``: where the base CLIP is now.

        A checkpoint (it has weights) must have been trained on that same base file.
        """
        task = super().from_record(record, source)
        if clip_weights is not None:
            task.method = replace(task.method, weights=clip_weights)
        if "model" in record:
            check_base_weights(record, task.base, source)
        return task

    @classmethod
    def from_options(cls, values: dict[str, dict]) -> PromptPARTask:
        task = super().from_options(values)
        return cls.for_dataset(task.run, task.data, task.method)

    @classmethod
    def for_dataset(cls, run: RunFields, data: DataConfig, method: PromptPARConfig) -> PromptPARTask:
        """The task with ``method`` completed from the dataset: its attribute count and sentences.

        The dataset's own sentences (``Annotations.sentences``) are used unless ``method`` gives some.
        """
        annotations = data.annotations()
        sentences = method.attribute_sentences or annotations.sentences
        if len(sentences) != annotations.num_attributes:
            raise ConfigError(f"{len(sentences)} attribute sentences for the {annotations.num_attributes} "
                              f"attributes of {annotations.name}")
        return cls(run, data, replace(method, num_attributes=annotations.num_attributes,
                                      attribute_sentences=tuple(sentences)))

    @property
    def grad_clip(self) -> float:
        """0: the engine's global clip is off; each group is clipped by the optimiser's :class:`GroupGradClip`."""
        return 0.0

    def build_model(self, num_attributes: int, pretrained: bool = True) -> PromptPAR:
        # The base CLIP is always loaded: checkpoints hold only the trained parameters.
        if num_attributes != self.method.num_attributes:
            raise ConfigError(f"PromptPAR config has {self.method.num_attributes} attributes, the data "
                             f"{num_attributes}")
        return build_model(self.method)

    def backbone_weights(self) -> None:
        return None  # the base CLIP's record is base_weights

    default_transform = "clip"

    def optimizer_and_schedule(self, model: PromptPAR, steps_per_epoch: int):
        groups = {"heads": [], "prompts": []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups["prompts" if name.split(".")[0] in PROMPT_PARAMETERS else "heads"].append(p)
        params = [{"params": groups["heads"]}]
        if groups["prompts"]:
            params.append({"params": groups["prompts"], "lr": self.method.prompt_lr})
        m = self.method
        optimizer = build_optimizer(params, m)
        if m.grad_clip > 0:
            optimizer.register_step_pre_hook(GroupGradClip(m.grad_clip))
        if m.scheduler != "cosine":
            return optimizer, build_scheduler(optimizer, m, self.run.epochs, steps_per_epoch), False
        total = self.run.epochs * steps_per_epoch
        rules = [WarmupCosine(m.warmup_epochs * steps_per_epoch, total),
                 WarmupCosine(m.prompt_warmup_epochs * steps_per_epoch, total)][:len(params)]
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rules), True

    def criterion(self, train_ratio: np.ndarray) -> nn.Module:
        return PromptPARLoss(PARLoss(self.method.loss, train_ratio), self.method.aux_weight)

    def state_dict(self, model: PromptPAR) -> dict[str, torch.Tensor]:
        return model.trained_state_dict()

    def load_state_dict(self, model: PromptPAR, state: dict[str, torch.Tensor], source: str) -> None:
        model.load_trained_state_dict(state, source)

    def checkpoint_fields(self) -> dict:
        return super().checkpoint_fields() | {"base_weights": self.base}

    def resumable(self, key: str) -> tuple[str, ...]:
        return ("weights",) if key == "method" else ()  # the base file may have moved; its sha256 is checked

    def check_resume(self, checkpoint: dict, source: str) -> None:
        super().check_resume(checkpoint, source)
        check_base_weights(checkpoint, self.base, source)


def check_base_weights(checkpoint: dict, base: dict, source: str) -> None:
    """Refuse a checkpoint trained on other base CLIP weights than ``base``."""
    trained_on = checkpoint.get("base_weights", {}).get("sha256")
    if trained_on != base["sha256"]:
        raise CheckpointError(
            f"{source}: trained on base CLIP weights {_short(trained_on)} "
            f"({checkpoint.get('base_weights', {}).get('path')}), but {base['path']} is {_short(base['sha256'])}; "
            "PromptPAR checkpoints hold only the trained parameters, so they need the same base file")


def _short(digest: str | None) -> str:
    return "random (no file)" if digest is None else f"sha256 {digest[:12]}..."


def train_promptpar(run: RunFields, data: DataConfig, method: PromptPARConfig, existing: str = "error",
                    progress: bool = True, log=None) -> RunResult:
    """Prompt-tune PromptPAR on ``data`` as ``run`` says (see the module docstring).

    ``method.num_attributes`` and ``attribute_sentences`` are taken from the dataset (its
    ``Annotations.sentences``) unless sentences are given; ``image_size`` is the data's.
    """
    return fit(PromptPARTask.for_dataset(run, data, method), existing, progress, log)
