"""FRDL stage 2, with optional GOAT, as a task on the shared engine (Zhou et al., ICML 2024; docs/methods.md section 4).

Stage 1 is an ordinary parlab run with FRDL's attribute head and plain BCE
(``train(run, data, BaselineConfig(head="attribute", loss="bce"))``). :func:`train_frdl`
reads its ``best.pt`` and trains a new head set ``h_ft`` on the frozen
stage-1 features: for the first ``balance_start`` epochs on each batch with
its natural labels, then on label-balanced batches popped from the
:class:`~parlab.methods.frdl.FeatureBank`, which every batch keeps feeding.
With GOAT the features come from a copy of the stage-1 extractor that wanders
on a flooded loss (:mod:`parlab.methods.goat`). Test-time predictions are
``h_ft`` on the stage-1 extractor's features, always.

:class:`FRDLTask` plugs this into :func:`parlab.training.engine.fit`: the
engine runs the loop, selection, checkpoints and resume; the task feeds the
bank, draws the balanced batches, keeps the bank and the label priors in
``last.pt`` and scores ``h_ft`` on features computed once (the test-time
extractor is frozen). Without GOAT (or when GOAT moves only the
attribute-feature layer) the training features can be cached too:
``feature_cache=n`` stores the pooled backbone features of n augmented views
of the training set, the views drawn exactly as epochs 1..n of the
recomputing mode would draw them.

The run folder holds what a baseline run holds, plus ``label_prior.csv`` (the
positive fraction of the labels ``h_ft`` trained on, per epoch and
attribute) and, with GOAT, ``flood_levels.csv``. ``best.pt`` is a complete
model (the stage-1 weights with ``h_ft`` as classifiers), so
:func:`parlab.predict` and :func:`parlab.evaluate` use it like any other.
Under ``torchrun`` the features and labels of every rank are gathered before
they are pushed, so all ranks hold the same bank; each rank pops its own
balanced batch and ``h_ft``'s gradients are averaged.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from parlab.errors import ConfigError
from parlab.files import write_atomic
from parlab.methods.frdl import FeatureBank
from parlab.methods.frdl_config import FRDLConfig
from parlab.methods.goat import GOAT, flood_levels
from parlab.models import PARModel
from parlab.models.heads import AttributeClassifiers, AttributeFeatureHead
from parlab.training import distributed as dist
from parlab.training.batches import evaluation_batches, training_batches
from parlab.training.checkpoint import CheckpointError, load_checkpoint, load_state_strict, state_digest
from parlab.runs import RunResult
from parlab.training.config import BaselineConfig, DataConfig, RunFields
from parlab.training.engine import fit
from parlab.training.evaluation import Predictions, autocast, forward_split
from parlab.training.losses import PARLoss, multilabel_bce
from parlab.training.optim import fused
from parlab.training.sampling import EpochSampler, drops_last_batch, epoch_seed
from parlab.training.seeding import seed_everything
from parlab.training.record import is_current, pick_fields, upgrade_record
from parlab.training.task import RunData, SupervisedTask, Task, wrap_ddp


@dataclass(frozen=True)
class Stage1:
    """A stage-1 model read from its checkpoint."""

    path: Path
    digest: str  # of the weights (checkpoint.state_digest)
    data: DataConfig
    method: BaselineConfig
    attributes: list[str]
    model: PARModel  # eval mode, frozen


def stage1_checkpoint(source: str | Path) -> tuple[Path, dict]:
    """The path and contents (today's layout) of a stage-1 run folder's ``best.pt`` or of a checkpoint.

    It must hold a complete baseline model with the attribute head.
    """
    if not str(source):
        raise ConfigError("FRDL needs a stage-1 run: set stage1 to its run folder or best.pt")
    path = Path(source)
    path = path / "best.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or ckpt.get("kind") != "model":
        raise CheckpointError(f"{path}: holds no complete model (kind {ckpt.get('kind')!r}); use a run's best.pt")
    ckpt = SupervisedTask.upgrade_checkpoint(ckpt)
    if ckpt["method_name"] != "baseline":
        raise ConfigError(f"{path}: a {ckpt['method_name']} model, not a stage-1 run")
    head = ckpt["method"].get("head")
    if head != "attribute":
        raise ConfigError(f"{path}: stage 1 was trained with head {head!r}; FRDL needs FRDL's "
                          "attribute-specific features (train stage 1 with head='attribute')")
    return path, ckpt


def load_stage1(source: str | Path, device: torch.device | str = "cpu",
                read: tuple[Path, dict] | None = None) -> Stage1:
    """Read a stage-1 run folder (its ``best.pt``) or checkpoint; it must use the attribute head.

    ``read``: :func:`stage1_checkpoint`'s ``(path, checkpoint)`` of ``source``, when the caller has it already.
    """
    path, ckpt = read or stage1_checkpoint(source)
    task = SupervisedTask.from_record(ckpt, str(path))
    attributes = list(ckpt["attributes"])
    model = task.build_model(len(attributes), pretrained=False)
    load_state_strict(model, ckpt["model"], str(path))
    model.requires_grad_(False)
    if task.method.channels_last:  # stage 2's extractor (and GOAT's wandering copy) keep stage 1's layout
        model = model.to(memory_format=torch.channels_last)
    return Stage1(path, state_digest(ckpt["model"]), task.data, task.method, attributes, model.to(device).eval())


def stage2_data(path: Path, ckpt: dict, changes: dict | None = None) -> DataConfig:
    """Stage 2's data: the stage-1 checkpoint's (``path``, ``ckpt``), with ``changes``, of which only ``root``
    may differ ("" keeps it).

    The other fields may be given (a stage-2 run's own ``config.json`` holds them all) but must be stage 1's.
    """
    data = DataConfig.from_dict(ckpt["data"], source=str(path))
    changes = dict(changes or {})
    root = changes.pop("root", "") or data.root
    requested = DataConfig.from_dict(data.to_dict() | changes, source="data")
    differing = requested.differences(data, ignore=("image_cache",))
    if differing:
        raise ConfigError(f"FRDL's data is its stage-1 run's ({path}); only root may differ, not: "
                          + "; ".join(differing))
    return replace(requested, root=root)


def train_frdl(run: RunFields, method: FRDLConfig, root: str = "", existing: str = "error", progress: bool = True,
               log=None) -> RunResult:
    """Train FRDL's stage 2 (with GOAT when ``method.goat``) on stage 1's data; see the module docstring.

    Args:
        run: the run's fields (epochs, batches, seed, output folder...).
        method: the stage-2 experiment; ``method.stage1`` names the stage-1 run.
        root: the dataset folder, when it moved since stage 1 ("": stage 1's).
        existing: "error", "resume" (from ``last.pt``; a finished run is only re-evaluated) or "overwrite".
        progress: tqdm bars (rank 0 only).
        log: where one line per epoch goes (default: printed and flushed).
    """
    return fit(FRDLTask.for_stage1(run, method, {"root": root}), existing, progress, log)


def _positive_prior(config: FRDLConfig, epochs: int, labels: np.ndarray, attributes) -> torch.Tensor:
    """(A,) prior of popped labels: p, except 0 (1) for an attribute with no positive (negative) to draw."""
    prior = np.full(labels.shape[1], config.positive_prior, dtype=np.float32)
    has_pos, has_neg = (labels == 1).any(0), (labels == 0).any(0)
    prior[~has_pos], prior[~has_neg] = 0.0, 1.0
    lacking = [f"{attributes[j]} ({'no positives' if not has_pos[j] else 'no negatives'})"
               for j in np.flatnonzero(~(has_pos & has_neg))]
    if lacking and config.balance_start < epochs:
        warnings.warn("balanced batches cannot balance attributes with one label in training; they keep that "
                      "label: " + ", ".join(lacking), stacklevel=3)
    return torch.from_numpy(prior)


def _epoch_view(module: nn.Module, data: RunData, transform, epoch: int, config: RunFields, ctx: dist.DistContext,
                progress: bool, desc: str) -> tuple[torch.Tensor, np.ndarray]:
    """``module`` on every training image augmented as epoch ``epoch`` draws it: outputs (N, ...) and rows (N,)."""
    sampler = EpochSampler(len(data.plan.train), config.seed, ctx.rank, ctx.world_size)
    sampler.set_epoch(epoch)
    batches = evaluation_batches(data.annotations, data.plan.train, transform, config.eval_batch_size,
                                 config.num_workers, ctx, data.images, sampler=sampler)
    return forward_split(module, batches, ctx, config.amp, progress=progress, desc=desc)


def _extract_views(backbone: nn.Module, data: RunData, transform, run: RunFields, views: int, ctx: dist.DistContext,
                   progress: bool) -> torch.Tensor:
    """Pooled features (V, N, C) of V = ``views`` augmented views; view v is augmented as epoch v would be."""
    return torch.stack([_epoch_view(backbone, data, transform, v, run, ctx, progress,
                                    f"features, view {v + 1}/{views}")[0].to(ctx.device)
                        for v in range(views)])


class CachedBatches:
    """An epoch's ``(g, labels, rows)`` batches from cached views, in the recomputing mode's order."""

    def __init__(self, cache: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, epoch: int,
                 config: RunFields, ctx: dist.DistContext) -> None:
        sampler = EpochSampler(cache.shape[1], config.seed, ctx.rank, ctx.world_size)
        sampler.set_epoch(epoch)
        self.order = torch.tensor([i for i, _ in sampler], device=cache.device)
        self.view, self.labels, self.rows = cache[epoch % len(cache)], labels, rows
        self.batch_size = config.batch_size
        self.end = len(self.order) - int(drops_last_batch(len(self.order), config.batch_size))

    def __len__(self) -> int:
        return math.ceil(self.end / self.batch_size)

    def __iter__(self):
        for start in range(0, self.end, self.batch_size):
            take = self.order[start:min(start + self.batch_size, self.end)]
            yield self.view[take], self.labels[take], self.rows[take]


@torch.no_grad()
def _head_logits(head: AttributeFeatureHead, g: torch.Tensor, chunk: int) -> torch.Tensor:
    """(n, C) pooled features -> (n, A) logits of the head's classifiers on ReLU(attribute features), in chunks."""
    return torch.cat([head.classifiers(torch.relu(head.features(part))) for part in g.split(chunk)]).float()


class FRDLTask(Task):
    """FRDL's stage 2 (GOAT with ``method.goat``): new heads ``h_ft`` on a frozen stage-1 model.

    ``data`` is the stage-1 run's (:func:`stage2_data`, as :meth:`for_stage1` builds it) and
    ``stage1_method`` the stage-1 model's config, read from the stage-1 checkpoint when the run starts or
    from a finished run's record when its model is rebuilt.
    """

    method_class = FRDLConfig
    trains_whole_model = False
    extra_files = ("label_prior.csv", "flood_levels.csv")

    def __init__(self, run: RunFields, data: DataConfig, method: FRDLConfig,
                 stage1_method: BaselineConfig | None = None) -> None:
        method.check_schedule(run.epochs)
        super().__init__(run, data, method)
        self.stage1_method = stage1_method
        self.stage1: Stage1 | None = None
        self.stage1_read: tuple[Path, dict] | None = None  # the stage-1 checkpoint, when already read

    @classmethod
    def for_stage1(cls, run: RunFields, method: FRDLConfig, data_changes: dict | None = None) -> FRDLTask:
        """The task on the stage-1 run's data, with ``data_changes`` (its root, when the dataset moved)."""
        read = stage1_checkpoint(method.stage1)
        task = cls(run, stage2_data(*read, data_changes), method)
        task.stage1_read = read  # start() builds the model from it rather than reading the file again
        return task

    @classmethod
    def from_options(cls, values: dict[str, dict]) -> FRDLTask:
        return cls.for_stage1(RunFields.from_dict(values["run"]), FRDLConfig.from_dict(values["method"]),
                              values["data"])

    @classmethod
    def from_record(cls, record: dict, source: str, **_) -> FRDLTask:
        """The task of a run's ``config.json`` or checkpoint (runs of earlier versions included)."""
        record = cls.upgrade_checkpoint(record)
        stage1 = record.get("stage1") or {}
        return cls(RunFields.from_dict(record["run"], source=source),
                   DataConfig.from_dict(record["data"], source=source),
                   FRDLConfig.from_dict(record["method"], source=source),
                   BaselineConfig.from_dict(stage1["method"], source=source) if "method" in stage1 else None)

    @property
    def name(self) -> str:
        """FRDL or FRDL+GOAT."""
        return self.method.method

    @property
    def model_config(self) -> BaselineConfig | None:
        return self.stage1_method

    @property
    def grad_clip(self) -> float:
        return self.method.grad_clip

    def start(self, ctx: dist.DistContext) -> None:
        self.stage1 = load_stage1(self.method.stage1, ctx.device, self.stage1_read)
        self.stage1_read = None  # the model holds the weights now
        self.stage1_method = self.stage1.method

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: dict) -> dict:
        return _upgrade(checkpoint)

    def check_resume(self, checkpoint: dict, source: str) -> None:
        super().check_resume(checkpoint, source)
        started = checkpoint["stage1"]["weights_sha256"]
        if started != self.stage1.digest:
            raise CheckpointError(f"{source}: the stage-1 weights changed since this run started ({self.stage1.path} "
                                  f"holds weights {self.stage1.digest[:12]}..., the run used {started[:12]}...)")

    def resumable(self, key: str) -> tuple[str, ...]:
        return ("root",) if key == "data" else ()  # the stage-1 run's dataset may have moved

    def checkpoint_fields(self) -> dict:
        stage1 = {"path": str(self.stage1.path), "weights_sha256": self.stage1.digest,
                  "method": self.stage1.method.to_dict()} if self.stage1 else None
        return super().checkpoint_fields() | {"stage1": stage1}

    def build_model(self, num_attributes: int, pretrained: bool = True) -> nn.Module:
        return SupervisedTask(self.run, self.data, self.stage1_method).build_model(num_attributes, pretrained=False)

    def setup(self, data: RunData, ctx: dist.DistContext, resume: dict | None, progress: bool) -> None:
        run, c, ann, plan, stage1 = self.run, self.method, data.annotations, data.plan, self.stage1
        self.ctx = ctx
        device = ctx.device
        self.prior = _positive_prior(c, run.epochs, ann.labels[plan.train], ann.attributes).to(device)
        a, width = ann.num_attributes, stage1.model.head.expand.in_features
        eval_tf = self.transform(train=False)
        self.rows = {"val": plan.val, "test": plan.test}
        # The test-time extractor is stage 1's, frozen: its validation and test features never change.
        self.pooled = {}
        for split, rows in self.rows.items():
            batches = evaluation_batches(ann, rows, eval_tf, run.eval_batch_size, run.num_workers, ctx, data.images)
            self.pooled[split] = forward_split(stage1.model.backbone, batches, ctx, run.amp, progress=progress,
                                               desc=f"{split} features")[0].to(device)
        seed_everything(run.seed)  # h_ft starts the same on every rank
        self.model = AttributeClassifiers(a, width).to(device)
        heads = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(heads, lr=c.lr, weight_decay=c.weight_decay, **fused(heads))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(c.milestones), c.gamma) \
            if c.milestones else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # h_ft trains in full precision
        self.validation_loss = PARLoss("bce")
        self.bank = FeatureBank(a, width, c.bank_size, device=device, attributes=ann.attributes)
        # The test-time model: stage 1 with h_ft as its classifiers (shared, so it always holds h_ft's weights).
        self.complete = copy.deepcopy(stage1.model)
        self.complete.head.classifiers = self.model
        self.priors: list[np.ndarray] = []
        self.goat = self.cache = self.loader = None
        if resume is None or resume["epoch"] < run.epochs:  # a finished run that is re-opened only evaluates
            self._setup_training(data, progress)
        self.net = wrap_ddp(self.model, ctx)
        self.popped = torch.empty(run.batch_size, a, width, device=device)  # reused by every pop

    def _setup_training(self, data: RunData, progress: bool) -> None:
        """GOAT's wandering copy and flood levels, and the training batches (cached views or a loader)."""
        run, c, ann, plan, ctx = self.run, self.method, data.annotations, data.plan, self.ctx
        train_tf = self.transform(train=True)
        if c.goat:
            self.goat = self._goat(data, train_tf, progress)
        if c.feature_cache:
            self.cache = _extract_views(self.stage1.model.backbone, data, train_tf, run, c.feature_cache, ctx, progress)
            self.cached_labels = torch.from_numpy(ann.labels[plan.train].astype(np.float32)).to(ctx.device)
            self.cached_rows = torch.from_numpy(plan.train.astype(np.int64)).to(ctx.device)
        else:
            self.loader = training_batches(ann, plan.train, train_tf, run.batch_size, run.seed, run.num_workers, ctx,
                                           data.images)

    def _goat(self, data: RunData, train_tf, progress: bool) -> GOAT:
        """GOAT's wandering copy, with flood levels from the stage-1 losses (``flood_source``).

        On the training set its images are augmented as epoch 0 draws them: the losses the public code
        records during that epoch. The levels are written to ``flood_levels.csv``.
        """
        run, c, ctx, ann = self.run, self.method, self.ctx, data.annotations
        if c.flood_source == "train":
            logits, rows = _epoch_view(self.stage1.model, data, train_tf, 0, run, ctx, progress, "flood levels")
        else:
            batches = evaluation_batches(ann, data.plan.val, self.transform(train=False), run.eval_batch_size,
                                         run.num_workers, ctx, data.images)
            logits, rows = forward_split(self.stage1.model, batches, ctx, run.amp, progress=progress,
                                         desc="flood levels")
        b_pos, b_neg = flood_levels(logits.numpy(), ann.labels[rows])
        if ctx.is_main:
            table = pd.DataFrame({"b_pos": b_pos, "b_neg": b_neg}, index=pd.Index(ann.attributes, name="attribute"))
            write_atomic(Path(run.output_dir) / "flood_levels.csv", table.to_csv)
        return GOAT(self.stage1.model, b_pos, b_neg, c.goat_modules, c.goat_period, c.goat_lr, c.goat_weight_decay,
                    c.goat_reset_optimizer, ctx.device, ctx.distributed, run.amp)

    def on_epoch_start(self, epoch: int) -> None:
        c, device = self.method, self.ctx.device
        self.wandering = self.goat is not None and epoch >= c.goat_start
        self.draws = torch.Generator(device=device).manual_seed(epoch_seed(self.run.seed, epoch, 100 + self.ctx.rank))
        self.balanced = epoch >= c.balance_start
        if self.balanced:
            self.bank.fill_by_repetition()  # buffers of rare labels that are not full yet
        if self.goat is not None:
            self.goat.reset()  # excursions restart with the epoch, so a checkpoint needs no copy of the wanderer
        if self.loader is not None:
            self.loader.sampler.set_epoch(epoch)
        self.net.train()
        self.positives = torch.zeros(self.bank.num_attributes, dtype=torch.float64, device=device)
        self.labelled = torch.zeros_like(self.positives)
        self.goat_total, self.seen = 0.0, 0

    def train_batches(self, epoch: int) -> Iterable:
        if self.cache is not None:
            return CachedBatches(self.cache, self.cached_labels, self.cached_rows, epoch, self.run, self.ctx)
        return self.loader

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        c, device = self.method, self.ctx.device
        inputs, y, _ = batch
        inputs, y = inputs.to(device, non_blocking=True), y.to(device, non_blocking=True)
        g = inputs if self.cache is not None else None
        if g is None and (not self.wandering or c.goat_modules == "attribute_features"):
            with torch.no_grad(), autocast(device, self.run.amp):
                g = self.stage1.model.backbone(inputs).float()
        if self.wandering:
            f, goat_loss = self.goat.step(inputs if g is None else g, y)
            self.goat_total += goat_loss * len(y)
        else:
            with torch.no_grad():
                f = self.stage1.model.head.features(g)
        self.bank.push(dist.all_gather_rows(f, self.ctx), dist.all_gather_rows(y, self.ctx))
        feats, labels = self.bank.pop(self.run.batch_size, self.prior, self.draws, out=self.popped) if self.balanced \
            else (f, y)
        logits = self.net(torch.relu(feats))
        self.positives += (labels == 1).sum(0)
        self.labelled += (labels >= 0).sum(0)
        self.seen += len(y)
        return {"loss": multilabel_bce(logits, labels.float()), "output": logits}

    def epoch_summary(self) -> dict:
        counts = dist.all_reduce_mean(torch.stack([self.positives, self.labelled]), self.ctx)
        self.priors.append((counts[0] / counts[1].clamp(min=1)).cpu().numpy())
        summary = {"balanced": self.balanced}
        if self.goat is not None:
            summary["goat_loss"] = self.goat_total / max(self.seen, 1) if self.wandering else float("nan")
        return summary

    def epoch_tag(self, epoch: int) -> str:
        return "balanced" if self.balanced else "natural "

    def extra_state(self) -> dict:
        # The wandering copy is back at the stage-1 weights at every epoch start; its Adam moments are not.
        goat = None if self.goat is None else self.goat.state_dict()
        return {"bank": self.bank.state_dict(), "label_prior": [torch.from_numpy(p) for p in self.priors],
                "goat": goat}

    def load_extra_state(self, checkpoint: dict) -> None:
        self.bank.load_state_dict({k: v.to(self.ctx.device) for k, v in checkpoint["bank"].items()})
        self.priors = [np.asarray(p) for p in checkpoint["label_prior"]]
        if self.goat is not None and checkpoint.get("goat") is not None:
            self.goat.load_state_dict(checkpoint["goat"])

    def save_files(self, out: Path) -> None:
        table = pd.DataFrame(np.stack(self.priors), columns=self.bank.attributes,
                             index=pd.RangeIndex(1, len(self.priors) + 1, name="epoch"))
        table.insert(0, "balanced", [e >= self.method.balance_start for e in range(len(self.priors))])
        write_atomic(out / "label_prior.csv", table.to_csv)

    def evaluation_model(self) -> nn.Module:
        return self.complete

    def predict(self, model: nn.Module, split: str, progress: bool = False) -> Predictions:
        logits = _head_logits(model.head, self.pooled[split], self.run.eval_batch_size)
        return Predictions(logits.cpu().numpy(), self.rows[split])


# What stage 2 did before these fields existed: constant lr, no clipping, GOAT without weight decay and
# with fresh moments at each reset. A run written then keeps meaning what it meant.
LEGACY_FIELDS = {"milestones": (), "grad_clip": 0.0, "goat_weight_decay": 0.0, "goat_reset_optimizer": True,
                 "goat_start": 0}


def _upgrade(record: dict) -> dict:
    """A checkpoint or ``config.json`` of an FRDL run written by an earlier parlab, in today's layout.

    Before the shared engine, runs kept their config under ``frdl_config`` and ``h_ft`` in ``last.pt``; a
    finished one opens as it is. An unfinished one had no ``best.pt`` yet, so it cannot be continued.
    Fields added since are given the values that reproduce what such a run did. Until the configs were
    split into run, data and method, the flat ``config`` was stage 1's (with this run's root): it gives
    the data and, under ``stage1``, the stage-1 model's config.
    """
    if is_current(record):
        return upgrade_record(record, FRDLConfig)
    record = dict(record)
    if "frdl_config" in record:
        record["method_config"] = record.pop("frdl_config")
    own = record.get("method_config") or {}
    if "milestones" not in own:
        own = record["method_config"] = LEGACY_FIELDS | own
    if record.get("kind") == "frdl-training":
        epochs = own.get("epochs", 20)
        if record["epoch"] < epochs:
            raise CheckpointError(f"an unfinished FRDL run of an earlier parlab (epoch {record['epoch']}/"
                                  f"{epochs}) cannot be continued; start it again (--overwrite)")
        record |= {"kind": "training", "model": record.pop("h_ft"), "scheduler": None, "scaler": {}, "ema": None}
    stage1 = record.pop("config", None) or {}
    record["data"] = pick_fields(DataConfig, stage1) | pick_fields(DataConfig, {"image_cache": own["image_cache"]}
                                                                    if "image_cache" in own else {})
    record["stage1"] = (record.get("stage1") or {}) | {"method": pick_fields(BaselineConfig, stage1)}
    return upgrade_record(record, FRDLConfig)
