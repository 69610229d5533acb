"""The experiment configuration: one frozen dataclass, saved with every run.

Each field maps onto a notebook parameter and a ``parlab train --<field>``
option. Defaults are the Rethinking_of_PAR strong baseline on PA100k
(methods.md section 3), except selection, which uses the validation split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CHOICES = {
    "select_on": ("val", "test"),
    "head": ("linear", "linear_bn", "attribute"),
    "loss": ("bce", "weighted", "sqrt"),
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("plateau", "multistep", "cosine", "none"),
    "amp": ("none", "bf16", "fp16"),
}


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of config fields in a JSON or YAML file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    return values


class ConfigFile:
    """Reading, writing and comparing a frozen config dataclass (mixed into each method's config)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config"):
        """Build from a plain mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path):
        """Read a JSON or YAML file of config fields."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def differences(self, other, ignore: tuple[str, ...] = ()) -> list[str]:
        """Readable 'field: mine vs other' lines for differing fields."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


@dataclass(frozen=True)
class TrainConfig(ConfigFile):
    # --- data
    dataset: str = "synthpa"  # registry name (parlab.data.available_datasets())
    root: str = "data/synthpa"  # dataset folder
    partition: int = 0  # official random partition (PETA, RAP, WIDER have several)
    train_split: str = "train"  # "trainval" where a dataset has no separate val split (RAPv1)
    val_split: str = "val"  # carved out of train_split (seeded, val_fraction) when the dataset has none
    test_split: str = "test"  # evaluated once, after training
    val_fraction: float = 0.1  # only used to carve a validation split (RAPv1)
    select_on: str = "val"  # "test" reproduces the reference practice, labelled as such
    image_size: tuple[int, int] = (256, 192)  # (height, width) fed to the model
    train_limit: int = 0  # use only the first n training images (0: all); for quick runs
    num_workers: int = 0  # DataLoader worker processes
    # --- model
    backbone: str = "resnet50"  # any timm name
    weights: str = ""  # local pretrained backbone file; "" trains from scratch
    head: str = "linear_bn"  # "attribute" is FRDL's attribute-specific head
    drop_rate: float = 0.0  # dropout on the pooled features
    # --- loss and optimisation
    loss: str = "bce"  # bce; weighted: exp(1-r)/exp(r) (reference); sqrt: Tan et al. AAAI 2020
    optimizer: str = "adam"  # adam, adamw or sgd
    lr: float = 1e-4  # initial learning rate, every parameter
    weight_decay: float = 5e-4  # L2 (adam, sgd) or decoupled (adamw)
    momentum: float = 0.9  # SGD only
    scheduler: str = "plateau"  # plateau on validation mA, multistep, cosine (per step) or none
    plateau_factor: float = 0.1  # lr multiplier when validation mA stops improving
    plateau_patience: int = 4  # epochs without improvement before the lr drops
    milestones: tuple[int, ...] = (10, 20)  # multistep, in epochs
    gamma: float = 0.1  # multistep decay
    warmup_epochs: int = 0  # linear warm-up before the cosine schedule
    epochs: int = 30  # training epochs
    batch_size: int = 64  # per process
    eval_batch_size: int = 128  # per process, validation and test
    grad_clip: float = 10.0  # max gradient norm; 0 disables
    ema: bool = False  # evaluate an exponential moving average of the weights
    ema_decay: float = 0.9998  # per optimiser step
    amp: str = "none"  # bf16 on CPU or GPU, fp16 on GPU only
    channels_last: bool = False  # NHWC memory layout (faster convolutions on recent GPUs)
    sync_bn: bool = False  # SyncBatchNorm under DistributedDataParallel
    # --- run
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    seed: int = 0  # weights, order, augmentation and the carved validation split
    threshold: float = 0.5  # fixed decision threshold of the standard metrics
    tune_thresholds: bool = False  # per-attribute thresholds on validation, reported beside 0.5
    output_dir: str = "runs/baseline"  # the run folder (config, log, checkpoints, results)
    tensorboard: bool = False  # also log to TensorBoard when it is installed

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"config field {name!r}: {value!r} is not one of {', '.join(allowed)}")
        positive = ("epochs", "batch_size", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"config field 'image_size' must be (height, width), got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"config field 'val_fraction' must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"config field 'threshold' must be in (0, 1), got {self.threshold}")
        if self.lr <= 0:
            raise ValueError(f"config field 'lr' must be > 0, got {self.lr}")
        # Lists from JSON/YAML/papermill become tuples so the config stays hashable and comparable.
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "milestones", tuple(int(v) for v in self.milestones))
