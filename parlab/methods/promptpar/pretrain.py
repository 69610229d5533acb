"""A small CLIP pretrained on SynthPA's captions, for PromptPAR where no real CLIP can be had.

No pretrained CLIP can be downloaded, so the embedded default trains one: an
open_clip architecture (``parlab-clip-tiny`` by default) with open_clip's
contrastive loss on (image, caption) pairs of SynthPA's training split
(``captions.tsv``: one sentence per positive attribute). The weights are
written as an open_clip state dict, loadable by the same
``create_clip(name, weights=<path>)`` route as real CLIP files.

Two checks of what it learnt, on the test split:

- image-to-text retrieval recall@k: an image's own caption (or an identical
  one: images with the same attributes share a caption) among the k most
  similar test captions;
- zero-shot attribute recognition: per attribute, the attribute sentence
  against a negated sentence, softmax of the two similarities; mA at 0.5.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from parlab.data import load_dataset
from parlab.data.errors import DatasetError
from parlab.data.images import PARImageDataset
from parlab.errors import ConfigError, MissingFileError, RunFolderError
from parlab.files import write_atomic, write_json
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.models.clip import clip_tokenizer, clip_transform, create_clip
from parlab.training.config import ConfigFile, option
from parlab.training.distributed import resolve_device
from parlab.training.optim import WarmupCosine
from parlab.training.sampling import EpochSampler, epoch_seed
from parlab.training.seeding import seed_everything


@dataclass(frozen=True)
class CLIPPretrainConfig(ConfigFile):
    root: str = option("data/synthpa", "SynthPA folder holding captions.tsv")
    clip_model: str = option("parlab-clip-tiny", "open_clip architecture name")
    image_size: tuple[int, int] = option((64, 32), "(height, width) of the images fed to it")
    epochs: int = option(10, "passes over the training captions")
    batch_size: int = option(64, "pairs per contrastive batch")
    lr: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.1, "AdamW, on weight matrices only (not on gains, biases, the temperature)")
    warmup_steps: int = option(50, "linear warm-up before the cosine schedule")
    pad: int = option(2, "random-crop padding in pixels (the baseline's 10 is a third of a 32-pixel-wide image)")
    seed: int = option(0, "initial weights, order and augmentation")
    device: str = option("auto", "\"auto\" picks cuda when available, else cpu")
    num_workers: int = option(0, "DataLoader worker processes")
    output: str = option("runs/clip/parlab-clip-tiny.pt", "the weights file (open_clip state dict)")

    def __post_init__(self) -> None:
        self.coerce_fields()
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")


def read_captions(root: str | Path) -> dict[str, str]:
    """``captions.tsv`` of a SynthPA folder: image path (relative to root) -> caption."""
    path = Path(root) / "captions.tsv"
    if not path.is_file():
        raise MissingFileError(f"{path}: no captions; SynthPA writes them (python -m parlab.data.synthpa {root})")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = {"filepath", "caption"} - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return dict(zip(table["filepath"], table["caption"]))


def negate(sentence: str) -> str:
    """A negated attribute sentence: "A pedestrian wearing a hat" -> "A pedestrian not wearing a hat",
    "A female pedestrian" -> "A pedestrian who is not female"."""
    match = re.match(r"^(An?) pedestrian (.+)$", sentence)
    if match:
        return f"A pedestrian not {match.group(2)}"
    match = re.match(r"^An? (\w+) pedestrian(.*)$", sentence)
    if match:
        return f"A pedestrian who is not {match.group(1)}{match.group(2)}"
    return f"Not {sentence[:1].lower()}{sentence[1:]}"


class _CaptionedImages(Dataset):
    """(image, caption tokens) of one split, in the dataset's order."""

    def __init__(self, images: PARImageDataset, captions: list[str], tokenizer) -> None:
        self.images, self.captions, self.tokens = images, captions, tokenizer(captions)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        x, _, _ = self.images[key]
        return x, self.tokens[key[0] if isinstance(key, tuple) else key]


