"""Parity of parlab's training with the public code it reimplements, measured side by side on the same data.

parlab reimplements three public codebases. This benchmark runs **their code itself**, from checkouts the
user provides, beside parlab, on the same SynthPA images and labels, with the same backbone, input size,
batch, epochs, optimiser, schedule, loss, initial weights and seeds, on the CPU, and compares test mA:

1. ``baseline``: :func:`parlab.training.train` against Rethinking_of_PAR's ``train.py``
   (valencebond/Rethinking_of_PAR, the strong baseline of ``docs/methods.md`` section 3);
2. ``frdl``: FRDL's stage 2 (:func:`parlab.methods.frdl_training.train_frdl`) against the FRDL repository's
   ``train.py`` (SDret/Pedestrian-Attribute-Recognition-as-Label-balanced-Multi-label-Learning), both from
   one stage-1 model that parlab trains. Their code is a set of files that replace some of Rethinking_of_PAR's
   ("replace these files"), so this part needs both checkouts; it always runs GOAT, so parlab's side runs
   FRDL+GOAT set up as the public code does it (``goat_start=1``, flood levels from the training images);
3. ``promptpar forward``: OpenPAR's PromptPAR model (Event-AHU/OpenPAR, its ``PromptPAR`` folder: their
   ``clip.model.build_model`` and ``TransformerClassifier``, as their ``test_example.py`` builds them) and
   parlab's, on the same small random CLIP (OpenAI layout, the 16 x 16 patch grid their region mask
   hard-codes) with the same trained parameters (prompts, part tokens, fusion, heads, BatchNorms), in eval
   mode on the same input: the largest absolute difference of their main logits. parlab runs the paper's
   full model with the switches of :data:`PROMPTPAR_SWITCHES`; their auxiliary (global-local) logits are not
   compared, as parlab fixes two defects there (docs/methods.md section 5).

Usage::

    .venv/bin/python benchmarks/reference_parity.py --rethinking ~/src/Rethinking_of_PAR \\
        --frdl ~/src/Pedestrian-Attribute-Recognition-as-Label-balanced-Multi-label-Learning \\
        --openpar ~/src/OpenPAR [--seeds 0 1 2] [--epochs 5] [--work runs/reference_parity]

``--seeds 0 --epochs 1`` is a quick check. A part whose checkout is not given is skipped, and said so. The
public code's own dependencies must be installed (easydict, yacs; einops for FRDL); a missing one is named
in one line. The last line reads::

    parity: baseline <diff> [<lo>, <hi>]; frdl <diff> [<lo>, <hi>]; promptpar forward <max|diff|>

where ``<diff>`` is parlab's mean test mA minus the public code's, in mA points, and ``[<lo>, <hi>]`` its
Welch 95% interval over seeds. The exit status is 0 only when every part that ran holds: the interval
contains 0 and ``|diff| <= 1`` mA (with one seed the interval is undefined, nan, and only the second rule
applies), and the PromptPAR logits agree within 1e-4.

The protocol is the public code's (and parlab's ``protocol="reference"``): train on ``trainval`` (SynthPA's
train + val), pick the epoch on ``test``. SynthPA is generated at the input size (so no resizing step can
differ), written by :func:`parlab.data.rethinking.write_dataset_pkl` as their ``dataset_all.pkl``, and parlab
reads that same file (reader ``"rethinking"``). Both sides are scored alike: parlab's
:func:`~parlab.metrics.pedestrian_metrics` (an attribute without positives or negatives in test is left out)
on every epoch's test probabilities, the first epoch with the highest mA selected; the public code's own
number (its ``1e-20``-guarded mA, parlab's ``parity=True``, at the epoch it selected) is printed beside it.
Both start from the same weights: the harness builds parlab's initial model for the seed the way the run
does and loads those tensors into their model; a forward pass on a probe batch checks that the two compute
the same function (printed as "initial forward"). The backbone in it is ``--weights`` (a timm ResNet file)
or, as the recipe starts from ImageNet weights, one this benchmark pretrains once with parlab's baseline on
a SynthPA of another seed (``--pretrain-epochs``, kept in ``--work`` for the next run; 0: random weights).

Nothing of the public code is copied. Each run of it is a subprocess of this file (``--worker``) that puts
the checkout on ``sys.path``, imports its modules, sets its config (their PA100k yaml from the checkout,
then this run's values) and calls its ``main`` (OpenPAR: builds its model), with these run-time patches,
and no others:

- device: ``Tensor.cuda``, ``Module.cuda`` and ``torch.cuda.synchronize`` do nothing (DataParallel runs
  the module itself when there is no GPU);
- seed: their hard-coded ``set_seed(605)`` / ``set_seed(3407)`` takes the run's seed;
- initial weights: the "pretrained" download (``load_state_dict_from_url``) returns the run's initial
  backbone, and the model, once built, gets parlab's initial head (FRDL: its initial stage-2 heads);
- data loading: ``num_workers=0`` and no pinned memory (their 4 workers, on a CPU shared with training);
  the dataset file is an EasyDict pickle written into their run folder, where their relative path
  ``./data/PA100k/dataset_all.pkl`` points;
- speed: anomaly detection, which their ``train.py`` switches on at import, is switched off again;
- imports their run never uses, stubbed only when missing: ``mmcv``, ``visdom``, ``inplace_abn``,
  ``torch.utils.tensorboard`` (TensorBoard is disabled in their config), and ``torch._six.container_abcs``
  (removed from torch 2); their TensorBoard plots (``tb_visualizer_pedes``) are not drawn;
- FRDL only: its files are imported under the module names they replace (``configs.default``,
  ``tools.function``, ``models.base_block``, ``losses.bceloss``, ``models.backbone.convnext``; their
  ``train.py`` and ``batch_engine.py`` come first on ``sys.path``); ``torch.load`` of their hard-coded
  checkpoint path (``'YOUR PATH'``, or None for a ResNet-18) reads the stage-1 file; ``np.int`` (removed
  from numpy 1.24) is ``int``; their classifier pools the feature map for any ResNet (they test
  ``bb == 'resnet50'`` only);
- OpenPAR only: ``sys.argv`` holds their flags of the full model (their modules parse it when imported);
  ``Tensor.to("cuda")`` stays on the CPU; ``pkg_resources.packaging`` (gone from recent setuptools) is the
  ``packaging`` package; ``convert_weights`` (fp16) does nothing, as their ``build_model`` converts before it
  loads, which would round the weights to fp16 although ``clip.load`` returns an fp32 model on the CPU;
  ``ViT.load_param`` (their hard-coded ImageNet file) does nothing, the fusion block's weights being loaded
  with the rest.

Their code writes only into its run folder under ``--work`` (``exp_result/``, the dataset pickle), never
into the checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MA_TOLERANCE = 1.0  # mA points: the largest mean difference that still counts as parity
FORWARD_TOLERANCE = 1e-4  # the largest logit difference of the PromptPAR forward check
FAILED = "failed"  # a part that ran but did not finish (its error is printed above the parity line)
DATASET_NAME = "PA100k"  # the name their loader is given (it accepts PETA, PA100k, RAP, RAP2 only)
FLAGS = {"baseline": "--rethinking", "frdl": "--frdl", "promptpar": "--openpar"}  # the checkout each part runs
CHECKOUT_MARKERS = {"rethinking": "models/model_factory.py", "frdl": "base_block.py",
                    "openpar": "PromptPAR/clip/model.py"}  # a file each checkout has (and the others do not)


# --------------------------------------------------------------------------------------------------------
# The comparison and the verdict: pure functions of per-seed numbers.

@dataclass(frozen=True)
class Comparison:
    """Per-seed test mA (percent) of parlab (``ours``) and of the public code (``theirs``), seeds in order."""

    ours: tuple[float, ...]
    theirs: tuple[float, ...]

    @property
    def difference(self) -> float:
        """mean(ours) - mean(theirs), in mA points."""
        return float(np.mean(self.ours) - np.mean(self.theirs))

    @property
    def interval(self) -> tuple[float, float]:
        """Welch's 95% interval of the difference; (nan, nan) with fewer than two seeds on a side."""
        from parlab.stats import welch_interval

        return welch_interval(np.asarray(self.ours), np.asarray(self.theirs))

    def holds(self) -> bool:
        """The interval contains 0 (when it is defined) and ``|difference| <= MA_TOLERANCE``."""
        low, high = self.interval
        contains_zero = math.isnan(low) or low <= 0.0 <= high
        return contains_zero and abs(self.difference) <= MA_TOLERANCE


