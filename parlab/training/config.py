"""Experiment configuration: frozen dataclasses, saved with every run.

Each field maps onto a notebook parameter and a ``parlab <command> --<field>``
option, and carries its help text (``option(default, help)``), which the
command line shows. A run has three configs, each with one name wherever it
appears (a task's attributes, the files a run writes, the command line's
option groups):

- ``run`` (:class:`RunFields`): what every run has, whatever the method;
- ``data`` (:class:`DataConfig`): the dataset, its splits, the input size;
- ``method``: the method's own dataclass; the baseline's is
  :class:`BaselineConfig` (model and optimisation, whose loss and optimiser
  fields it shares with PromptPAR through :class:`SupervisedConfig`).

Defaults are the Rethinking_of_PAR strong baseline on PA100k
(``docs/methods.md`` section 3), except selection, which uses the validation
split.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from parlab.errors import ConfigError, MissingFileError


def option(default: Any, help: str, choices: tuple[str, ...] = (), bounds: str = "") -> Any:  # noqa: A002
    """A config field with its default, the help the command line shows and its allowed values.

    ``choices``: the words a word field takes. ``bounds``: the range of a number (of each number of a tuple),
    written as the message says it: ">= 0", "> 0", "in (0, 1]", "in [0, 1)" ..., checked for every config
    by :meth:`ConfigFile.coerce_fields`.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


def _within(value: float, bounds: str) -> bool:
    """Whether ``value`` lies in ``bounds`` (see :func:`option`)."""
    kind, _, rest = bounds.partition(" ")
    if kind in (">=", ">", "<=", "<"):
        limit = float(rest)
        return {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[kind]
    low, high = (float(x) for x in rest[1:-1].split(","))
    return (low <= value if rest[0] == "[" else low < value) and (value <= high if rest[-1] == "]" else value < high)


def check_bounds(config) -> None:
    """Refuse a number outside its field's declared bounds, naming the field, the range and the value."""
    for f in fields(config):
        bounds, value = f.metadata.get("bounds", ""), getattr(config, f.name)
        if not bounds or value is None:
            continue
        numbers = value if isinstance(value, tuple) else (value,)
        if not all(_within(v, bounds) for v in numbers):
            each = " (each)" if isinstance(value, tuple) else ""
            raise ConfigError(f"config field {f.name!r} must be {bounds}{each}, got {value!r}")


def help_of(f) -> str:
    """The help text of a config field (empty when it has none)."""
    return f.metadata.get("help", "")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of config fields in a JSON or YAML file; a missing or broken file is a one-line error."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read this config file ({exc.__class__.__name__}: {exc})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except Exception as exc:  # yaml.YAMLError, imported only for YAML files
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: not valid YAML ({' '.join(first[:1] + first[-1:])})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(values).__name__}")
    return values


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type: numbers written as strings (as YAML reads ``1e-3``) become numbers.

    Anything that is not the type, or a lossless spelling of it, is an error naming the field and the
    type: ``"ten"`` or ``2.5`` for an int, ``64`` for a (height, width) pair, ``"yes"`` for a bool.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # "str | None"
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
        item = args[0]
        length = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        if length is not None and len(value) != length:
            raise ConfigError(f"config field {name!r} must be a list of {length} values, got {list(value)!r}")
        return tuple(_coerce(name, v, item) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field {name!r} must be true or false, got {value!r}")
    if hint is int:
        number = _number(value)
        if number is None or isinstance(value, bool) or number != int(number):
            raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
        return int(number)
    if hint is float:
        number = _number(value)
        if number is None or isinstance(value, bool):
            raise ConfigError(f"config field {name!r} must be a number, got {value!r}")
        return float(number)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"config field {name!r} must be a string, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def choices_of(f) -> tuple[str, ...]:
    """The allowed values of a config field (empty: any value of its type)."""
    return f.metadata.get("choices", ())


def check_choices(config) -> None:
    """Refuse a field whose value is not one of its allowed ones, naming both."""
    for f in fields(config):
        allowed, value = choices_of(f), getattr(config, f.name)
        if allowed and value not in allowed:
            raise ConfigError(f"config field {f.name!r}: {value!r} is not one of {', '.join(allowed)}")


class ConfigFile:
    """Reading, writing, checking and comparing a frozen config dataclass (mixed into each method's config)."""

    def coerce_fields(self) -> None:
        """Give every field its declared type (see :func:`_coerce`) and check its bounds; call first in
        ``__post_init__``."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        check_bounds(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config"):
        """Build from a plain mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path):
        """Read a JSON or YAML file of config fields."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def differences(self, other, ignore: tuple[str, ...] = ()) -> list[str]:
        """Readable 'field: mine vs other' lines for differing fields."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