@dataclass(frozen=True)
class CLIPPretrainResult:
    weights: Path
    history: pd.DataFrame  # per epoch: loss, lr, seconds
    recall: dict[int, float]  # image-to-text recall@k on test captions, percent
    zero_shot: PARMetrics  # attribute sentence vs negated sentence on the test split
    wall_s: float


def pretrain_clip(config: CLIPPretrainConfig, existing: str = "error", progress: bool = True,
                  log=print) -> CLIPPretrainResult:
    """Train ``config.clip_model`` contrastively on SynthPA's training captions; evaluate on test.

    ``existing``: what to do when ``config.output`` exists: "error", "resume" (only evaluate it) or
    "overwrite".
    """
    from tqdm.auto import tqdm

    if existing not in ("error", "resume", "overwrite"):
        raise ConfigError(f"existing must be 'error', 'resume' or 'overwrite', got {existing!r}")
    start = time.perf_counter()
    out = Path(config.output)
    if out.exists() and existing == "error":
        raise RunFolderError(f"{out} exists; use it (existing='resume') or train again (existing='overwrite')")
    device = resolve_device(config.device)
    ann = load_dataset("synthpa", config.root)
    captions = read_captions(config.root)
    tokenizer = clip_tokenizer(config.clip_model)

    def split(name: str, train: bool) -> _CaptionedImages:
        # OpenAI normalisation: what every CLIP architecture (and its weights) here expects.
        tf = clip_transform(config.image_size, train, config.pad)
        images = PARImageDataset(ann, name, tf)
        names = [str(ann.image_path(r).relative_to(Path(config.root))) for r in images.rows]
        lacking = [n for n in names if n not in captions]
        if lacking:
            raise DatasetError(f"{Path(config.root) / 'captions.tsv'}: no caption for {len(lacking)} image(s), "
                             f"e.g. {lacking[0]}")
        return _CaptionedImages(images, [captions[n] for n in names], tokenizer)

    record = out.with_suffix(".json")  # config, training log and evaluation, beside the weights
    if out.exists() and existing == "resume":
        model = create_clip(config.clip_model, out, device=str(device), image_size=config.image_size)
        history = json.loads(record.read_text())["history"] if record.is_file() else []
    else:
        seed_everything(config.seed)
        with warnings.catch_warnings():  # random initialisation is the point here
            warnings.filterwarnings("ignore", message=".*random weights")
            model = create_clip(config.clip_model, None, device=str(device), image_size=config.image_size)
        history = _train(model, split("train", True), config, device, progress, log, tqdm)
        write_atomic(out, lambda tmp: torch.save(model.state_dict(), tmp))
    model.eval()
    test = split("test", False)
    recall, zero_shot = _evaluate(model, test, ann, tokenizer, device)
    result = CLIPPretrainResult(out, pd.DataFrame(history), recall, zero_shot, time.perf_counter() - start)
    write_json(record, {"config": config.to_dict(), "recall": recall,
                                          "zero_shot": zero_shot.summary(), "history": history})
    log(f"{config.clip_model}: recall@1 {recall[1]:.1f}  recall@5 {recall[5]:.1f}  zero-shot mA "
        f"{zero_shot.summary()['ma']:.2f}  ({out})")
    return result


def _train(model, data: _CaptionedImages, config: CLIPPretrainConfig, device, progress: bool, log, tqdm) -> list[dict]:
    import open_clip

    sampler = EpochSampler(len(data), config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        drop_last=True)
    # open_clip's convention: weight decay on matrices only, not on gains, biases or the temperature.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.warmup_steps,
                                                                         config.epochs * len(loader)))
    loss_fn = open_clip.ClipLoss()
    history = []
    for epoch in range(config.epochs):
        seed_everything(epoch_seed(config.seed, epoch, 2))
        sampler.set_epoch(epoch)
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        for images, tokens in tqdm(loader, leave=False, desc=f"CLIP epoch {epoch + 1}/{config.epochs}",
                                   disable=not progress):
            image_features, text_features, scale = model(images.to(device), tokens.to(device))[:3]
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # CLIP's clamp of the learnable temperature
                model.logit_scale.clamp_(0, np.log(100))
            total += float(loss.detach()) * len(images)
            seen += len(images)
        row = {"epoch": epoch + 1, "loss": total / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"CLIP epoch {epoch + 1:>3}/{config.epochs}  loss {row['loss']:.4f}  {seen / row['seconds']:.0f} pairs/s")
    return history