def _signed(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.2f}"


def format_comparison(outcome: Comparison | str | None) -> str:
    """``+0.31 [-1.20, +1.82]``; ``skipped`` for a part not run, ``failed`` for one that did not finish."""
    if outcome is None:
        return "skipped"
    if isinstance(outcome, str):
        return outcome
    low, high = outcome.interval
    return f"{_signed(outcome.difference)} [{_signed(low)}, {_signed(high)}]"


def format_forward(outcome: float | str | None) -> str:
    if outcome is None:
        return "skipped"
    return outcome if isinstance(outcome, str) else f"{outcome:.2e}"


def parity_line(baseline: Comparison | str | None, frdl: Comparison | str | None,
                promptpar: float | str | None) -> str:
    """The last line the benchmark prints; each part is a result, None (skipped) or :data:`FAILED`."""
    return (f"parity: baseline {format_comparison(baseline)}; frdl {format_comparison(frdl)}; "
            f"promptpar forward {format_forward(promptpar)}")


def all_hold(baseline: Comparison | str | None, frdl: Comparison | str | None,
             promptpar: float | str | None) -> bool:
    """True when every part that ran holds (a failed part does not); skipped parts do not count."""
    comparisons_hold = all(c.holds() if isinstance(c, Comparison) else c is None for c in (baseline, frdl))
    forward_holds = promptpar is None or (not isinstance(promptpar, str) and promptpar <= FORWARD_TOLERANCE)
    return comparisons_hold and forward_holds


def select_epoch(ma_per_epoch: list[float]) -> int:
    """0-based index of the first epoch with the highest mA (both codes keep an epoch only if it beats the best)."""
    values = np.asarray(ma_per_epoch, dtype=np.float64)
    return int(np.argmax(np.where(np.isnan(values), -np.inf, values)))


def mean_std(values: tuple[float, ...]) -> str:
    """``63.10 ± 0.42`` (sample standard deviation); the mean alone for one value."""
    if len(values) < 2:
        return f"{np.mean(values):.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


# --------------------------------------------------------------------------------------------------------
# The parent: data, parlab's runs, the public code's runs (subprocesses), the report.

@dataclass(frozen=True)
class SeedResult:
    """One seed of one side: test mA (percent) at the selected epoch (1-based), and the public code's own number."""

    ma: float
    epoch: int
    reported: float | None = None  # their mA arithmetic at their selected epoch (percent)
    initial_diff: float | None = None  # max |logit difference| of the two initial models on a probe batch


class PartFailed(RuntimeError):
    """A run of the public code did not finish; the message is one line (and where the log is)."""


def generate_synthpa(work: Path, images: int, image_size: tuple[int, int], seed: int) -> Path:
    """SynthPA rendered at the input size (so that no resizing step can differ between the two codes)."""
    from parlab.data.synthpa import generate

    return generate(work / f"synthpa-{images}-{image_size[0]}x{image_size[1]}-seed{seed}", images, seed=seed,
                    image_size=image_size)


def prepare_dataset(work: Path, images: int, image_size: tuple[int, int], seed: int) -> Path:
    """SynthPA at the input size, also written as a Rethinking_of_PAR ``dataset_all.pkl``; returns the pkl."""
    from parlab.data import load_dataset
    from parlab.data.rethinking import write_dataset_pkl

    root = generate_synthpa(work, images, image_size, seed)
    annotations = load_dataset("synthpa", root)
    return write_dataset_pkl(annotations, root / "dataset_all.pkl", annotations.image_root)