# How a run uses the splits: "honest" selects on a validation split apart from the training images; "reference"
# selects on test as the public code does (Rethinking_of_PAR, FRDL and PromptPAR train on trainval).
PROTOCOLS = ("honest", "reference")
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")  # what torch.device takes here, checked before a run
TRANSFORM_NAMES = ("par", "clip", "promptpar")  # parlab.data.images.TRANSFORMS (that module imports torch)


@dataclass(frozen=True)
class RunFields(ConfigFile):
    """What every training run has, whatever the method: schedule length, batches, device, seed, selection, folder."""

    epochs: int = option(30, "training epochs", bounds=">= 1")
    batch_size: int = option(64, "training batch, per process", bounds=">= 1")
    eval_batch_size: int = option(128, "validation and test batch, per process", bounds=">= 1")
    num_workers: int = option(0, "DataLoader worker processes (unused with image_cache)", bounds=">= 0")
    amp: str = option("none", "bf16 on CPU or GPU, fp16 on GPU only", ("none", "bf16", "fp16"))
    device: str = option("auto", '"auto" picks cuda when available, else cpu')
    seed: int = option(0, "weights, order, augmentation and the carved validation split", bounds="in [0, 4294967295]")
    protocol: str = option("honest", "honest: train on train_split, select the epoch on the validation split, test "
                                     "once; reference: the public code's practice, select on test (train_split "
                                     "trainval), labelled in every table", PROTOCOLS)
    tune_thresholds: bool = option(False, "per-attribute thresholds on validation, reported beside the fixed one")
    output_dir: str = option("runs/baseline", "the run folder (config, log, checkpoints, results)")
    tensorboard: bool = option(False, "also log to TensorBoard, in tensorboard/ (pip install parlab[tensorboard])")
    precise_bn: int = option(0, "after each epoch, BatchNorm statistics recomputed as the plain average over this many "
                                "training batches at the epoch's final weights (PreciseBN); 0: the running averages "
                                "gathered while the weights moved", bounds=">= 0")

    def __post_init__(self) -> None:
        self.coerce_fields()
        check_choices(self)
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"config field 'device' must be auto, cpu, cuda, cuda:N, mps or xpu[:N], got "
                              f"{self.device!r}")


@dataclass(frozen=True)
class DataConfig(ConfigFile):
    """Which images a run reads and how: the dataset, its splits, the input size and the decision threshold."""

    dataset: str = option("synthpa", "registry name (parlab.data.available_datasets())")
    root: str = option("data/synthpa", "dataset folder")
    partition: int = option(0, "official random partition (PETA, RAP, WIDER have several)", bounds=">= 0")
    train_split: str = option("train", '"trainval" where a dataset has no separate val split (RAPv1)')
    val_split: str = option("val", "carved out of train_split (seeded, val_fraction) when the dataset has none")
    test_split: str = option("test", "evaluated once, after training")
    val_fraction: float = option(0.1, "only used to carve a validation split (RAPv1)", bounds="in (0, 1)")
    image_size: tuple[int, int] = option((256, 192), "(height, width) fed to the model", bounds=">= 8")
    train_limit: int = option(0, "use only the first n training images (0: all); for quick runs", bounds=">= 0")
    threshold: float = option(0.5, "fixed decision threshold of the standard metrics (PromptPAR's code: 0.45)",
                              bounds="in (0, 1)")
    transform: str = option("", 'input pipeline: par (stretch, ImageNet statistics), clip (stretch, CLIP '
                                'statistics), promptpar (letterbox to a square, mean and std 0.5: PromptPAR\'s '
                                'public code); "" the method\'s own (par; PromptPAR: clip)', ("", *TRANSFORM_NAMES))
    image_cache: str = option("", "folder of uint8 image caches (parlab cache): images decoded once at image_size, "
                                  "augmented on the device; built there when missing; empty: decode every epoch")
    links_outside: bool = option(False, "read image files that are symbolic links to outside the image folder "
                                        "(off: nothing outside the dataset folder is read; linked folders are fine)")

    def __post_init__(self) -> None:
        self.coerce_fields()
        if len(self.image_size) != 2:
            raise ConfigError(f"config field 'image_size' must be (height, width), got {self.image_size}")
        check_choices(self)

    def annotations(self):
        """The dataset these fields name, read from ``root`` (:func:`parlab.data.load_dataset`)."""
        from parlab.data import load_dataset

        return load_dataset(self.dataset, self.root, self.partition, links_outside=self.links_outside)


