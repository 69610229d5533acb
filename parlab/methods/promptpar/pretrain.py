"""A small CLIP pretrained on a SynthPA caption corpus, for PromptPAR where no real CLIP can be had.

No pretrained CLIP can be downloaded, so the embedded default trains one: an
open_clip architecture (``parlab-clip-hybrid`` by default: a ViT on a
convolutional stem, :mod:`parlab.models.clip_stem`) on (image, caption) pairs
of a corpus apart from the PAR splits (:mod:`parlab.data.synthpa.corpus`, the
analogue of web data: the CLIP never sees an image of train, val or test).
Each epoch draws fresh captions for the corpus images
(:func:`parlab.data.synthpa.captions.corpus_caption`): complete descriptions,
partial ones with negations, and the attribute sentences and their negations.

The objective is open_clip's contrastive loss with multi-positive targets
(:class:`MultiPositiveClipLoss`): a caption true of several images of the
batch (an identical caption, or a partial one that fits) is a positive for
each of them rather than a negative, the target spread evenly over them.
Each caption's hard negative (the same words with one claim flipped) joins
the batch as a further caption, true of whichever images it fits. Each
distinct text of a batch is encoded once, and only up to its end-of-text
token (:func:`parlab.models.clip.encode_text_by_length`).

The weights are written as an open_clip state dict, loadable by the same
``create_clip(name, weights=<path>)`` route as real CLIP files, under a name
keyed by the configuration (:func:`weights_path`), so a rerun with the same
settings reuses them. Three checks of what was learnt, on a SynthPA folder's
test split (:class:`CLIPPretrainResult`):

- image-to-text retrieval recall@k among the test images' complete captions
  (``captions.tsv``; identical captions count as hits);
- zero-shot attribute recognition: per attribute, the attribute sentence
  against its negation, softmax of the two similarities; mA at 0.5;
- a linear probe: class-balanced logistic regression per attribute on the
  frozen image embedding, fitted on the train split (:func:`linear_probe`).

A classifier's recall on the same captions (:func:`likelihood_recall`, e.g.
of notebook 03's baseline) is the yardstick of the CLIP's: a complete caption
is retrieved only by getting all its attributes right.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from parlab.data import Annotations, load_dataset
from parlab.data.batch_augment import augment_batch, draws_from_generator
from parlab.data.errors import DatasetError
from parlab.data.images import PARImageDataset
from parlab.data.synthpa.captions import corpus_caption, negate, truth
from parlab.data.synthpa.corpus import caption_corpus
from parlab.errors import ConfigError, MissingFileError, RunFolderError
from parlab.files import write_json
from parlab.metrics import PARMetrics
from parlab.models.clip import clip_tokenizer, clip_transform, create_clip, encode_text_by_length
from parlab.results import FixedModel
from parlab.runs import saved_test_predictions
from parlab.training.checkpoint import save_atomic
from parlab.training.config import ConfigFile, option
from parlab.training.distributed import resolve_device
from parlab.training.optim import WarmupCosine, fused
from parlab.training.sampling import epoch_seed
from parlab.training.seeding import seed_everything

__all__ = ["CLIPPretrainConfig", "CLIPPretrainResult", "MultiPositiveClipLoss", "PROBE", "ZERO_SHOT", "clip_baselines",
           "clip_file_baselines", "linear_probe", "negate", "pretrain_clip", "read_captions", "retrieval_recall",
           "weights_path", "zero_shot_probs"]

ZERO_SHOT, PROBE = "CLIP zero-shot", "CLIP linear probe"  # the frozen CLIP's baselines, as tables name them

# Fields that do not change the weights: left out of the cache key.
_NOT_IN_KEY = ("root", "device", "output", "cache_dir", "corpus_dir")


@dataclass(frozen=True)
class CLIPPretrainConfig(ConfigFile):
    root: str = option("data/synthpa", "SynthPA folder whose splits evaluate the CLIP (never trained on)")
    clip_model: str = option("parlab-clip-hybrid", "open_clip architecture name")
    image_size: tuple[int, int] = option((64, 32), "(height, width) of the images fed to it", bounds=">= 8")
    corpus_size: int = option(40000, "people in the caption corpus (rendered apart from the PAR splits)", bounds=">= 1")
    corpus_seed: int = option(0, "the corpus's people", bounds="in [0, 4294967295]")
    full_captions: float = option(0.4, "share of complete captions among those drawn each epoch", bounds="in [0, 1]")
    sentence_captions: float = option(0.2, "share of single attribute sentences or their negations (the rest "
                                           "are partial captions with negations)", bounds="in [0, 1]")
    hard_negatives: bool = option(True, "each caption's hard negative (one claim flipped) joins the batch")
    balanced_claims: bool = option(True, "choose claims by 1 / how common the image's value is, so that an "
                                         "attribute's sentence is nearly as frequent as its negation")
    adjusted_sentences: bool = option(True, "add the log share of people it is true of to the logit of every "
                                             "one-claim caption (logit adjustment), so that sentence against "
                                             "negation does not learn the attribute's prior")
    epochs: int = option(2, "passes over the corpus", bounds=">= 1")
    batch_size: int = option(128, "pairs per contrastive batch", bounds=">= 1")
    lr: float = option(1e-3, "AdamW peak learning rate", bounds="> 0")
    weight_decay: float = option(0.1, "AdamW, on weight matrices only (not on gains, biases, the temperature)",
                                 bounds=">= 0")
    warmup_steps: int = option(100, "linear warm-up from the first step, then cosine decay", bounds=">= 0")
    pad: int = option(2, "random-crop padding in pixels (the baseline's 10 is a third of a 32-pixel-wide image)",
                      bounds=">= 0")
    seed: int = option(0, "initial weights, order, augmentation and captions", bounds="in [0, 4294967295]")
    device: str = option("auto", "\"auto\" picks cuda when available, else cpu")
    cache_dir: str = option("runs/clip", "folder of the keyed weights file and of the corpus, unless given below")
    output: str = option("", "the weights file (open_clip state dict); empty: <cache_dir>/<model>-<key>.pt, "
                             "keyed by the settings that shape the weights")
    corpus_dir: str = option("", "where the rendered corpus is kept; empty: <cache_dir>/corpus-<size>-<seed>-<HxW>")

    def __post_init__(self) -> None:
        self.coerce_fields()
        if self.batch_size > self.corpus_size:
            raise ConfigError(f"batch_size {self.batch_size} exceeds corpus_size {self.corpus_size}")
        if self.full_captions + self.sentence_captions > 1:
            raise ConfigError("full_captions and sentence_captions must be shares in [0, 1] summing to at most 1, "
                              f"got {self.full_captions} and {self.sentence_captions}")


def weights_path(config: CLIPPretrainConfig) -> Path:
    """``config.output``, or ``<cache_dir>/<model>-<key>.pt`` with a key of the fields that shape the weights."""
    if config.output:
        return Path(config.output)
    from parlab._version import __version__

    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
    key = hashlib.sha256(json.dumps({**fields, "version": __version__}, sort_keys=True).encode()).hexdigest()[:12]
    return Path(config.cache_dir) / f"{config.clip_model}-{key}.pt"


def _corpus_dir(config: CLIPPretrainConfig) -> Path:
    if config.corpus_dir:
        return Path(config.corpus_dir)
    h, w = config.image_size
    return Path(config.cache_dir) / f"corpus-{config.corpus_size}-{config.corpus_seed}-{h}x{w}"


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


class MultiPositiveClipLoss(torch.nn.Module):
    """open_clip's symmetric contrastive loss with a 0/1 target matrix instead of the identity.

    Images are rows, captions columns; there may be more captions than images (hard negatives). Row i's target
    is spread evenly over the captions true of image i, column j's over the images caption j is true of; each
    side is the cross-entropy with those distributions (the caption side over the captions true of some image
    of the batch), and the loss their mean. With the identity as targets it equals ``open_clip.ClipLoss``.
    """

    def __init__(self) -> None:
        super().__init__()
        import open_clip

        self.logits = open_clip.ClipLoss()  # its get_logits: scale * image @ text.T both ways

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                targets: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, D) and (M, D) normalised, ``targets`` (B, M): 1 where caption j is true of image i.

        ``offsets`` (M,), added to every image's logit of caption j on the image side (logit adjustment, Menon
        et al., 2021): with a caption's log prior there, the similarity is left to learn what the image adds.
        """
        per_image, per_text = self.logits.get_logits(image_features, text_features, logit_scale)
        if offsets is not None:
            per_image = per_image + offsets.to(per_image.dtype)
        targets = targets.to(per_image.dtype)
        if (targets.sum(1) == 0).any():
            raise ValueError("every image needs at least one caption true of it")
        image_side = F.cross_entropy(per_image, targets / targets.sum(1, keepdim=True))
        fitting = targets.sum(0) > 0  # a hard negative may be true of no image here: no caption-side term
        columns = targets.T[fitting]
        text_side = F.cross_entropy(per_text[fitting], columns / columns.sum(1, keepdim=True))
        return (image_side + text_side) / 2


