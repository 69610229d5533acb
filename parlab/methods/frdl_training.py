"""FRDL stage 2, with optional GOAT (Zhou et al., ICML 2024; methods.md section 4).

Stage 1 is an ordinary parlab run with FRDL's attribute head and plain BCE
(``train(TrainConfig(head="attribute", loss="bce"))``). :func:`train_frdl`
reads its ``best.pt`` and trains a new head set ``h_ft`` on the frozen
stage-1 features: for the first ``balance_start`` epochs on each batch with
its natural labels, then on label-balanced batches popped from the
:class:`~parlab.methods.frdl.FeatureBank`, which every batch keeps feeding.
With GOAT the features come from a copy of the stage-1 extractor that wanders
on a flooded loss (:mod:`parlab.methods.goat`). Test-time predictions are
``h_ft`` on the stage-1 extractor's features, always.

Because the test-time extractor is frozen, validation and test features are
computed once. Without GOAT (or when GOAT moves only the attribute-feature
layer) the training features can be cached too: ``feature_cache=n`` stores
the pooled backbone features of n augmented views of the training set,
the views drawn exactly as epochs 1..n of the recomputing mode would draw them.

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
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from parlab.data import load_dataset
from parlab.data.images import PARImageDataset, build_transform
from parlab.files import write_atomic, write_json
from parlab.methods.frdl import FeatureBank
from parlab.methods.frdl_config import FRDLConfig
from parlab.methods.goat import GOAT, flood_levels
from parlab.models import PARModel
from parlab.models.heads import AttributeClassifiers, AttributeFeatureHead
from parlab.training import distributed as dist
from parlab.training.checkpoint import (
    FORMAT,
    CheckpointError,
    check_attributes,
    library_versions,
    load_checkpoint,
    load_state_strict,
    save_atomic,
    state_digest,
)
from parlab.training.config import TrainConfig
from parlab.training.engine import (
    METRIC_KEYS,
    RESUMABLE_CHANGES,
    RunResult,
    TrainingDiverged,
    drops_last_batch,
    evaluate_selected,
    launch,
    model_checkpoint,
    model_for,
    prepare_run_folder,
    split_metrics,
    train_loader,
    write_results,
)
from parlab.training.evaluation import Predictions, autocast, eval_loader, forward_split
from parlab.training.losses import multilabel_bce
from parlab.training.runlog import RunLog
from parlab.training.sampling import EpochSampler, epoch_seed
from parlab.training.seeding import rng_state, seed_everything, set_rng_state
from parlab.training.splits import resolve_splits

EXTRA_FILES = ("label_prior.csv", "flood_levels.csv")


@dataclass(frozen=True)
class Stage1:
    """A stage-1 model read from its checkpoint."""

    path: Path
    digest: str  # of the weights (checkpoint.state_digest)
    config: TrainConfig
    attributes: list[str]
    model: PARModel  # eval mode, frozen


def load_stage1(source: str | Path, device: torch.device | str = "cpu") -> Stage1:
    """Read a stage-1 run folder (its ``best.pt``) or checkpoint; it must use the attribute head."""
    if not str(source):
        raise ValueError("FRDL needs a stage-1 run: set stage1 to its run folder or best.pt")
    path = Path(source)
    path = path / "best.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: holds no complete model (kind {ckpt.get('kind')!r}); use a run's best.pt")
    config = TrainConfig.from_dict(ckpt["config"], source=str(path))
    if config.head != "attribute":
        raise ValueError(f"{path}: stage 1 was trained with head {config.head!r}; FRDL needs FRDL's "
                         "attribute-specific features (train stage 1 with head='attribute')")
    if ckpt.get("method", "baseline") != "baseline":
        raise ValueError(f"{path}: a {ckpt['method']} model, not a stage-1 run")
    attributes = list(ckpt["attributes"])
    model = model_for(config, len(attributes), pretrained=False)
    load_state_strict(model, ckpt["model"], str(path))
    model.requires_grad_(False)
    return Stage1(path, state_digest(ckpt["model"]), config, attributes, model.to(device).eval())


def train_frdl(config: FRDLConfig, existing: str = "error", progress: bool = True, log=None) -> RunResult:
    """Train FRDL's stage 2 (with GOAT when ``config.goat``); see the module docstring.

    Args:
        config: the stage-2 experiment; ``config.stage1`` names the stage-1 run.
        existing: "error", "resume" (from ``last.pt``; a finished run is only re-evaluated) or "overwrite".
        progress: tqdm bars (rank 0 only).
        log: where one line per epoch goes (default: printed and flushed).
    """
    return launch(lambda line_log, ctx: _train_frdl(config, existing, progress, line_log, ctx), config.device, log)


def _positive_prior(config: FRDLConfig, labels: np.ndarray, attributes) -> torch.Tensor:
    """(A,) prior of popped labels: p, except 0 (1) for an attribute with no positive (negative) to draw."""
    prior = np.full(labels.shape[1], config.positive_prior, dtype=np.float32)
    has_pos, has_neg = (labels == 1).any(0), (labels == 0).any(0)
    prior[~has_pos], prior[~has_neg] = 0.0, 1.0
    lacking = [f"{attributes[j]} ({'no positives' if not has_pos[j] else 'no negatives'})"
               for j in np.flatnonzero(~(has_pos & has_neg))]
    if lacking and config.balance_start < config.epochs:
        warnings.warn("balanced batches cannot balance attributes with one label in training; they keep that "
                      "label: " + ", ".join(lacking), stacklevel=3)
    return torch.from_numpy(prior)


def _extract_views(backbone: nn.Module, dataset: PARImageDataset, config: FRDLConfig, ctx: dist.DistContext,
                   progress: bool) -> torch.Tensor:
    """Pooled features (V, N, C) of V augmented views; view v is augmented as epoch v would be."""
    views = []
    for v in range(config.feature_cache):
        sampler = EpochSampler(len(dataset), config.seed, ctx.rank, ctx.world_size)
        sampler.set_epoch(v)
        loader = DataLoader(dataset, batch_size=config.eval_batch_size, sampler=sampler,
                            num_workers=config.num_workers, pin_memory=ctx.device.type == "cuda")
        g, _ = forward_split(backbone, loader, ctx, config.amp, progress=progress,
                             desc=f"features, view {v + 1}/{config.feature_cache}")
        views.append(g.to(ctx.device))
    return torch.stack(views)


def _cached_batches(cache: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, epoch: int, config: FRDLConfig,
                    ctx: dist.DistContext):
    """(g, labels, rows) batches of an epoch from cached views, in the recomputing mode's order."""
    sampler = EpochSampler(cache.shape[1], config.seed, ctx.rank, ctx.world_size)
    sampler.set_epoch(epoch)
    order = torch.tensor([i for i, _ in sampler], device=cache.device)
    view = cache[epoch % len(cache)]
    end = len(order) - int(drops_last_batch(len(order), config.batch_size))
    for start in range(0, end, config.batch_size):
        take = order[start:min(start + config.batch_size, end)]
        yield view[take], labels[take], rows[take]