def pretrained_backbone(args, work: Path) -> str:
    """A backbone both sides start from, as the recipe starts from ImageNet weights: parlab's baseline trained
    on a SynthPA of its own (another seed: other people, other images) for ``--pretrain-epochs``.

    Returns the weights file (timm's keys), reused when the same settings made it before.
    """
    import torch

    from parlab.training import BaselineConfig, DataConfig, RunFields, train
    from parlab.training.checkpoint import load_checkpoint

    settings = {"backbone": args.backbone, "images": args.pretrain_images, "image_size": list(args.image_size),
                "epochs": args.pretrain_epochs, "data_seed": args.data_seed + 1000}
    folder = work / "pretrain"
    weights, manifest = folder / f"{args.backbone}.pth", folder / "settings.json"
    if weights.is_file() and manifest.is_file() and json.loads(manifest.read_text()) == settings:
        print(f"pretrained backbone: {weights} (reused)")
        return str(weights)
    root = generate_synthpa(work, args.pretrain_images, tuple(args.image_size), settings["data_seed"])
    run = RunFields(epochs=args.pretrain_epochs, batch_size=32, num_workers=0, device="cpu", seed=0,
                    output_dir=str(folder / "run"))
    data = DataConfig(dataset="synthpa", root=str(root), image_size=tuple(args.image_size))
    method = BaselineConfig(backbone=args.backbone, loss="weighted", lr=1e-3, scheduler="cosine", warmup_epochs=1)
    print(f"pretraining the backbone: parlab baseline, {args.pretrain_images} SynthPA images (seed "
          f"{settings['data_seed']}), {args.pretrain_epochs} epochs, batch 32, Adam 1e-3 cosine", flush=True)
    result = train(run, data, method, existing="overwrite", progress=False,
                   log=lambda line: print(f"    pretrain | {line}", flush=True))
    state = load_checkpoint(folder / "run" / "best.pt")["model"]
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    torch.save(backbone, weights)
    manifest.write_text(json.dumps(settings))
    print(f"pretrained backbone: {weights} (its own test split: mA {result.test.summary()['ma']:.2f})")
    return str(weights)


def baseline_configs(args, pkl: Path, seed: int, out: Path, head: str = "linear", loss: str = "weighted"):
    """parlab's (run, data, method) for one seed: the reference recipe at this benchmark's size."""
    from parlab.training import BaselineConfig, DataConfig, RunFields

    run = RunFields(epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                    num_workers=0, device="cpu", seed=seed, output_dir=str(out), protocol="reference")
    data = DataConfig(dataset="rethinking", root=str(pkl), train_split="trainval", val_split="val",
                      test_split="test", image_size=tuple(args.image_size))
    method = BaselineConfig(backbone=args.backbone, weights=args.weights, head=head, loss=loss, optimizer="adam",
                            lr=args.lr, weight_decay=5e-4, scheduler="plateau", plateau_factor=0.1,
                            plateau_patience=4, grad_clip=10.0, ema=False)
    return run, data, method


def initial_model(run, data, method, num_attributes: int):
    """The model parlab's baseline run starts from: seeded, then built by the task, as its setup does."""
    from parlab.training.seeding import seed_everything
    from parlab.training.task import SupervisedTask

    seed_everything(run.seed)
    return SupervisedTask(run, data, method).build_model(num_attributes)


def probe_batch(image_size: tuple[int, int]):
    import torch

    return torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(1234))


def rethinking_keys(state: dict) -> dict:
    """parlab's baseline state (``backbone.*``, ``head.fc.*``) under Rethinking_of_PAR's FeatClassifier keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key] = value
        elif key.startswith("head.fc."):
            out["classifier.logits.0." + key.removeprefix("head.fc.")] = value
        else:
            raise KeyError(f"no Rethinking_of_PAR counterpart for parlab's {key!r}")
    return out


def frdl_keys(state: dict) -> dict:
    """parlab's stage-1 state (attribute head) under FRDL's ``DataParallel(Network)`` keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out["module." + key] = value
        elif key.startswith("head.expand."):
            out["module.classifier.separte.0." + key.removeprefix("head.expand.")] = value
        elif key.startswith("head.bn."):
            out["module.classifier.separte.1." + key.removeprefix("head.bn.")] = value
        elif key == "head.classifiers.weight":
            out |= {f"module.classifier.logits.{j}.weight": w.reshape(1, -1).clone() for j, w in enumerate(value)}
        elif key == "head.classifiers.bias":
            out |= {f"module.classifier.logits.{j}.bias": b.reshape(1).clone() for j, b in enumerate(value)}
        else:
            raise KeyError(f"no FRDL counterpart for parlab's {key!r}")
    return out


def heads_keys(weight, bias) -> dict:
    """parlab's A classifiers (weight (A, C), bias (A,)) as FRDL's ``ModuleList`` of A ``Linear(C, 1)``."""
    out = {f"{j}.weight": w.reshape(1, -1).clone() for j, w in enumerate(weight)}
    return out | {f"{j}.bias": b.reshape(1).clone() for j, b in enumerate(bias)}


def run_reference(spec: dict, run_dir: Path) -> dict:
    """Run the public code for one seed (a ``--worker`` subprocess); returns its saved outputs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    log = run_dir / "reference.log"
    env = os.environ | {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)],
                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir).returncode
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        said = [line for line in lines if line.startswith("error: ")]
        last = said[-1].removeprefix("error: ") if said else (lines[-1] if lines else "no output")
        raise PartFailed(f"{last} (log: {log})")
    with np.load(run_dir / "reference.npz") as saved:
        return {key: saved[key] for key in saved.files}


def score_reference(outputs: dict) -> SeedResult:
    """The public code's per-epoch test probabilities scored as parlab scores its own; their number beside it."""
    from parlab.metrics import pedestrian_metrics

    gt, probs, reported = outputs["gt"].astype(np.int64), outputs["probs"], outputs["reported"]
    ours = [100 * pedestrian_metrics(gt, p).ma for p in probs]
    best, theirs_best = select_epoch(ours), select_epoch(list(reported))
    # parlab's parity=True is their arithmetic: it must give their printed number on their outputs.
    again = 100 * pedestrian_metrics(gt, probs[theirs_best], parity=True).ma
    if not math.isclose(again, 100 * reported[theirs_best], abs_tol=1e-6):
        print(f"  note: parlab's parity=True mA {again:.6f} differs from their own {100 * reported[theirs_best]:.6f}")
    return SeedResult(ours[best], best + 1, float(100 * reported[theirs_best]), float(outputs["initial_diff"]))