@dataclass(frozen=True)
class CLIPPretrainResult:
    weights: Path
    history: pd.DataFrame  # per epoch: loss, lr, seconds
    recall: dict[int, float]  # image-to-text recall@k on test captions, percent
    zero_shot: PARMetrics  # attribute sentence vs negated sentence on the test split
    probe: PARMetrics  # linear probe on the frozen image embedding, fitted on train, scored on test
    baselines: dict[str, FixedModel]  # the two as test probabilities (clip_baselines), for results.differences
    wall_s: float  # this call: corpus and training when not cached, evaluation always
    train_s: float  # corpus rendering and training, as recorded when the weights were made


def pretrain_clip(config: CLIPPretrainConfig, existing: str = "resume", progress: bool = True,
                  log=print) -> CLIPPretrainResult:
    """Train ``config.clip_model`` contrastively on a caption corpus; evaluate it on SynthPA's test split.

    ``existing``: what to do when the weights file (:func:`weights_path`) exists: "resume" (use it: only
    evaluate), "overwrite" (train again) or "error".
    """
    if existing not in ("error", "resume", "overwrite"):
        raise ConfigError(f"existing must be 'error', 'resume' or 'overwrite', got {existing!r}")
    start = time.perf_counter()
    out = weights_path(config)
    if out.exists() and existing == "error":
        raise RunFolderError(f"{out} exists; use it (existing='resume') or train again (existing='overwrite')")
    device = resolve_device(config.device)
    record = out.with_suffix(".json")  # config, training log and evaluation, beside the weights
    if out.exists() and existing == "resume":
        model = create_clip(config.clip_model, out, device=str(device), image_size=config.image_size)
        previous = json.loads(record.read_text()) if record.is_file() else {}
        history, train_s = previous.get("history", []), float(previous.get("train_s", float("nan")))
    else:
        images, labels = caption_corpus(_corpus_dir(config), config.corpus_size, config.corpus_seed,
                                        config.image_size)
        seed_everything(config.seed)
        with warnings.catch_warnings():  # random initialisation is the point here
            warnings.filterwarnings("ignore", message=".*random weights")
            model = create_clip(config.clip_model, None, device=str(device), image_size=config.image_size)
        history = _train(model, images, labels, config, device, progress, log)
        save_atomic(model.state_dict(), out)
        train_s = time.perf_counter() - start
    model.eval()
    recall, baselines, ann = _evaluate(model, config, device)
    zero_shot_metrics, probe = (baselines[name].metrics(ann) for name in (ZERO_SHOT, PROBE))
    result = CLIPPretrainResult(out, pd.DataFrame(history), recall, zero_shot_metrics, probe, baselines,
                                time.perf_counter() - start, train_s)
    write_json(record, {"config": config.to_dict(), "recall": recall, "zero_shot": zero_shot_metrics.summary(),
                        "probe": probe.summary(), "train_s": train_s, "history": history})
    log(f"{config.clip_model}: recall@1 {recall[1]:.1f}  recall@5 {recall[5]:.1f}  zero-shot mA "
        f"{zero_shot_metrics.summary()['ma']:.2f}  linear probe mA {probe.summary()['ma']:.2f}  ({out})")
    return result