# Fields that may change when a run is resumed: they do not affect the numbers (the image cache gives the very
# tensors that decoding does), per config.
RESUMABLE_CHANGES = {"run": ("device", "num_workers", "output_dir", "tensorboard", "eval_batch_size"),
                     "data": ("image_cache", "links_outside"), "method": ()}


@dataclass(frozen=True)
class SupervisedConfig(ConfigFile):
    """What a model trained end to end on a PAR loss has: the loss, optimiser, schedule, clipping, EMA, layout."""

    loss: str = option("bce", "bce; weighted: exp(1-r)/exp(r) (reference); sqrt: Tan et al. AAAI 2020",
                       ("bce", "weighted", "sqrt"))
    optimizer: str = option("adam", "adam, adamw or sgd", ("adam", "adamw", "sgd"))
    lr: float = option(1e-4, "initial learning rate, every parameter", bounds="> 0")
    weight_decay: float = option(5e-4, "L2 (adam, sgd) or decoupled (adamw)", bounds=">= 0")
    momentum: float = option(0.9, "SGD only", bounds="in [0, 1)")
    scheduler: str = option("plateau", "plateau on validation mA, multistep, cosine (per step) or none",
                            ("plateau", "multistep", "cosine", "none"))
    plateau_factor: float = option(0.1, "lr multiplier when validation mA stops improving", bounds="in (0, 1)")
    plateau_patience: int = option(4, "epochs without improvement before the lr drops", bounds=">= 0")
    milestones: tuple[int, ...] = option((10, 20), "multistep, in epochs", bounds=">= 1")
    gamma: float = option(0.1, "multistep decay", bounds="in (0, 1]")
    warmup_epochs: int = option(0, "linear warm-up before the cosine schedule", bounds=">= 0")
    grad_clip: float = option(10.0, "max gradient norm; 0 disables", bounds=">= 0")
    ema: bool = option(False, "evaluate an exponential moving average of the weights")
    ema_decay: float = option(0.9998, "per optimiser step", bounds="in (0, 1)")
    channels_last: bool = option(False, "NHWC memory layout (faster convolutions on recent GPUs)")
    sync_bn: bool = option(False, "SyncBatchNorm under DistributedDataParallel")

    def __post_init__(self) -> None:
        self.coerce_fields()
        check_choices(self)


@dataclass(frozen=True)
class BaselineConfig(SupervisedConfig):
    """The Rethinking_of_PAR strong baseline: a timm backbone and a PAR head, trained end to end."""

    backbone: str = option("resnet50", "any timm name")
    weights: str = option("", 'backbone weights: a local file, "pretrained" (timm\'s pretrained tag of the '
                                  'backbone name, e.g. resnet50.a1_in1k) or hf-hub:ORG/NAME, through timm and the '
                                  'Hugging Face cache; "" or "none" trains from scratch')
    head: str = option("linear", 'linear: the reference (every public config sets BN: False); linear_bn: '
                                 'BatchNorm on the logits; attribute: FRDL\'s attribute-specific features; '
                                 'attribute_bn: those with BatchNorm on the logits',
                       ("linear", "linear_bn", "attribute", "attribute_bn"))
    drop_rate: float = option(0.0, "dropout on the pooled features", bounds="in [0, 1)")



def split_config(method_class: type, **values) -> tuple[RunFields, DataConfig, Any]:
    """``(run, data, method)`` configs from one flat mapping of their fields, each name to the config that has it.

    ``method_class``: the method's config dataclass. A name that two configs share goes to the first of run,
    data, method (PromptPAR's ``image_size`` is the data's). An unknown name is an error naming it.
    """
    groups: dict[type, dict] = {RunFields: {}, DataConfig: {}, method_class: {}}
    for name, value in values.items():
        home = next((c for c in groups if name in {f.name for f in fields(c)}), None)
        if home is None:
            raise ConfigError(f"unknown config field {name!r} (not a field of RunFields, DataConfig or "
                              f"{method_class.__name__})")
        groups[home][name] = value
    return RunFields(**groups[RunFields]), DataConfig(**groups[DataConfig]), method_class(**groups[method_class])
