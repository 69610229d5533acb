"""FRDL stage 2 (and GOAT) configuration: one frozen dataclass, saved with every run.

The data, backbone and image size come from the stage-1 run named by
``stage1``; this config holds only what stage 2 adds. Defaults are the public
code's PA100k setting (methods.md section 4); :func:`frdl_defaults` gives the
per-dataset ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from parlab.methods.goat import GOAT_MODULES
from parlab.training.config import ConfigFile

FRDL_CHOICES = {
    "goat_modules": GOAT_MODULES,
    "flood_source": ("train", "val"),
    "select_on": ("val", "test"),
    "amp": ("none", "bf16", "fp16"),
}

# balance_start and epochs of the public code, per dataset.
DATASET_DEFAULTS: dict[str, dict[str, int]] = {
    "pa100k": {"balance_start": 3, "epochs": 20},
    "peta": {"balance_start": 20, "epochs": 35},
    "rapv1": {"balance_start": 5, "epochs": 18},
}


@dataclass(frozen=True)
class FRDLConfig(ConfigFile):
    # --- input
    stage1: str = ""  # stage-1 run folder (its best.pt) or checkpoint, trained with head "attribute"
    root: str = ""  # dataset folder; "" uses the stage-1 run's
    # --- feature re-sampling (FRDL)
    bank_size: int = 1024  # K, features kept per (attribute, label)
    positive_prior: float = 0.5  # p, the positive prior of every attribute in balanced batches
    balance_start: int = 3  # epochs on natural labels before balanced batches start
    epochs: int = 20  # stage-2 epochs
    batch_size: int = 64  # per process
    lr: float = 1e-4  # Adam learning rate of the new heads h_ft
    weight_decay: float = 5e-4  # L2 on h_ft
    feature_cache: int = 0  # 0 recomputes features every step; n caches pooled features of n augmented views
    # --- gradient-oriented augmentation (GOAT)
    goat: bool = False  # feed the bank from a stage-1 copy that wanders on a flooded loss
    goat_period: int = 50  # P, steps between resets to the stage-1 weights
    goat_lr: float = 1e-5  # Adam learning rate of the wandering copy
    goat_modules: str = "extractor"  # what wanders: extractor (backbone and attribute features) or attribute_features
    flood_source: str = "train"  # split whose stage-1 losses set the flood levels b+ and b-
    # --- run
    select_on: str = "val"  # "test" reproduces the reference practice, labelled as such
    eval_batch_size: int = 128  # per process, feature extraction and evaluation
    num_workers: int = 0  # DataLoader worker processes
    amp: str = "none"  # bf16 on CPU or GPU, fp16 on GPU only
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    seed: int = 0  # h_ft initialisation, order, augmentation and balanced draws
    tune_thresholds: bool = False  # per-attribute thresholds on validation, reported beside the fixed one
    output_dir: str = "runs/frdl"  # the run folder
    tensorboard: bool = False  # also log to TensorBoard when it is installed

    def __post_init__(self) -> None:
        for name, allowed in FRDL_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("bank_size", "epochs", "batch_size", "eval_batch_size", "goat_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.positive_prior <= 1.0:
            raise ValueError(f"config field 'positive_prior' must be in [0, 1], got {self.positive_prior}")
        if not 0 <= self.balance_start <= self.epochs:
            raise ValueError(f"config field 'balance_start' must be in [0, epochs={self.epochs}], "
                             f"got {self.balance_start}")
        if self.feature_cache < 0:
            raise ValueError(f"config field 'feature_cache' must be >= 0, got {self.feature_cache}")
        if self.feature_cache and self.goat and self.goat_modules == "extractor":
            raise ValueError("feature_cache needs a fixed backbone, but goat_modules='extractor' trains it; use "
                             "feature_cache=0, or goat_modules='attribute_features' (only that layer wanders)")
        if min(self.lr, self.goat_lr) <= 0:
            raise ValueError("config fields 'lr' and 'goat_lr' must be > 0")

    @property
    def method(self) -> str:
        return "FRDL+GOAT" if self.goat else "FRDL"


def frdl_defaults(dataset: str) -> dict[str, int]:
    """The public code's ``balance_start`` and ``epochs`` for a dataset ({} when it has none)."""
    return dict(DATASET_DEFAULTS.get(dataset.lower(), {}))