def _train(model, images: np.ndarray, labels: np.ndarray, config: CLIPPretrainConfig, device, progress: bool,
           log) -> list[dict]:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from tqdm.auto import tqdm

    tokenizer = clip_tokenizer(config.clip_model)
    steps = len(images) // config.batch_size  # drop the last partial batch: contrastive batches stay full
    # open_clip's convention: weight decay on matrices only, not on gains, biases or the temperature.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    # Fused: one kernel for all tensors, where the single-tensor path spent ~100 ms a step on the token embedding.
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6, **fused(groups))
    # Warm-up from the very first step: a from-scratch CLIP at full lr collapses to one embedding.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.warmup_steps, config.epochs * steps))
    loss_fn = MultiPositiveClipLoss()
    prevalence_all = (labels == 1).mean(0)
    prevalence = prevalence_all if config.balanced_claims else None
    history = []
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
        order = torch.randperm(len(images), generator=generator).numpy()
        model.train()
        t0, total = time.perf_counter(), 0.0
        for step in tqdm(range(steps), leave=False, desc=f"CLIP epoch {epoch + 1}/{config.epochs}",
                         disable=not progress):
            rows = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])  # sorted: mmap reads
            rng = np.random.default_rng([config.seed, epoch, step])
            pairs = [corpus_caption(labels[r], rng, config.full_captions, config.sentence_captions, prevalence)
                     for r in rows]
            captions = [caption for caption, _ in pairs] + ([negative for _, negative in pairs]
                                                            if config.hard_negatives else [])
            claims = np.stack([claims for _, claims in captions])
            targets = torch.from_numpy(truth(labels[rows], claims))
            x = augment_batch(torch.from_numpy(np.ascontiguousarray(images[rows])).to(device), OPENAI_DATASET_MEAN,
                              OPENAI_DATASET_STD, config.pad, draws_from_generator(generator, len(rows), config.pad))
            # Each distinct text once (attribute sentences recur in a batch): the text tower is most of a step.
            texts, where = np.unique([text for text, _ in captions], return_inverse=True)
            image_features = model.encode_image(x, normalize=True)
            text_features = encode_text_by_length(model, tokenizer(list(texts)).to(device), normalize=True)
            text_features = text_features[torch.from_numpy(where).to(device)]
            scale = model.logit_scale.exp()
            offsets = torch.from_numpy(_single_claim_log_priors(claims, prevalence_all)).to(device) \
                if config.adjusted_sentences else None
            loss = loss_fn(image_features, text_features, scale, targets.to(device), offsets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # CLIP's clamp of the learnable temperature
                model.logit_scale.clamp_(0, np.log(100))
            total += float(loss.detach())
        row = {"epoch": epoch + 1, "loss": total / steps, "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"CLIP epoch {epoch + 1:>3}/{config.epochs}  loss {row['loss']:.4f}  "
            f"{steps * config.batch_size / row['seconds']:.0f} pairs/s")
    return history


def _single_claim_log_priors(claims: np.ndarray, prevalence: np.ndarray) -> np.ndarray:
    """(M,) float32: for a caption with one claim, the log share of people it is true of; 0 for the others."""
    single = (claims != 0).sum(1) == 1
    attribute = np.abs(claims).argmax(1)
    share = np.where(claims[np.arange(len(claims)), attribute] == 1, prevalence[attribute], 1 - prevalence[attribute])
    return np.where(single, np.log(np.clip(share, 1e-3, 1.0)), 0.0).astype(np.float32)


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


def caption_codes(texts) -> torch.Tensor:
    """(N,) one code per distinct caption, for :func:`retrieval_recall`: identical captions share it."""
    return torch.from_numpy(pd.factorize(pd.Series(list(texts)))[0])


def captions_of(ann, root: str | Path, rows: np.ndarray) -> list[str]:
    """The complete caption (``captions.tsv``) of each image of annotation ``rows`` of a SynthPA folder."""
    captions = read_captions(root)
    names = [str(ann.image_path(r).relative_to(Path(root))) for r in rows]
    lacking = [n for n in names if n not in captions]
    if lacking:
        raise DatasetError(f"{Path(root) / 'captions.tsv'}: no caption for {len(lacking)} image(s), e.g. {lacking[0]}")
    return [captions[n] for n in names]


def likelihood_recall(probs: np.ndarray, labels: np.ndarray, texts, ks=(1, 5)) -> dict[int, float]:
    """Image-to-text recall@k (percent) of an attribute classifier, the yardstick of a CLIP's recall.

    A complete caption states every attribute, so retrieving it means getting all of them right. A
    classifier retrieves by scoring caption j for image i with the log-likelihood of caption j's labels
    under image i's probabilities (attributes independent); a CLIP that learnt what the classifier knows
    would reach about this recall, so it tells how far a CLIP's recall is from what the images allow.

    Args:
        probs: (N, A) the classifier's probabilities for N images.
        labels: (N, A) labels of caption j's image (1, 0; -1 is left out of the score).
        texts: N captions; identical captions count as hits, as in :func:`retrieval_recall`.
    """
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    y = torch.as_tensor(np.asarray(labels))
    score = p.log() @ (y == 1).double().T + (1 - p).log() @ (y == 0).double().T  # (images, captions)
    return retrieval_recall(score, caption_codes(texts), ks)


def run_likelihood_recall(run_folder: str | Path, root: str | Path, ks=(1, 5)) -> dict[int, float]:
    """:func:`likelihood_recall` of a finished run's saved test predictions on the SynthPA folder ``root``."""
    preds = saved_test_predictions(run_folder)
    ann = load_dataset("synthpa", root)
    return likelihood_recall(preds.probs, ann.labels[preds.rows], captions_of(ann, root, preds.rows), ks)


@torch.no_grad()
def _embed_images(model, loader: DataLoader, device) -> torch.Tensor:
    """(N, D) normalised image embeddings of every batch of ``loader`` (images first in each item)."""
    return torch.cat([model.encode_image(batch[0].to(device), normalize=True) for batch in loader]).float()


@torch.no_grad()
def zero_shot_probs(model, image_emb: torch.Tensor, sentences, tokenizer, device) -> np.ndarray:
    """(N, A) probability of each attribute sentence against its negation, from image embeddings (N, D)."""
    sentences = list(sentences)
    pairs = tokenizer(sentences + [negate(s) for s in sentences])
    prompts = encode_text_by_length(model, pairs.to(device), normalize=True).float()
    a = len(sentences)
    scale = model.logit_scale.exp().float()
    logits_pos, logits_neg = scale * image_emb @ prompts[:a].T, scale * image_emb @ prompts[a:].T
    return torch.sigmoid(logits_pos - logits_neg).cpu().numpy()  # = softmax over the two sentences


def linear_probe(train_emb: torch.Tensor, train_labels: np.ndarray, test_emb: torch.Tensor,
                 weight_decay: float = 1e-3, steps: int = 100) -> np.ndarray:
    """(M, A) test probabilities of per-attribute logistic regressions on frozen embeddings.

    Args:
        train_emb: (N, D) embeddings of the training images; ``train_labels`` (N, A) 0/1 (-1: ignored).
        test_emb: (M, D) embeddings to score.
    Features are standardised on the training set; each attribute's positives and negatives weigh half of
    its loss each (class-balanced, as mA scores); L2 ``weight_decay`` on the weights; full-batch L-BFGS.
    """
    mean, std = train_emb.mean(0), train_emb.std(0).clamp_min(1e-6)
    x, z = (train_emb - mean) / std, (test_emb - mean) / std
    y = torch.as_tensor(train_labels, dtype=torch.float32)
    known = (y >= 0).float()
    positives = (y == 1).float() * known
    pos_weight = 0.5 / positives.sum(0).clamp_min(1)
    neg_weight = 0.5 / (known - positives).sum(0).clamp_min(1)
    sample_weight = positives * pos_weight + (known - positives) * neg_weight  # (N, A), each column sums to 1
    weight = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ weight + bias, y.clamp_min(0), reduction="none")
                * sample_weight).sum() / y.shape[1] + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.sigmoid(z @ weight + bias).numpy()