def run_parlab(fit) -> SeedResult:
    """Run one parlab training (``fit(log)``, a RunResult), printing its epoch lines indented."""
    result = fit(lambda line: print(f"    parlab | {line}", flush=True))
    return SeedResult(float(result.test.summary()["ma"]), int(result.best_epoch))


def print_seed(seed: int, name: str, ours: SeedResult, theirs: SeedResult) -> None:
    print(f"  seed {seed}: parlab {ours.ma:.2f} (epoch {ours.epoch})   {name} {theirs.ma:.2f} (epoch "
          f"{theirs.epoch}; its own number {theirs.reported:.2f})   initial forward max|diff| "
          f"{theirs.initial_diff:.1e}", flush=True)


def compared(name: str, pairs: list) -> Comparison:
    """The :class:`Comparison` of the seeds' (parlab's, the public code's) test metrics, printed."""
    comparison = Comparison(tuple(ours.ma for ours, _ in pairs), tuple(theirs.ma for _, theirs in pairs))
    print_comparison(name, comparison)
    return comparison


def print_comparison(name: str, comparison: Comparison) -> None:
    low, high = comparison.interval
    verdict = "holds" if comparison.holds() else "does NOT hold"
    print(f"  parlab {mean_std(comparison.ours)}   {name} {mean_std(comparison.theirs)}   difference "
          f"{_signed(comparison.difference)} [{_signed(low)}, {_signed(high)}]: {verdict}")
    if math.isnan(low):
        print(f"  (one seed: the Welch interval is undefined; only |difference| <= {MA_TOLERANCE:g} mA applies)")


def baseline_part(args, pkl: Path, work: Path) -> Comparison:
    """parlab's baseline and Rethinking_of_PAR's train.py, seed by seed."""
    import torch

    from parlab.data import load_dataset
    from parlab.training import train

    attributes = load_dataset("rethinking", pkl).num_attributes
    print(f"baseline vs Rethinking_of_PAR ({args.rethinking}): {args.backbone}, "
          f"{args.image_size[0]}x{args.image_size[1]}, batch {args.batch_size}, {args.epochs} epochs, Adam lr "
          f"{args.lr:g} wd 5e-4, plateau (0.1, patience 4), weighted BCE, clip 10, no EMA; trainval -> test; "
          f"initial backbone: {args.weights or 'random (the seed)'}", flush=True)
    pairs = []  # (parlab's, the public code's) test metrics per seed
    for seed in args.seeds:
        out = work / "baseline" / f"seed{seed}"
        run, data, method = baseline_configs(args, pkl, seed, out / "parlab")
        model = initial_model(run, data, method, attributes).eval()
        init_file = out / "initial.pt"
        init_file.parent.mkdir(parents=True, exist_ok=True)
        x = probe_batch(args.image_size)
        with torch.no_grad():
            torch.save({"state": rethinking_keys(model.state_dict()), "probe": x, "probe_logits": model(x)},
                       init_file)
        spec = {"code": "rethinking", "rethinking": str(args.rethinking), "seed": seed, "pkl": str(pkl),
                "threads": args.threads, "initial": str(init_file), "config": rethinking_config(args)}
        theirs_seed = score_reference(run_reference(spec, out / "reference"))
        ours_seed = run_parlab(lambda log: train(run, data, method, existing="overwrite", progress=False, log=log))
        print_seed(seed, "Rethinking_of_PAR", ours_seed, theirs_seed)
        pairs.append((ours_seed, theirs_seed))
    return compared("Rethinking_of_PAR", pairs)


def rethinking_config(args) -> list:
    """Their config: ``configs/pedes_baseline/pa100k.yaml`` from the checkout, then these values."""
    return ["NAME", "parity", "REDIRECTOR", False,
            "DATASET.NAME", DATASET_NAME, "DATASET.TRAIN_SPLIT", "trainval", "DATASET.VAL_SPLIT", "test",
            "DATASET.HEIGHT", args.image_size[0], "DATASET.WIDTH", args.image_size[1],
            "BACKBONE.TYPE", args.backbone, "CLASSIFIER.NAME", "linear", "CLASSIFIER.BN", False,
            "LOSS.TYPE", "bceloss", "LOSS.SAMPLE_WEIGHT", "weight",
            "TRAIN.BATCH_SIZE", args.batch_size, "TRAIN.MAX_EPOCH", args.epochs, "TRAIN.CLIP_GRAD", True,
            "TRAIN.BN_WD", True, "TRAIN.EMA.ENABLE", False,
            "TRAIN.OPTIMIZER.TYPE", "adam", "TRAIN.OPTIMIZER.WEIGHT_DECAY", 5e-4,
            "TRAIN.LR_SCHEDULER.TYPE", "plateau", "TRAIN.LR_SCHEDULER.LR_FT", args.lr,
            "TRAIN.LR_SCHEDULER.LR_NEW", args.lr, "VIS.TENSORBOARD.ENABLE", False, "VIS.VISDOM", False]


