"""FRDL stage 2 (and GOAT) configuration: one frozen dataclass, saved with every run.

The data (but for its folder), backbone and image size come from the
stage-1 run named by ``stage1``; this config, a run's ``method``, holds only
what stage 2 adds. Defaults are the public code's PA100k setting
(``docs/methods.md`` section 4); :func:`frdl_defaults` gives the per-dataset
ones, as ``run`` and ``method`` fields. This module imports no torch, so the
command line can read it quickly.

``balance_start`` counts the epochs trained on natural labels before the
first balanced one. The public configs write it as NUMBER and balance when
the 0-based epoch is ``> NUMBER``, so their NUMBER = 3 / 20 / 5 (PA100k,
PETA, RAPv1) is ``balance_start`` = 4 / 21 / 6 here.

GOAT differs from the public code only where a line below says so:

- flood levels are computed before training, from the stage-1 model on the
  training images augmented exactly as epoch 0 draws them (the public code
  records them during epoch 0 itself; ``goat_start=1`` also keeps the
  extractor still during that epoch, as it does);
- the wandering copy is reset to the stage-1 weights at every epoch start as
  well as every ``goat_period`` steps, as the public code does in effect (its
  step counter restarts each epoch and its validation reloads stage 1), so
  that a checkpoint needs no copy of the wanderer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from parlab.errors import ConfigError
from parlab.methods.registry import MethodSpec, OptionGroup, register_method
from parlab.training.config import ConfigFile, DataConfig, RunFields, check_choices, option

# Which parts of the stage-1 model GOAT moves: the whole extractor (the paper), or only the
# attribute-feature layer, which can run on cached pooled backbone features.
GOAT_MODULES = ("extractor", "attribute_features")

# The public code's stage-2 schedule per dataset (its NUMBER + 1 as balance_start, its LR_STEP as
# milestones), and what all its configs share. Those configs train ConvNeXt backbones.
DATASET_DEFAULTS: dict[str, dict] = {
    "pa100k": {"balance_start": 4, "milestones": (1,), "epochs": 20},
    "peta": {"balance_start": 21, "milestones": (30,), "epochs": 35},
    "rapv1": {"balance_start": 6, "milestones": (10,), "epochs": 18},
}
SHARED_DEFAULTS = {"lr": 1e-4, "weight_decay": 5e-4, "gamma": 0.1, "grad_clip": 10.0, "batch_size": 64}
# Which of those are run fields (RunFields) rather than FRDLConfig's.
RUN_DEFAULTS = ("epochs", "batch_size")
# The run fields FRDL's stage 2 defaults to (the command line's, the notebook's).
FRDL_RUN = {"epochs": 20, "output_dir": "runs/frdl"}
PUBLIC_BACKBONE = "convnext_base"


@dataclass(frozen=True)
class FRDLConfig(ConfigFile):
    """FRDL's stage 2 and GOAT: the stage-1 run, the feature bank, the new heads' optimiser, the wandering copy."""

    # --- input
    stage1: str = option("", 'stage-1 run folder (its best.pt) or checkpoint, trained with head "attribute"')
    # --- feature re-sampling (FRDL)
    bank_size: int = option(1024, "K, features kept per (attribute, label)", bounds=">= 1")
    positive_prior: float = option(0.5, "p, the positive prior of every attribute in balanced batches",
                                   bounds="in [0, 1]")
    balance_start: int = option(4, "epochs on natural labels before the first balanced one (the public "
                                   "code's NUMBER + 1)", bounds=">= 0")
    lr: float = option(1e-4, "Adam learning rate of the new heads h_ft", bounds="> 0")
    weight_decay: float = option(5e-4, "L2 on h_ft", bounds=">= 0")
    milestones: tuple[int, ...] = option((1,), "epochs after which h_ft's lr is multiplied by gamma "
                                               "(MultiStepLR, stepped per epoch); empty: constant lr", bounds=">= 1")
    gamma: float = option(0.1, "lr multiplier at each milestone", bounds="in (0, 1]")
    grad_clip: float = option(10.0, "max gradient norm of h_ft; 0 disables", bounds=">= 0")
    feature_cache: int = option(0, "0 recomputes features every step; n caches pooled features of n "
                                   "augmented views", bounds=">= 0")
    # --- gradient-oriented augmentation (GOAT)
    goat: bool = option(False, "feed the bank from a stage-1 copy that wanders on a flooded loss")
    goat_period: int = option(50, "P, steps between resets to the stage-1 weights", bounds=">= 1")
    goat_lr: float = option(1e-5, "Adam learning rate of the wandering copy", bounds="> 0")
    goat_weight_decay: float = option(5e-4, "Adam weight decay (L2) of the wandering copy", bounds=">= 0")
    goat_reset_optimizer: bool = option(False, "also clear the copy's Adam moments at each reset (the public "
                                               "code keeps them)")
    goat_start: int = option(0, "epochs before the copy starts to wander (1: the public code's statistics "
                                "epoch, whose features come from the still stage-1 extractor)", bounds=">= 0")
    goat_modules: str = option("extractor", "what wanders: extractor (backbone and attribute features) or "
                                            "attribute_features", GOAT_MODULES)
    flood_source: str = option("train", "whose stage-1 losses set the flood levels b+ and b-: train (its "
                                        "images augmented as epoch 0 draws them) or val (evaluation transform)",
                               ("train", "val"))

    def __post_init__(self) -> None:
        self.coerce_fields()
        check_choices(self)
        if self.feature_cache and self.goat and self.goat_modules == "extractor":
            raise ConfigError("feature_cache needs a fixed backbone, but goat_modules='extractor' trains it; use "
                              "feature_cache=0, or goat_modules='attribute_features' (only that layer wanders)")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"config field 'milestones' must be increasing epochs >= 1, got {self.milestones}")

    def check_schedule(self, epochs: int) -> None:
        """Refuse epoch counts beyond a run of ``epochs`` epochs."""
        for name in ("balance_start", "goat_start"):
            if getattr(self, name) > epochs:
                raise ConfigError(f"config field {name!r} must be in [0, epochs={epochs}], got {getattr(self, name)}")

    @property
    def method(self) -> str:
        return "FRDL+GOAT" if self.goat else "FRDL"


def frdl_defaults(dataset: str) -> dict[str, dict]:
    """The public code's stage-2 settings for a dataset: ``{"run": RunFields fields, "method": FRDLConfig fields}``.

    Both are empty when the dataset has none. ``FRDLConfig(stage1=..., **frdl_defaults("pa100k")["method"])``
    with ``RunFields(**frdl_defaults("pa100k")["run"])`` runs the paper's PA100k schedule. The public
    configs train their stage 1 on a ConvNeXt backbone (:data:`PUBLIC_BACKBONE`).
    """
    specific = DATASET_DEFAULTS.get(dataset.lower())
    settings = {} if specific is None else specific | SHARED_DEFAULTS
    return {"run": {k: v for k, v in settings.items() if k in RUN_DEFAULTS},
            "method": {k: v for k, v in settings.items() if k not in RUN_DEFAULTS}}


FRDL = register_method(MethodSpec(
    command="frdl",
    task="parlab.methods.frdl_training:FRDLTask",
    labels=("FRDL", "FRDL+GOAT"),
    # precise_bn: stage 2's steps push features into the bank, so the engine refuses to replay them.
    groups=(OptionGroup("run", RunFields, "run fields", skip=("precise_bn",), defaults=FRDL_RUN),
            OptionGroup("data", DataConfig, "data fields (the stage-1 run's: --root only where its dataset moved; "
                                                      "'' keeps its folder)",
                        skip=tuple(f.name for f in fields(DataConfig) if f.name != "root"), defaults={"root": ""}),
            OptionGroup("method", FRDLConfig, "FRDL fields (defaults: the public code's PA100k setting)")),
    help="FRDL stage 2 (and GOAT) on a stage-1 run",
    description="Train FRDL's balanced heads on a stage-1 run (head 'attribute'); writes --output-dir.",
))