def clip_file_baselines(clip_model: str, weights: str | Path, annotations, image_size: tuple[int, int] | None = None,
                        device: str = "auto", train_split: str = "train") -> dict[str, FixedModel]:
    """:func:`clip_baselines` of a CLIP weights file (or open_clip tag) on any dataset."""
    dev = resolve_device(device)
    model = create_clip(clip_model, weights, device=str(dev), image_size=image_size).eval()
    return clip_baselines(model, clip_model, annotations, image_size or tuple(model.visual.image_size), dev,
                          train_split)


class _Texts(Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tokens[i]


@torch.no_grad()
def _evaluate(model, config: CLIPPretrainConfig, device) -> tuple[dict[int, float], dict[str, FixedModel], Annotations]:
    """Retrieval recall@1/5 and :func:`clip_baselines` on the test split of ``root``, and its annotations (read
    once)."""
    ann = load_dataset("synthpa", config.root)
    tokenizer = clip_tokenizer(config.clip_model)
    test = PARImageDataset(ann, "test", clip_transform(config.image_size, train=False))
    texts = captions_of(ann, config.root, test.rows)
    image_emb = _embed_images(model, DataLoader(test, batch_size=256), device)
    text_emb = torch.cat([encode_text_by_length(model, t.to(device), normalize=True)
                          for t in DataLoader(_Texts(tokenizer(texts)), batch_size=256)]).float()
    # Image i's own caption is column i.
    recall = retrieval_recall(image_emb @ text_emb.T, caption_codes(texts).to(device), (1, 5))
    return recall, clip_baselines(model, config.clip_model, ann, config.image_size, device), ann


@torch.no_grad()
def clip_baselines(model, clip_model: str, annotations, image_size: tuple[int, int], device,
                   train_split: str = "train", test_split: str = "test", batch_size: int = 256
                   ) -> dict[str, FixedModel]:
    """What a frozen CLIP knows of the attributes, as test probabilities: its zero-shot (each attribute sentence
    against its negation) and its linear probe (fitted on ``train_split``'s image embeddings), named
    :data:`ZERO_SHOT` and :data:`PROBE`. Each trains no parameter of the CLIP; the probe (D + 1) x A."""
    transform = clip_transform(image_size, train=False)
    test = PARImageDataset(annotations, test_split, transform)
    image_emb = _embed_images(model, DataLoader(test, batch_size=batch_size), device)
    zero = zero_shot_probs(model, image_emb, annotations.sentences, clip_tokenizer(clip_model), device)
    train = PARImageDataset(annotations, train_split, transform)
    train_emb = _embed_images(model, DataLoader(train, batch_size=batch_size), device)
    with torch.enable_grad():
        probe = linear_probe(train_emb.cpu(), annotations.labels[train.rows], image_emb.cpu())
    parameters = (image_emb.shape[1] + 1) * annotations.num_attributes
    return {ZERO_SHOT: FixedModel(test.rows, zero, parameters=0, head="sentence vs negation"),
            PROBE: FixedModel(test.rows, probe, parameters=parameters, head="linear probe")}
