"""What the engine trains: a :class:`Task` per method, on one loop for all.

The engine (:mod:`parlab.training.engine`) owns what every method shares: the
run folder, data and splits, per-epoch seeding, the optimiser step (AMP loss
scaling, gradient clipping, EMA, per-step schedules), the NaN guard,
validation, selection, checkpoints, exact resume and the final test. A task
supplies the rest, the way timm's ``task`` classes and Lightning's hooks do:

- :meth:`Task.setup` builds the trained module (:attr:`Task.model`), its
  optimiser and schedule and whatever the method needs besides;
- :meth:`Task.on_epoch_start` and :meth:`Task.train_batches` give an epoch's
  ``(inputs, targets, rows)`` batches; :meth:`Task.training_step` returns
  ``{"loss", "output"}`` for one of them;
- :meth:`Task.evaluation_model` and :meth:`Task.predict` are what validation
  and test score; :meth:`Task.load_selected` rebuilds the selected model from
  the weights saved in ``best.pt``;
- :meth:`Task.extra_state` / :meth:`Task.load_extra_state` carry what an exact
  resume needs beyond weights and optimiser (FRDL's bank, GOAT's state).

Every task holds three configs, by the names its files keep them under
(:mod:`parlab.training.record`): :attr:`Task.run` (what every run has),
:attr:`Task.data` (the dataset and its splits) and :attr:`Task.method` (the
method's own dataclass).

:class:`SupervisedTask` is the baseline (a timm backbone and a PAR head trained
end to end); PromptPAR subclasses it, FRDL's stage 2 derives from :class:`Task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from parlab.data.annotations import Annotations
from parlab.data.image_cache import ImageCache
from parlab.data.images import PARTransform, named_transform
from parlab.models import build_model
from parlab.models.backbones import backbone_weights_record
from parlab.training import distributed as dist
from parlab.training.checkpoint import CheckpointError, load_state_strict
from parlab.training.config import RESUMABLE_CHANGES, BaselineConfig, DataConfig, RunFields
from parlab.training.batches import evaluation_batches, training_batches
from parlab.training.evaluation import Predictions, autocast, predict_dataset
from parlab.training.losses import PARLoss
from parlab.training.optim import build_optimizer, build_scheduler, steps_per_batch
from parlab.training.record import upgrade_record
from parlab.training.seeding import seed_everything
from parlab.training.splits import SplitPlan


@dataclass(frozen=True)
class RunData:
    """The dataset of a run and how it is split (the same for every method)."""

    annotations: Annotations
    plan: SplitPlan
    train_ratio: np.ndarray  # (A,) positive ratio of the training split
    images: ImageCache | None = None  # the run's uint8 image cache (DataConfig.image_cache), if it has one


class Task:
    """A method's part of a training run; see the module docstring for the hooks and their order."""

    name = "baseline"  # what runs record as their method_name (and the registry knows them by)
    method_class: type = BaselineConfig  # the dataclass of :attr:`method`
    # False when the trained module is only part of the evaluation model (FRDL trains heads on a frozen
    # extractor): then only best.pt holds a complete model.
    trains_whole_model = True
    extra_files: tuple[str, ...] = ()  # the method's own files in the run folder (removed by an overwrite)

    # Built by setup().
    model: nn.Module  # the trained module, whose parameters the optimiser steps
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # an lr scheduler, or None
    per_step: bool = False  # whether the scheduler steps after every batch (else after every epoch)
    scaler: torch.amp.GradScaler
    ema: Any = None  # timm's ModelEmaV3 of `model`, or None
    validation_loss: nn.Module  # on validation logits (CPU) and targets

    def __init__(self, run: RunFields, data: DataConfig, method: Any) -> None:
        self.run, self.data, self.method = run, data, method

    @classmethod
    def from_options(cls, values: dict[str, dict]) -> Task:
        """The task of a method's option groups (the command line): ``{"run": {..}, "data": {..}, "method": {..}}``."""
        return cls(RunFields.from_dict(values["run"]), DataConfig.from_dict(values["data"]),
                   cls.method_class.from_dict(values["method"]))

    @classmethod
    def from_record(cls, record: dict, source: str, **options) -> Task:
        """The task of a run's ``config.json`` or checkpoint (``options``: method-specific, e.g. moved files)."""
        record = cls.upgrade_checkpoint(record)
        return cls(RunFields.from_dict(record["run"], source=source),
                   DataConfig.from_dict(record["data"], source=source),
                   cls.method_class.from_dict(record["method"], source=source))

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: dict) -> dict:
        """A checkpoint or ``config.json`` written by an earlier parlab, in today's layout."""
        return upgrade_record(checkpoint, cls.method_class)

    @property
    def model_config(self) -> Any:
        """The config that describes the evaluation model's architecture (FRDL: its stage 1's)."""
        return self.method

    @property
    def grad_clip(self) -> float:
        """Max gradient norm of the trained parameters; 0 disables clipping."""
        return 0.0

    # --- before the data is loaded
    def start(self, ctx: dist.DistContext) -> None:
        """Read what the method needs before the data (FRDL: the stage-1 model)."""

    def check_resume(self, checkpoint: dict, source: str) -> None:
        """Refuse to resume ``checkpoint`` when a config (but for ``RESUMABLE_CHANGES``) changed."""
        for key in ("run", "data", "method"):
            mine = getattr(self, key)
            saved = type(mine).from_dict(checkpoint[key], source=source)
            refuse_differences(saved.differences(mine, ignore=RESUMABLE_CHANGES[key] + self.resumable(key)),
                               source, f"{key} config")

    def resumable(self, key: str) -> tuple[str, ...]:
        """Fields of the ``key`` config ("run", "data", "method") that may change on resume beyond the shared ones."""
        return ()

    # --- building
    def setup(self, data: RunData, ctx: dist.DistContext, resume: dict | None, progress: bool) -> None:
        """Build :attr:`model`, the optimiser and the rest; ``resume`` is the checkpoint being resumed."""
        raise NotImplementedError

    def checkpoint_fields(self) -> dict:
        """Fields of every checkpoint and of ``config.json``: the method's name, the three configs, its inputs."""
        return {"method_name": self.name, "run": self.run.to_dict(), "data": self.data.to_dict(),
                "method": self.method.to_dict()}

    # --- training
    def on_epoch_start(self, epoch: int) -> None:
        """Called after the global RNGs were seeded for ``epoch`` (0-based), before its first batch."""

    def train_batches(self, epoch: int) -> Iterable:
        """The epoch's ``(inputs, targets, rows)`` batches; ``len()`` gives their number."""
        raise NotImplementedError

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, "output": outputs}`` of one batch; the engine does backward and the step."""
        raise NotImplementedError

    def epoch_summary(self) -> dict[str, Any]:
        """Method-specific columns of the epoch's row in ``log.csv``."""
        return {}

    def forward_only(self, batch) -> None:
        """The training model's forward pass on ``batch``, in training mode, changing nothing but BatchNorm
        statistics: the pass of ``RunFields.precise_bn``. Tasks whose steps have other effects (FRDL's bank)
        leave it out, and the engine refuses ``precise_bn`` for them."""
        raise NotImplementedError

    def epoch_tag(self, epoch: int) -> str:
        """A word for the epoch line of the log (FRDL: natural or balanced)."""
        return ""

    def extra_state(self) -> dict[str, Any]:
        """What ``last.pt`` must hold beyond weights, optimiser and RNGs for an exact resume."""
        return {}

    def load_extra_state(self, checkpoint: dict) -> None:
        """Restore :meth:`extra_state` from a resumed ``last.pt``."""

    def save_files(self, out) -> None:
        """Write the method's own files of the run folder after each epoch (rank 0)."""

    # --- evaluation
    def evaluation_model(self) -> nn.Module:
        """The model that validation scores and ``best.pt`` saves (the EMA copy when there is one)."""
        return self.model if self.ema is None else self.ema.module

    def predict(self, model: nn.Module, split: str, progress: bool = False) -> Predictions:
        """Logits of ``model`` on every image of ``split`` ("val" or "test"), gathered from all ranks."""
        raise NotImplementedError

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What checkpoints store of a model."""
        return model.state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_strict(model, state, source)

    def build_model(self, num_attributes: int, pretrained: bool = True) -> nn.Module:
        """The evaluation model's architecture; ``pretrained=False`` when a checkpoint will be loaded."""
        raise NotImplementedError

    def load_selected(self, state: dict[str, torch.Tensor], num_attributes: int, source: str,
                      device: torch.device | str = "cpu") -> nn.Module:
        """The evaluation model with the weights ``state`` (of ``best.pt``), on ``device``, in eval mode."""
        model = self.build_model(num_attributes, pretrained=False)
        self.load_state_dict(model, state, source)
        return model.to(device).eval()

    default_transform = "par"  # the input pipeline (parlab.data.images.TRANSFORMS) when the data names none

    def transform(self, train: bool) -> PARTransform:
        """The input pipeline the data names (or the method's own), at the data's image size."""
        return named_transform(self.data.transform or self.default_transform, self.data.image_size, train)