def retrieval_recall(similarity: torch.Tensor, codes: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Image-to-text recall@k (percent).

    Args:
        similarity: (n, n), image i against caption j; caption i belongs to image i.
        codes: (n,) caption identities: captions with equal codes are the same text, so retrieving
            any of them counts.
    """
    top = similarity.topk(max(ks), dim=1).indices
    hit = codes[top] == codes.unsqueeze(1)  # (n, max k): is the k-th retrieved caption the image's?
    return {k: 100.0 * float(hit[:, :k].any(1).float().mean()) for k in ks}


@torch.no_grad()
def _embed_images(model, loader: DataLoader, device) -> torch.Tensor:
    """(N, D) normalised image embeddings of every batch of ``loader`` (images first in each item)."""
    return torch.cat([model.encode_image(batch[0].to(device), normalize=True) for batch in loader]).float()


@torch.no_grad()
def zero_shot_probs(model, image_emb: torch.Tensor, sentences, tokenizer, device) -> np.ndarray:
    """(N, A) probability of each attribute sentence against its negation, from image embeddings (N, D)."""
    sentences = list(sentences)
    pairs = tokenizer(sentences + [negate(s) for s in sentences])
    prompts = model.encode_text(pairs.to(device), normalize=True).float()
    a = len(sentences)
    scale = model.logit_scale.exp().float()
    logits_pos, logits_neg = scale * image_emb @ prompts[:a].T, scale * image_emb @ prompts[a:].T
    return torch.sigmoid(logits_pos - logits_neg).cpu().numpy()  # = softmax over the two sentences


def zero_shot(clip_model: str, weights: str | Path, annotations, split: str = "test",
              image_size: tuple[int, int] | None = None, device: str = "auto", batch_size: int = 128) -> PARMetrics:
    """Zero-shot attribute metrics of a CLIP file on a split of any dataset (sentence vs negated sentence)."""
    dev = resolve_device(device)
    model = create_clip(clip_model, weights, device=str(dev), image_size=image_size).eval()
    size = image_size or tuple(model.visual.image_size)
    images = PARImageDataset(annotations, split, clip_transform(size, train=False))
    image_emb = _embed_images(model, DataLoader(images, batch_size=batch_size), dev)
    probs = zero_shot_probs(model, image_emb, annotations.sentences, clip_tokenizer(clip_model), dev)
    return pedestrian_metrics(annotations.labels[images.rows], probs, attributes=annotations.attributes)


@torch.no_grad()
def _evaluate(model, data: _CaptionedImages, ann, tokenizer, device) -> tuple[dict[int, float], PARMetrics]:
    """Retrieval recall@1/5 and zero-shot attribute metrics on ``data`` (a test split)."""
    loader = DataLoader(data, batch_size=256)
    image_emb = _embed_images(model, loader, device)
    text_emb = torch.cat([model.encode_text(t.to(device), normalize=True) for _, t in loader]).float()
    similarity = image_emb @ text_emb.T  # (n, n), image i's own caption is column i
    codes = torch.from_numpy(pd.factorize(pd.Series(data.captions))[0]).to(device)
    recall = retrieval_recall(similarity, codes, (1, 5))
    probs = zero_shot_probs(model, image_emb, ann.sentences, tokenizer, device)
    labels = ann.labels[data.images.rows]
    return recall, pedestrian_metrics(labels, probs, attributes=ann.attributes)