def frdl_number(epochs: int) -> int:
    """Their NUMBER (natural epochs - 1) for a short run: about half the epochs natural, the rest balanced."""
    return max(0, epochs // 2 - 1)


def frdl_config(args, number: int) -> list:
    """Their stage-2 config: ``pedes_baseline/pa100k.yaml`` from the FRDL checkout, then these values."""
    return ["NAME", "parity", "REDIRECTOR", False,
            "DATASET.NAME", DATASET_NAME, "DATASET.TRAIN_SPLIT", "trainval", "DATASET.VAL_SPLIT", "test",
            "DATASET.HEIGHT", args.image_size[0], "DATASET.WIDTH", args.image_size[1],
            "BACKBONE.TYPE", args.backbone, "TRAIN.BATCH_SIZE", args.batch_size, "TRAIN.MAX_EPOCH", args.epochs,
            "TRAIN.NUMBER", number, "TRAIN.CLIP_GRAD", True,
            "TRAIN.OPTIMIZER.TYPE", "adam", "TRAIN.OPTIMIZER.WEIGHT_DECAY", 5e-4,
            "TRAIN.LR_SCHEDULER.TYPE", "multistep", "TRAIN.LR_SCHEDULER.LR_STEP", [1],
            "TRAIN.LR_SCHEDULER.LR_NEW", args.lr, "VIS.TENSORBOARD.ENABLE", False]


def frdl_part(args, pkl: Path, work: Path) -> Comparison:
    """parlab's FRDL stage 2 and the FRDL repository's train.py from one parlab stage-1 model, seed by seed."""
    import torch

    from parlab.methods.frdl_config import FRDLConfig
    from parlab.methods.frdl_training import load_stage1, train_frdl
    from parlab.models.heads import AttributeClassifiers
    from parlab.training import RunFields, train
    from parlab.training.checkpoint import load_checkpoint
    from parlab.training.seeding import seed_everything

    number = frdl_number(args.epochs)
    print(f"frdl vs the FRDL repository ({args.frdl}, inside {args.rethinking}): stage 1 by parlab "
          f"({args.backbone}, head 'attribute', plain BCE, seed 0, {args.epochs} epochs, trainval -> test); stage 2: "
          f"{args.epochs} epochs, NUMBER {number} (balance_start {number + 1}), heads Adam lr {args.lr:g} wd 5e-4, "
          f"MultiStepLR [1], clip 10, GOAT (lr 1e-5, reset every 50 steps) as the public code always runs it",
          flush=True)
    stage1_dir = work / "frdl" / "stage1"
    run, data, method = baseline_configs(args, pkl, 0, stage1_dir, head="attribute", loss="bce")
    stage1 = run_parlab(lambda log: train(run, data, method, existing="overwrite", progress=False, log=log))
    print(f"  stage 1: test mA {stage1.ma:.2f} (epoch {stage1.epoch})", flush=True)
    stage1_state = load_checkpoint(stage1_dir / "best.pt")["model"]
    stage1_file = work / "frdl" / "stage1-frdl-keys.pt"
    torch.save({"state_dicts": frdl_keys(stage1_state)}, stage1_file)
    stage1_model = load_stage1(stage1_dir).model
    attributes, width = stage1_model.head.classifiers.weight.shape
    pairs = []  # (parlab's, the public code's) test metrics per seed
    for seed in args.seeds:
        out = work / "frdl" / f"seed{seed}"
        seed_everything(seed)  # as FRDLTask.setup does right before it builds h_ft
        heads = AttributeClassifiers(attributes, width)
        complete = _with_heads(stage1_model, heads)
        x = probe_batch(args.image_size)
        init_file = out / "initial.pt"
        init_file.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.save({"heads": heads_keys(heads.weight.detach(), heads.bias.detach()), "probe": x,
                        "probe_logits": complete(x)}, init_file)
        spec = {"code": "frdl", "rethinking": str(args.rethinking), "frdl": str(args.frdl), "seed": seed,
                "threads": args.threads,
                "pkl": str(pkl), "initial": str(init_file), "stage1": str(stage1_file),
                "config": frdl_config(args, number)}
        theirs_seed = score_reference(run_reference(spec, out / "reference"))
        stage2_run = RunFields(epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                               num_workers=0, device="cpu", seed=seed, output_dir=str(out / "parlab"),
                               protocol="reference")
        config = FRDLConfig(stage1=str(stage1_dir), balance_start=number + 1, lr=args.lr, weight_decay=5e-4,
                            milestones=(1,), gamma=0.1, grad_clip=10.0, goat=True, goat_period=50, goat_lr=1e-5,
                            goat_weight_decay=5e-4, goat_reset_optimizer=False, goat_start=1,
                            goat_modules="extractor", flood_source="train")
        ours_seed = run_parlab(lambda log: train_frdl(stage2_run, config, existing="overwrite", progress=False,
                                                      log=log))
        print_seed(seed, "FRDL", ours_seed, theirs_seed)
        pairs.append((ours_seed, theirs_seed))
    return compared("FRDL", pairs)


def _with_heads(stage1_model, heads):
    """A copy of the stage-1 model with ``heads`` as its classifiers, in eval mode (stage 2's test-time model)."""
    import copy

    model = copy.deepcopy(stage1_model)
    model.head.classifiers = heads
    return model.eval()


def check_checkout(name: str, path: Path | None) -> Path | None:
    """The checkout folder, or an argparse-style error naming the file it should hold."""
    if path is None:
        return None
    path = path.expanduser().resolve()
    marker = CHECKOUT_MARKERS[name]
    if not (path / marker).is_file():
        sys.exit(f"error: --{name} {path}: not a checkout of that code (no {marker} in it)")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rethinking", type=Path, help="checkout of valencebond/Rethinking_of_PAR")
    parser.add_argument("--frdl", type=Path, help="checkout of SDret/Pedestrian-Attribute-Recognition-as-Label-"
                                                  "balanced-Multi-label-Learning (needs --rethinking too)")
    parser.add_argument("--openpar", type=Path, help="checkout of Event-AHU/OpenPAR")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds, both sides")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every training run")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "reference_parity",
                        help="folder for the data and every run (theirs and parlab's)")
    parser.add_argument("--images", type=int, default=2560, help="SynthPA images (80/10/10 train/val/test)")
    parser.add_argument("--data-seed", type=int, default=0, help="SynthPA's seed")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 32], metavar=("H", "W"),
                        help="input size; SynthPA is rendered at it")
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"],
                        help="a ResNet both codes build (timm's and theirs share torchvision's keys)")
    parser.add_argument("--weights", default="", help="backbone weights file both sides start from (timm's "
                                                      "resnet state dict); empty: pretrain one (--pretrain-epochs)")
    parser.add_argument("--pretrain-epochs", type=int, default=4,
                        help="without --weights: epochs of parlab's baseline on a SynthPA of another seed, whose "
                             "backbone both sides start from; 0: random weights, from each run's seed")
    parser.add_argument("--pretrain-images", type=int, default=12000, help="SynthPA images of that pretraining")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch, both sides")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (baseline; FRDL's heads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side (one side runs at a "
                                                                "time; more threads than free cores slow both)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        args.rethinking = check_checkout("rethinking", args.rethinking)
        args.frdl = check_checkout("frdl", args.frdl)
        args.openpar = check_checkout("openpar", args.openpar)
        if not (args.rethinking or args.frdl or args.openpar):
            parser.error("nothing to compare: give --rethinking, --frdl (with --rethinking) or --openpar")
        if args.epochs < 1 or min(args.seeds) < 0:
            parser.error("--epochs must be >= 1 and seeds >= 0")
    return args


