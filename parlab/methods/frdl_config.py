"""FRDL stage 2 (and GOAT) configuration: one frozen dataclass, saved with every run.

The data, backbone and image size come from the stage-1 run named by
``stage1``; this config holds only what stage 2 adds to the fields every run
has (:class:`~parlab.training.config.RunFields`). Defaults are the public
code's PA100k setting (``docs/methods.md`` section 4); :func:`frdl_defaults` gives the
per-dataset ones. This module imports no torch, so the command line can read
it quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from parlab.errors import ConfigError
from parlab.methods.registry import MethodSpec, OptionGroup, register_method
from parlab.training.config import RunFields, check_at_least, option

# Which parts of the stage-1 model GOAT moves: the whole extractor (the paper), or only the
# attribute-feature layer, which can run on cached pooled backbone features.
GOAT_MODULES = ("extractor", "attribute_features")

# balance_start and epochs of the public code, per dataset.
DATASET_DEFAULTS: dict[str, dict[str, int]] = {
    "pa100k": {"balance_start": 3, "epochs": 20},
    "peta": {"balance_start": 20, "epochs": 35},
    "rapv1": {"balance_start": 5, "epochs": 18},
}


@dataclass(frozen=True)
class FRDLConfig(RunFields):
    epochs: int = option(20, "stage-2 epochs")
    output_dir: str = option("runs/frdl", "the run folder")
    # --- input
    stage1: str = option("", 'stage-1 run folder (its best.pt) or checkpoint, trained with head "attribute"')
    root: str = option("", 'dataset folder; "" uses the stage-1 run\'s')
    # --- feature re-sampling (FRDL)
    bank_size: int = option(1024, "K, features kept per (attribute, label)")
    positive_prior: float = option(0.5, "p, the positive prior of every attribute in balanced batches")
    balance_start: int = option(3, "epochs on natural labels before balanced batches start")
    lr: float = option(1e-4, "Adam learning rate of the new heads h_ft")
    weight_decay: float = option(5e-4, "L2 on h_ft")
    feature_cache: int = option(0, "0 recomputes features every step; n caches pooled features of n "
                                   "augmented views")
    # --- gradient-oriented augmentation (GOAT)
    goat: bool = option(False, "feed the bank from a stage-1 copy that wanders on a flooded loss")
    goat_period: int = option(50, "P, steps between resets to the stage-1 weights")
    goat_lr: float = option(1e-5, "Adam learning rate of the wandering copy")
    goat_modules: str = option("extractor", "what wanders: extractor (backbone and attribute features) or "
                                            "attribute_features", GOAT_MODULES)
    flood_source: str = option("train", "split whose stage-1 losses set the flood levels b+ and b-",
                               ("train", "val"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, ("bank_size", "goat_period"))
        if not 0.0 <= self.positive_prior <= 1.0:
            raise ConfigError(f"config field 'positive_prior' must be in [0, 1], got {self.positive_prior}")
        if not 0 <= self.balance_start <= self.epochs:
            raise ConfigError(f"config field 'balance_start' must be in [0, epochs={self.epochs}], "
                              f"got {self.balance_start}")
        if self.feature_cache < 0:
            raise ConfigError(f"config field 'feature_cache' must be >= 0, got {self.feature_cache}")
        if self.feature_cache and self.goat and self.goat_modules == "extractor":
            raise ConfigError("feature_cache needs a fixed backbone, but goat_modules='extractor' trains it; use "
                              "feature_cache=0, or goat_modules='attribute_features' (only that layer wanders)")
        if min(self.lr, self.goat_lr) <= 0:
            raise ConfigError("config fields 'lr' and 'goat_lr' must be > 0")

    @property
    def method(self) -> str:
        return "FRDL+GOAT" if self.goat else "FRDL"


def frdl_defaults(dataset: str) -> dict[str, int]:
    """The public code's ``balance_start`` and ``epochs`` for a dataset ({} when it has none)."""
    return dict(DATASET_DEFAULTS.get(dataset.lower(), {}))


FRDL = register_method(MethodSpec(
    command="frdl",
    task="parlab.methods.frdl_training:FRDLTask",
    labels=("FRDL", "FRDL+GOAT"),
    groups=(OptionGroup("config", FRDLConfig, "config fields (defaults: the public code's PA100k setting)"),),
    help="FRDL stage 2 (and GOAT) on a stage-1 run",
    description="Train FRDL's balanced heads on a stage-1 run (head 'attribute'); writes --output-dir.",
))