def refuse_differences(diff: list[str], source: str, what: str = "config") -> None:
    if diff:
        raise CheckpointError(f"{source}: cannot resume with a different {what} (checkpoint vs requested):\n  "
                              + "\n  ".join(diff))


def wrap_ddp(module: nn.Module, ctx: dist.DistContext) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun, else itself."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)


class SupervisedTask(Task):
    """The baseline: ``method.backbone`` with ``method.head``, trained end to end on the method's loss."""

    @property
    def grad_clip(self) -> float:
        return self.method.grad_clip

    def checkpoint_fields(self) -> dict:
        return super().checkpoint_fields() | {"backbone_weights": getattr(self, "weights_record", None)}

    def build_model(self, num_attributes: int, pretrained: bool = True) -> nn.Module:
        m = self.method
        return build_model(m.backbone, num_attributes, m.head, m.weights if pretrained else None, m.drop_rate,
                           self.data.image_size)

    def backbone_weights(self) -> dict | None:
        """Which backbone weights a new run starts from (the file timm read, by sha256)."""
        return backbone_weights_record(self.method.backbone, self.method.weights)

    def criterion(self, train_ratio: np.ndarray) -> nn.Module:
        """The training loss: ``criterion(outputs, targets)`` with outputs as the model returns them."""
        return PARLoss(self.method.loss, train_ratio)

    def optimizer_and_schedule(self, model: nn.Module, steps_per_epoch: int):
        """(optimizer, scheduler or None, whether the scheduler steps per batch)."""
        optimizer = build_optimizer(model.parameters(), self.method)
        return (optimizer, build_scheduler(optimizer, self.method, self.run.epochs, steps_per_epoch),
                steps_per_batch(self.method))

    def setup(self, data: RunData, ctx: dist.DistContext, resume: dict | None, progress: bool) -> None:
        from timm.utils import ModelEmaV3

        run, m, ann = self.run, self.method, data.annotations
        self.ctx = ctx
        seed_everything(run.seed)  # same initial weights on every rank
        # A resumed run takes its weights from the checkpoint, not from the pretrained file.
        model = self.build_model(ann.num_attributes, pretrained=resume is None).to(ctx.device)
        if m.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if ctx.distributed and m.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        # A resumed run keeps the record of the weights it started from.
        self.weights_record = resume.get("backbone_weights") if resume is not None else self.backbone_weights()
        self.ema = ModelEmaV3(model, decay=m.ema_decay) if m.ema else None
        self.loader = training_batches(ann, data.plan.train, self.transform(train=True), run.batch_size, run.seed,
                                       run.num_workers, ctx, data.images)
        eval_tf = self.transform(train=False)
        self.loaders = {split: evaluation_batches(ann, rows, eval_tf, run.eval_batch_size, run.num_workers, ctx,
                                                  data.images)
                        for split, rows in (("val", data.plan.val), ("test", data.plan.test))}
        self.optimizer, self.scheduler, self.per_step = self.optimizer_and_schedule(model, len(self.loader))
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=run.amp == "fp16")
        self.loss = self.criterion(data.train_ratio).to(ctx.device)
        self.validation_loss = PARLoss(m.loss, data.train_ratio)
        self.net = wrap_ddp(model, ctx)

    def on_epoch_start(self, epoch: int) -> None:
        self.loader.sampler.set_epoch(epoch)
        self.net.train()

    def train_batches(self, epoch: int) -> Iterable:
        return self.loader

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        x, y, _ = batch
        device = self.ctx.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.method.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, self.run.amp):
            logits = self.net(x)
        return {"loss": self.loss(logits, y), "output": logits}

    def forward_only(self, batch) -> None:
        with torch.no_grad():
            self.training_step(batch)  # the loss as well: a few operations on (B, A) logits, no side effect

    def predict(self, model: nn.Module, split: str, progress: bool = False) -> Predictions:
        return predict_dataset(model, self.loaders[split], self.ctx, self.run.amp, self.method.channels_last,
                               progress, desc="test" if split == "test" else "eval")

    def load_selected(self, state: dict[str, torch.Tensor], num_attributes: int, source: str,
                      device: torch.device | str = "cpu") -> nn.Module:
        model = super().load_selected(state, num_attributes, source, device)
        return model.to(memory_format=torch.channels_last) if self.method.channels_last else model