def warn_about_settings(args, train_images: int) -> None:
    """Settings under which the two codes are known to do different things (they are printed, not hidden)."""
    if train_images % args.batch_size:
        print(f"note: trainval ({train_images} images) is not a multiple of the batch ({args.batch_size}): their "
              "loader drops the last partial batch, parlab's keeps it")
    if args.epochs > 5:
        print("note: from epoch 6 on the plateau schedules may part: theirs steps on the test loss, parlab's on "
              "the selected (test) mA; both wait 4 epochs, so up to 5 epochs they cannot differ")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    import platform

    import torch

    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"reference parity: torch {torch.__version__}, {args.threads} of {os.cpu_count()} CPUs "
          f"({platform.processor() or 'cpu'}), "
          f"seeds {args.seeds}, {args.epochs} epochs, {args.images} SynthPA images at "
          f"{args.image_size[0]}x{args.image_size[1]}, work {work}", flush=True)
    pkl = None
    if args.rethinking is not None:  # the training parts (FRDL's code runs inside Rethinking_of_PAR's)
        from parlab.data import load_dataset

        pkl = prepare_dataset(work, args.images, tuple(args.image_size), args.data_seed)
        if not args.weights and args.pretrain_epochs > 0:
            args.weights = pretrained_backbone(args, work)
        warn_about_settings(args, len(load_dataset("rethinking", pkl).split("trainval")))
    outcomes: dict[str, Comparison | float | str | None] = {"baseline": None, "frdl": None, "promptpar": None}
    parts = {"baseline": (args.rethinking, lambda: baseline_part(args, pkl, work)),
             "frdl": (args.frdl, lambda: frdl_part(args, pkl, work)),
             "promptpar": (args.openpar, lambda: promptpar_part(args, work))}
    for name, (checkout, run_part) in parts.items():
        if checkout is None:
            print(f"{name}: skipped (no {FLAGS[name]} checkout given)")
            continue
        if name == "frdl" and args.rethinking is None:
            print("frdl: skipped (the FRDL code runs inside a Rethinking_of_PAR checkout: give --rethinking too)")
            continue
        try:
            outcomes[name] = run_part()
        except PartFailed as exc:
            print(f"{name}: error: {exc}")
            outcomes[name] = FAILED
        except Exception:  # parlab's side: the traceback, and the other parts still run
            traceback.print_exc()
            print(f"{name}: error: parlab's side failed (traceback above)")
            outcomes[name] = FAILED
    print(f"done in {time.perf_counter() - start:.0f} s; difference = parlab - public code, mA points, Welch 95%")
    print(parity_line(outcomes["baseline"], outcomes["frdl"], outcomes["promptpar"]))
    return 0 if all_hold(outcomes["baseline"], outcomes["frdl"], outcomes["promptpar"]) else 1