@torch.no_grad()
def _head_logits(head: AttributeFeatureHead, classifiers: nn.Module, g: torch.Tensor, chunk: int) -> torch.Tensor:
    """(n, C) pooled features -> (n, A) logits of ``classifiers`` on ReLU(attribute features), in chunks."""
    return torch.cat([classifiers(torch.relu(head.features(part))) for part in g.split(chunk)]).float()


def _train_frdl(config: FRDLConfig, existing: str, progress: bool, log, ctx: dist.DistContext) -> RunResult:
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    out, device = Path(config.output_dir), ctx.device
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    resume = prepare_run_folder(out, config, existing, ctx, RESUMABLE_CHANGES, EXTRA_FILES, "frdl_config")
    stage1 = load_stage1(config.stage1, device)
    if resume is not None and resume["stage1"]["weights_sha256"] != stage1.digest:
        raise CheckpointError(f"{out / 'last.pt'}: the stage-1 weights changed since this run started ({stage1.path} "
                              f"holds weights {stage1.digest[:12]}..., the run used "
                              f"{resume['stage1']['weights_sha256'][:12]}...)")
    # Data, splits and image size are stage 1's; only the root may move and the selection split change.
    data_config = replace(stage1.config, root=config.root or stage1.config.root, select_on=config.select_on,
                          device=config.device)
    annotations = load_dataset(data_config.dataset, data_config.root, data_config.partition)
    check_attributes(stage1.attributes, annotations.attributes, str(stage1.path), annotations.name)
    plan = resolve_splits(annotations, data_config)
    train_labels = annotations.labels[plan.train]
    prior = _positive_prior(config, train_labels, annotations.attributes).to(device)
    a, c = annotations.num_attributes, stage1.model.head.expand.in_features
    head = stage1.model.head

    eval_tf = build_transform(data_config.image_size, train=False)
    sets = {"val": PARImageDataset(annotations, plan.val, eval_tf),
            "test": PARImageDataset(annotations, plan.test, eval_tf)}
    # The test-time extractor is stage 1's, frozen: its validation and test features never change.
    pooled = {k: forward_split(stage1.model.backbone, eval_loader(v, config.eval_batch_size, config.num_workers, ctx),
                               ctx, config.amp, progress=progress, desc=f"{k} features")[0].to(device)
              for k, v in sets.items()}

    seed_everything(config.seed)  # h_ft starts the same on every rank
    h_ft = AttributeClassifiers(a, c).to(device)
    optimizer = torch.optim.Adam(h_ft.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bank = FeatureBank(a, c, config.bank_size, device=device, attributes=annotations.attributes)
    start_epoch, best, history, priors = 0, {"epoch": 0, "value": -np.inf}, [], []
    best_h_ft = copy.deepcopy(h_ft.state_dict())
    if resume is not None:
        load_state_strict(h_ft, resume["h_ft"], "last.pt (h_ft)")
        optimizer.load_state_dict(resume["optimizer"])
        bank.load_state_dict({k: v.to(device) for k, v in resume["bank"].items()})
        best_h_ft = resume["best_h_ft"]
        start_epoch, best, history = resume["epoch"], resume["best"], list(resume["history"])
        priors = [np.asarray(p) for p in resume["label_prior"]]
        set_rng_state(resume["rng"])
        log(f"resuming {out} after epoch {start_epoch}/{config.epochs}")

    # What only training needs (a finished run that is re-opened goes straight to evaluation).
    goat = cache = loader = None
    if start_epoch < config.epochs:
        if config.goat:
            rows = plan.train if config.flood_source == "train" else plan.val
            flood_set = PARImageDataset(annotations, rows, eval_tf)
            logits, rows = forward_split(stage1.model, eval_loader(flood_set, config.eval_batch_size,
                                                                   config.num_workers, ctx),
                                         ctx, config.amp, progress=progress, desc="flood levels")
            b_pos, b_neg = flood_levels(logits.numpy(), annotations.labels[rows])
            goat = GOAT(stage1.model, b_pos, b_neg, config.goat_modules, config.goat_period, config.goat_lr,
                        device, ctx.distributed, config.amp)
            if ctx.is_main:
                table = pd.DataFrame({"b_pos": b_pos, "b_neg": b_neg},
                                     index=pd.Index(annotations.attributes, name="attribute"))
                write_atomic(out / "flood_levels.csv", table.to_csv)
        train_set = PARImageDataset(annotations, plan.train, build_transform(data_config.image_size, train=True))
        if config.feature_cache:
            cache = _extract_views(stage1.model.backbone, train_set, config, ctx, progress)
            cached_labels = torch.from_numpy(train_labels.astype(np.float32)).to(device)
            cached_rows = torch.from_numpy(plan.train.astype(np.int64)).to(device)
        else:
            loader = train_loader(train_set, config.batch_size, config.seed, config.num_workers, ctx)

    runlog = RunLog(out, history, config.tensorboard) if ctx.is_main else None
    if ctx.is_main:
        if history:
            runlog.write()
        write_json(out / "config.json", {
            "method": config.method, "frdl_config": config.to_dict(), "config": data_config.to_dict(),
            "stage1": {"path": str(stage1.path), "weights_sha256": stage1.digest}, "seed": config.seed,
            "world_size": ctx.world_size, "device": str(device), "selection": plan.note,
            "train_images": len(plan.train), "val_images": len(plan.val), "test_images": len(plan.test),
            "attributes": list(annotations.attributes), "versions": library_versions(),
        })

    net = DistributedDataParallel(h_ft, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else h_ft
    popped = torch.empty(config.batch_size, a, c, device=device)  # reused by every pop
    val_labels = torch.from_numpy(annotations.labels[sets["val"].rows].astype(np.float32))
    for epoch in range(start_epoch, config.epochs):
        seed_everything(epoch_seed(config.seed, epoch, 2 + ctx.rank))
        draws = torch.Generator(device=device).manual_seed(epoch_seed(config.seed, epoch, 100 + ctx.rank))
        balanced = epoch >= config.balance_start
        if balanced:
            bank.fill_by_repetition()  # buffers of rare labels that are not full yet
        if goat is not None:
            goat.reset()  # excursions restart with the epoch, so a checkpoint needs no copy of the wanderer
        if cache is not None:
            batches, steps = _cached_batches(cache, cached_labels, cached_rows, epoch, config, ctx), None
        else:
            loader.sampler.set_epoch(epoch)
            batches, steps = loader, len(loader)
        net.train()
        t0 = time.perf_counter()
        total, seen, goat_total = 0.0, 0, 0.0
        positives = torch.zeros(a, dtype=torch.float64, device=device)
        labelled = torch.zeros(a, dtype=torch.float64, device=device)
        bar = tqdm(batches, total=steps, leave=False, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (progress and ctx.is_main))
        for step, (inputs, y, rows) in enumerate(bar):
            inputs, y = inputs.to(device, non_blocking=True), y.to(device, non_blocking=True)
            g = inputs if cache is not None else None
            if g is None and (goat is None or config.goat_modules == "attribute_features"):
                with torch.no_grad(), autocast(device, config.amp):
                    g = stage1.model.backbone(inputs).float()
            if goat is not None:
                f, goat_loss = goat.step(inputs if g is None else g, y)
                goat_total += goat_loss * len(y)
            else:
                with torch.no_grad():
                    f = head.features(g)
            bank.push(dist.all_gather_rows(f, ctx), dist.all_gather_rows(y, ctx))
            feats, labels = bank.pop(config.batch_size, prior, draws, out=popped) if balanced else (f, y)
            loss = multilabel_bce(net(torch.relu(feats)), labels.float())
            value = float(dist.all_reduce_mean(loss.detach(), ctx))
            if not np.isfinite(value):
                raise TrainingDiverged(f"stage-2 loss is {value} at epoch {epoch + 1}, step {step + 1}, batch of "
                                       f"annotation rows {rows[:8].tolist()}; last good checkpoint: "
                                       f"{out / 'last.pt' if epoch > 0 else 'none written yet'}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            positives += (labels == 1).sum(0)
            labelled += (labels >= 0).sum(0)
            total += value * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{value:.3f}")
        train_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        counts = dist.all_reduce_mean(torch.stack([positives, labelled]), ctx)
        priors.append((counts[0] / counts[1].clamp(min=1)).cpu().numpy())
        val_logits = _head_logits(head, h_ft, pooled["val"], config.eval_batch_size).cpu()
        val_preds = Predictions(val_logits.numpy(), sets["val"].rows)
        val = split_metrics(annotations, val_preds, data_config.threshold)
        row = {"epoch": epoch + 1, "balanced": balanced, "train_loss": total / max(seen, 1),
               "val_loss": float(multilabel_bce(val_logits, val_labels)), "lr": optimizer.param_groups[0]["lr"]}
        if goat is not None:
            row["goat_loss"] = goat_total / max(seen, 1)
        row |= {f"val_{k}": v for k, v in val.summary().items() if k in METRIC_KEYS}
        selected = val.ma
        if config.select_on == "test":
            test_preds = Predictions(_head_logits(head, h_ft, pooled["test"], config.eval_batch_size).cpu().numpy(),
                                     sets["test"].rows)
            test_now = split_metrics(annotations, test_preds, data_config.threshold)
            row |= {f"test_{k}": v for k, v in test_now.summary().items() if k in METRIC_KEYS}
            selected = test_now.ma
        row |= {"train_s": train_s, "train_img_s": seen * ctx.world_size / train_s,
                "eval_s": time.perf_counter() - t1}
        is_best = bool(selected > best["value"]) or best["epoch"] == 0
        if is_best:
            best = {"epoch": epoch + 1, "value": float(selected) if np.isfinite(selected) else -np.inf}
            best_h_ft = copy.deepcopy(h_ft.state_dict())
        row["best"] = is_best
        history.append(row)

        if ctx.is_main:
            save_atomic({
                "format": FORMAT, "kind": "frdl-training", "epoch": epoch + 1, "h_ft": h_ft.state_dict(),
                "best_h_ft": best_h_ft, "optimizer": optimizer.state_dict(), "bank": bank.state_dict(),
                "best": best, "history": history, "label_prior": [torch.from_numpy(p) for p in priors],
                "rng": rng_state(), "frdl_config": config.to_dict(), "config": data_config.to_dict(),
                "stage1": {"path": str(stage1.path), "weights_sha256": stage1.digest},
                "attributes": list(annotations.attributes), "versions": library_versions(),
            }, out / "last.pt", keep_previous=True)
            table = pd.DataFrame(np.stack(priors), columns=annotations.attributes,
                                 index=pd.RangeIndex(1, len(priors) + 1, name="epoch"))
            table.insert(0, "balanced", [r["balanced"] for r in history])
            write_atomic(out / "label_prior.csv", table.to_csv)
            runlog.append(row)
        dist.barrier(ctx)
        split = "test" if config.select_on == "test" else "val"
        metrics = "  ".join(f"{k} {row[f'{split}_{k}']:.2f}" for k in METRIC_KEYS)
        log(f"epoch {epoch + 1:>3}/{config.epochs}  {'balanced' if balanced else 'natural '}  loss "
            f"{row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  {split}: {metrics}  "
            f"{row['train_img_s']:.0f} img/s  {train_s + row['eval_s']:.0f} s{'  *' if is_best else ''}")

    if runlog is not None:
        runlog.close()

    # The selected h_ft becomes the classifiers of a copy of stage 1: a complete test-time model.
    model = copy.deepcopy(stage1.model)
    model.head.classifiers.load_state_dict(best_h_ft)
    preds = {k: Predictions(_head_logits(model.head, model.head.classifiers, pooled[k],
                                         config.eval_batch_size).cpu().numpy(), sets[k].rows) for k in sets}
    evaluation = evaluate_selected(annotations, preds["val"], preds["test"], data_config.threshold,
                                   config.tune_thresholds)
    if ctx.is_main:
        ckpt = model_checkpoint(model, data_config, annotations.attributes, best["epoch"], evaluation.val.summary(),
                                evaluation.thresholds, plan.note)
        ckpt |= {"method": config.method, "method_config": config.to_dict(),
                 "stage1": {"path": str(stage1.path), "weights_sha256": stage1.digest}}
        save_atomic(ckpt, out / "best.pt")
        write_results(out, evaluation, plan.note, best["epoch"], config.epochs, ctx.world_size,
                      time.perf_counter() - start_time, log)
    dist.barrier(ctx)
    return RunResult(out, data_config, pd.DataFrame(history), best["epoch"], plan.note, evaluation.val,
                     evaluation.test, evaluation.test_tuned, evaluation.thresholds,
                     time.perf_counter() - start_time, config.method, config)