# A CLIP small enough for the CPU in the OpenAI layout their build_model infers (heads = width / 64) and with
# the 16 x 16 patch grid their region mask hard-codes (a 64 x 64 input, patches of 4).
PARITY_CLIP = "parity-clip-tiny"
PARITY_CLIP_CONFIG = {"embed_dim": 128, "quick_gelu": True,
                      "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 64, "patch_size": 4},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3}}
# parlab's switches that give the public code's behaviour on the main logits (every other field is the paper's).
PROMPTPAR_SWITCHES = {
    "ln_before_proj": False,  # they skip CLIP's final LayerNorm before the projection
    "use_textprompt": False,  # their text prompts sit after the 77 tokens, under the causal mask: inert
    "fusion": "vit_b16",  # their fusion block is an ImageNet ViT-B/16 block (parlab's default: a CLIP block)
}


def promptpar_part(args, work: Path) -> float:
    """OpenPAR's PromptPAR and parlab's on one random CLIP with the same trained parameters and input: the
    largest absolute difference of their (main) logits, in eval mode."""
    import warnings

    import open_clip
    import torch

    from parlab.data.sentences import sentences_for
    from parlab.data.synthpa import ATTRIBUTES
    from parlab.methods.promptpar import PromptPARConfig, build_model

    folder = work / "promptpar"
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / f"{PARITY_CLIP}.json"
    config_file.write_text(json.dumps(PARITY_CLIP_CONFIG, indent=1))
    open_clip.add_model_config(config_file)
    layers = PARITY_CLIP_CONFIG["vision_cfg"]["layers"]
    sentences = list(sentences_for(ATTRIBUTES))
    config = PromptPARConfig(clip_model=PARITY_CLIP, weights=None, num_attributes=len(sentences),
                             attribute_sentences=tuple(sentences), image_size=(64, 64), vis_prompt=50,
                             vis_depth=layers, use_div=True, div_num=4, overlap_row=2, use_vismask=True, use_GL=True,
                             use_mm_former=True, fusion_weights=None, **PROMPTPAR_SWITCHES)
    print(f"promptpar forward vs OpenPAR ({args.openpar}): a random {PARITY_CLIP} (ViT, 4 layers, width 128, "
          f"16x16 patches of a 64x64 input), 50 deep prompts on {layers} layers, 4 regions, mask, GL, ViT-B/16 fusion "
          f"block; parlab switches: " + ", ".join(f"{k}={v!r}" for k, v in PROMPTPAR_SWITCHES.items()), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: parlab says they are for tests only
        torch.manual_seed(0)
        model = build_model(config)
    perturb_trained(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    initial = folder / "initial.pt"
    torch.save({"clip": openai_clip_state(model), "classifier": openpar_classifier_state(model),
                "sentences": sentences, "probe": x, "probe_logits": logits}, initial)
    spec = {"code": "openpar", "openpar": str(args.openpar / "PromptPAR"), "initial": str(initial),
            "threads": args.threads, "vis_depth": layers}
    outputs = run_reference(spec, folder / "reference")
    diff = float(outputs["max_diff"])
    verdict = "holds" if diff <= FORWARD_TOLERANCE else "does NOT hold"
    print(f"  logits of {len(x)} images x {len(sentences)} attributes (|logit| up to {float(logits.abs().max()):.2f}): "
          f"max |diff| {diff:.2e} (tolerance {FORWARD_TOLERANCE:g}): {verdict}")
    return diff


def perturb_trained(model, generator) -> None:
    """Move every trained parameter and BatchNorm statistic off its initial value, so that each one counts."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=generator))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.5 * torch.rand(b.shape, generator=generator))


def openai_clip_state(model) -> dict:
    """parlab's CLIP with its prompts, part tokens and aggregation in OpenPAR's CLIP layout (open_clip's keys are
    OpenAI's): ``visual.transformer.prompt_deep`` (depth, P, 1, W), ``visual.part_class_embedding`` (K, W),
    ``softmax_model.temperature``, ``agg_bn.*``."""
    state = dict(model.clip.state_dict())
    state["visual.transformer.prompt_deep"] = model.prompts.detach().unsqueeze(2).clone()
    state["visual.part_class_embedding"] = model.part_tokens.detach().clone()
    state["softmax_model.temperature"] = model.temperature.detach().clone()
    return state | {f"agg_bn.{k}": v for k, v in model.aux_bn.state_dict().items()}


def openpar_classifier_state(model) -> dict:
    """parlab's fusion and heads under OpenPAR's TransformerClassifier keys."""
    state = {f"word_embed.{k}": v for k, v in model.word_embed.state_dict().items()}
    state |= {f"visual_embed.{k}": v for k, v in model.vis_embed.state_dict().items()}
    state |= {f"blocks.0.{k}": v for k, v in model.fusion_block.block.state_dict().items()}
    state |= {f"norm.{k}": v for k, v in model.fusion_norm.state_dict().items()}
    state |= {f"bn.{k}": v for k, v in model.bn.state_dict().items()}
    for j in range(model.head_weight.shape[0]):
        state[f"weight_layer.{j}.weight"] = model.head_weight[j:j + 1].detach().clone()
        state[f"weight_layer.{j}.bias"] = model.head_bias[j:j + 1].detach().clone()
    return state


# --------------------------------------------------------------------------------------------------------
# The worker: one run of the public code, in its own process, with the run-time patches of the docstring.

# Modules their train.py imports but a pedestrian ResNet run never uses: stubbed only when not installed.
UNUSED_IMPORTS = {"mmcv": (), "mmcv.cnn": ("get_model_complexity_info",), "visdom": ("Visdom",),
                  "inplace_abn": ("InPlaceABN",), "torch.utils.tensorboard": ("SummaryWriter",)}
# FRDL's files and the Rethinking_of_PAR module each one replaces (its README's "replace these files").
FRDL_OVERLAY = {"configs.default": "default.py", "tools.function": "function.py",
                "models.base_block": "base_block.py", "losses.bceloss": "bceloss.py",
                "models.backbone.convnext": "convnext.py"}
# pip names of the modules their code imports, where they differ from the module name.
PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python"}


def _unused(name: str):
    def refuse(*_args, **_kwargs):
        raise RuntimeError(f"{name} was stubbed by reference_parity.py (not installed, not needed by this run)")

    return refuse


def stub_unused_imports() -> None:
    import importlib
    import types

    for module, names in UNUSED_IMPORTS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            stub = types.ModuleType(module)
            for name in names:
                setattr(stub, name, _unused(f"{module}.{name}"))
            sys.modules[module] = stub
    try:
        import torch._six  # noqa: F401
    except ImportError:
        import collections.abc

        sys.modules["torch._six"] = types.SimpleNamespace(container_abcs=collections.abc)


def cpu_patches() -> None:
    """``.cuda()`` and ``torch.cuda.synchronize()`` do nothing: their code runs on the CPU as written."""
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.synchronize = lambda *args, **kwargs: None


def overlay_frdl(frdl: Path) -> None:
    """Import FRDL's files under the Rethinking_of_PAR module names they replace."""
    import importlib.util

    if not hasattr(np, "int"):
        np.int = int  # their attributes_Q uses np.int, removed in numpy 1.24
    for name, file in FRDL_OVERLAY.items():
        spec = importlib.util.spec_from_file_location(name, frdl / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def write_easydict_dataset(pkl: Path) -> None:
    """Their loader reads ``./data/<NAME>/dataset_all.pkl`` with attribute access: an EasyDict pickle here."""
    import pickle

    from easydict import EasyDict

    with open(pkl, "rb") as f:
        info = pickle.load(f)  # written by this benchmark (parlab's writer) a moment ago
    target = Path("data") / DATASET_NAME / "dataset_all.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        pickle.dump(EasyDict(info), f)


def collect_outputs(initial_diff: float) -> None:
    """Every epoch's test probabilities and their own mA, from the metric pickle their trainer writes."""
    import pickle

    found = sorted(Path("exp_result", DATASET_NAME).glob("*/img_model/metric_*.pkl"))
    if not found:
        raise RuntimeError("their trainer wrote no metric_*.pkl under exp_result/")
    with open(found[-1], "rb") as f:
        results = pickle.load(f)
    epochs = sorted(results)
    np.savez("reference.npz", gt=results[epochs[0]]["valid_gt"],
             probs=np.stack([results[e]["valid_probs"] for e in epochs]).astype(np.float32),
             reported=np.array([results[e]["valid_result"].ma for e in epochs]), initial_diff=initial_diff)


def worker(spec_file: Path) -> int:
    spec = json.loads(spec_file.read_text())
    os.chdir(spec_file.parent)
    if spec["code"] == "openpar":
        return openpar_worker(spec)
    code, seed = spec["code"], spec["seed"]
    stub_unused_imports()
    cpu_patches()
    import torch

    torch.set_num_threads(spec["threads"])
    initial = torch.load(spec["initial"])
    sys.path[:0] = ([spec["frdl"]] if code == "frdl" else []) + [spec["rethinking"]]
    try:
        if code == "frdl":
            overlay_frdl(Path(spec["frdl"]))
        from configs import cfg

        import train as reference
        from models.backbone import resnet
    except ModuleNotFoundError as exc:
        name = (exc.name or "?").split(".")[0]
        print(f"error: the {'FRDL' if code == 'frdl' else 'Rethinking_of_PAR'} code needs the Python package "
              f"{name!r}: pip install {PIP_NAMES.get(name, name)}")
        return 3
    torch.autograd.set_detect_anomaly(False)
    set_seed = reference.set_seed
    reference.set_seed = lambda _their_seed: set_seed(seed)
    data_loader = reference.DataLoader

    def single_process_loader(*args, **kwargs):
        return data_loader(*args, **(kwargs | {"num_workers": 0, "pin_memory": False}))

    reference.DataLoader = single_process_loader
    probe = {"diff": float("nan")}
    if code == "rethinking":
        backbone = {k.removeprefix("backbone."): v for k, v in initial["state"].items() if k.startswith("backbone.")}
        resnet.load_state_dict_from_url = lambda *_args, **_kwargs: backbone
        reference.tb_visualizer_pedes = lambda *_args, **_kwargs: None
        reference.FeatClassifier = _initialised_feat_classifier(reference.FeatClassifier, initial, probe)
        recipe = Path(spec["rethinking"], "configs", "pedes_baseline", "pa100k.yaml")
    else:
        stage1 = torch.load(spec["stage1"])["state_dicts"]
        backbone = {k.removeprefix("module.backbone."): v for k, v in stage1.items()
                    if k.startswith("module.backbone.")}
        resnet.load_state_dict_from_url = lambda *_args, **_kwargs: backbone
        _read_stage1_from(spec["stage1"])
        classifier = reference.Classifier
        reference.Classifier = lambda c_in, nattr, bb: classifier(c_in, nattr, "resnet50" if bb.startswith("resnet")
                                                                  else bb)
        reference.Network = _initialised_network(reference.Network, initial)
        reference.get_reload_weight = _probed_reload(reference.get_reload_weight, initial, probe)
        recipe = Path(spec["frdl"], "pedes_baseline", "pa100k.yaml")
    write_easydict_dataset(Path(spec["pkl"]))
    cfg.defrost()
    cfg.merge_from_file(str(recipe))
    cfg.merge_from_list(spec["config"])
    cfg.freeze()
    args = argparse.Namespace(cfg=str(recipe), debug=True, local_rank=0, dist_bn="")
    reference.main(cfg, args)
    collect_outputs(probe["diff"])
    return 0


def openpar_worker(spec: dict) -> int:
    """Build OpenPAR's CLIP (their ``clip.load``) and TransformerClassifier with parlab's parameters; one forward."""
    import types

    import torch

    torch.set_num_threads(spec["threads"])
    # Their modules parse the command line when imported: their flags for the paper's full model.
    sys.argv = ["PromptPAR", "PA100k", "--use_div", "--use_vismask", "--use_GL", "--use_textprompt",
                "--use_mm_former", "--vis_depth", str(spec["vis_depth"])]
    sys.path.insert(0, spec["openpar"])
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # their clip.py reads packaging through pkg_resources, gone from recent setuptools
        import packaging.version

        sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    cpu_patches()
    to = torch.Tensor.to

    def cuda_stays_on_cpu(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.to = cuda_stays_on_cpu  # their `.to("cuda")`
    initial = torch.load(spec["initial"])
    try:
        import clip.model as clip_module
        import models.vit
        from models.base_block import TransformerClassifier
    except ModuleNotFoundError as exc:
        name = (exc.name or "?").split(".")[0]
        print(f"error: the OpenPAR code needs the Python package {name!r}: pip install {PIP_NAMES.get(name, name)}")
        return 3
    # Their build_model makes the model fp16, then loads the weights, and clip.load turns it back to fp32 on the
    # CPU: the weights would come out rounded to fp16. On the CPU it is fp32 throughout.
    clip_module.convert_weights = lambda model: None
    models.vit.ViT.load_param = lambda self, path: None  # their hard-coded ImageNet file; the block is loaded below
    # As their test_example.py builds it from a checkpoint's CLIP state; on the CPU, fp32 (as clip.load does).
    clip_model = clip_module.build_model(dict(initial["clip"])).float()
    missing = sorted(set(clip_model.state_dict()) - set(initial["clip"]) - {"transformer.prompt_text_deep"})
    unexpected = sorted(set(initial["clip"]) - set(clip_model.state_dict()))
    if missing or unexpected:
        print(f"error: parlab's CLIP state does not fill theirs: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return 1
    model = TransformerClassifier(clip_model, len(initial["sentences"]), initial["sentences"])
    model.load_state_dict(initial["classifier"], strict=True)
    model.eval()
    clip_model.eval()
    with torch.no_grad():
        logits, _ = model(initial["probe"], clip_model)
    np.savez("reference.npz", max_diff=float((logits - initial["probe_logits"]).abs().max()))
    return 0


def _initialised_feat_classifier(feat_classifier, initial: dict, probe: dict):
    """Their FeatClassifier, given parlab's initial weights once built, and checked on the probe batch."""
    import torch

    class Initialised(feat_classifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.load_state_dict(initial["state"], strict=True)
            self.eval()
            with torch.no_grad():
                logits = self(initial["probe"])[0][0]
            self.train()
            probe["diff"] = float((logits - initial["probe_logits"]).abs().max())

    return Initialised


def _initialised_network(network, initial: dict):
    """Their Network, with parlab's initial stage-2 heads (h_ft) as its ``logits_ft``."""

    class Initialised(network):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.logits_ft.load_state_dict(initial["heads"], strict=True)

    return Initialised


def _read_stage1_from(path: str) -> None:
    """``torch.load`` of their hard-coded stage-1 path reads ``path`` (``'YOUR PATH'``; None off ResNet-50/ConvNeXt)."""
    import torch

    load = torch.load

    def redirected(f, *args, **kwargs):
        return load(path if f is None or f == "YOUR PATH" else f, *args, **kwargs)

    torch.load = redirected


def _probed_reload(reload, initial: dict, probe: dict):
    """Their first stage-1 load in ``main``, followed by a forward of the probe batch (test mode)."""
    import torch

    def probed(model, *args, **kwargs):
        model = reload(model, *args, **kwargs)
        if math.isnan(probe["diff"]):
            model.eval()
            with torch.no_grad():
                logits = model(initial["probe"], None, "test")[0][0]
            probe["diff"] = float((logits - initial["probe_logits"]).abs().max())
        return model

    return probed


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        code = main()
    sys.exit(code)
