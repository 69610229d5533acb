"""CLIP models from open_clip by name, with weights only from local files.

Besides open_clip's own architectures (``ViT-L-14-quickgelu`` and
``ViT-B-16-quickgelu`` hold OpenAI's CLIP; the names without ``-quickgelu``
silently use the wrong activation with those weights), parlab registers small
architectures for CPU work, stored as JSON like open_clip's model configs in
``parlab/models/clip_configs/``:

- ``parlab-clip-tiny``: a 4-layer ViT (patch 8, width 128) on 64x32 images and a
  4-layer text transformer of width 64 (the text tower dominates the cost of a
  step: 77 tokens per caption against 33 per image), 128-d embeddings; what
  parlab pretrains on SynthPA's captions when no real CLIP weights can be had.

``weights`` is one of:

- a local file (an open_clip checkpoint or ``.safetensors``); a missing one is an
  error saying how to get it;
- one of open_clip's pretrained tags for the architecture (``"openai"`` for
  ``ViT-L-14-quickgelu``), as ``open_clip.create_model(name, pretrained=tag)``;
- ``"hf-hub:ORG/NAME"`` (optionally ``@REVISION``): an open_clip repository on the
  Hugging Face Hub (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``), whose config must describe the architecture.

Tags and hub ids are fetched by open_clip's own loader through the Hugging Face
cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` keeps it to the cache); one neither
cached nor reachable is one error line saying how to pre-fetch it. The model is
then built from that one resolved file (:func:`resolve_clip_weights`), so
:func:`clip_weights_record` names exactly the bytes it started from.
``weights=None`` builds random weights, with a warning.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import warnings
from pathlib import Path

import torch.nn as nn

from parlab.errors import ConfigError, MissingFileError
from parlab.models.weights import is_hub_id, not_available_message, split_hub_id, weights_record

CONFIG_DIR = Path(__file__).parent / "clip_configs"


@functools.cache
def _register_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def clip_models() -> list[str]:
    """Every architecture name ``create_clip`` accepts (open_clip's and parlab's)."""
    import open_clip

    _register_configs()
    return open_clip.list_models()


def clip_tokenizer(name: str):
    """open_clip's tokenizer for architecture ``name`` (its vocabulary ships with open_clip: offline)."""
    import open_clip

    _register_configs()
    return open_clip.get_tokenizer(name)


def clip_transform(image_size: tuple[int, int], train: bool, pad: int = 10):
    """The PAR transform at (height, width) ``image_size`` with CLIP's input statistics, not ImageNet's."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from parlab.data.images import PARTransform

    return PARTransform(image_size, train=train, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, pad=pad)


def create_clip(name: str, weights: str | Path | None, device: str = "cpu",
                image_size: tuple[int, int] | int | None = None) -> nn.Module:
    """An open_clip CLIP model of architecture ``name`` with weights ``weights``.

    ``weights``: a local file, one of open_clip's tags for ``name`` (``"openai"``), ``"hf-hub:ORG/NAME"``, or
    None for random weights (see the module docstring). ``image_size`` overrides the architecture's input size
    (height, width); position embeddings of the weights are interpolated to the new patch grid when they are
    loaded.
    """
    import open_clip

    _check_architecture(name)
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size
    if weights is None or str(weights) == "":
        warnings.warn(f"{name}: random weights (no weights file given); fine for counting parameters and tests, "
                      "not for training", stacklevel=2)
        logging.disable(logging.WARNING)  # open_clip's own "no pretrained weights" line repeats the warning above
        try:
            return open_clip.create_model(name, pretrained=None, device=device, force_image_size=size)
        finally:
            logging.disable(logging.NOTSET)
    path = resolve_clip_weights(name, weights)
    return open_clip.create_model(name, pretrained=str(path), device=device, force_image_size=size,
                                  weights_only=True)


def resolve_clip_weights(name: str, weights: str | Path) -> Path:
    """The file ``create_clip(name, weights)`` loads: ``weights`` itself when it is a local file, else the
    Hugging Face cache file behind an open_clip tag or ``hf-hub:`` id.

    A tag or hub id not in the cache is fetched by open_clip's loader (``hf_hub_download``) unless
    ``HF_HUB_OFFLINE`` is set; one it cannot get is a :class:`~parlab.errors.MissingFileError` of one line.
    """
    from open_clip.pretrained import download_pretrained_from_hf

    _check_architecture(name)
    spec = str(weights)
    if is_hub_id(spec):
        repo, revision = split_hub_id(spec)
        try:
            config = download_pretrained_from_hf(repo, filename="open_clip_config.json", revision=revision)
            path = download_pretrained_from_hf(repo, revision=revision)
        except Exception as exc:  # open_clip turns every hub error into FileNotFoundError(... Last error: ...)
            raise MissingFileError(not_available_message(f"CLIP {name!r}", spec, repo, revision,
                                                         exc=exc)) from None
        _check_hub_config(name, spec, Path(config))
        return Path(path)
    tag = _tag_cfg(name, spec)
    if tag:
        repo, filename = _tag_file(name, spec, tag)
        try:
            return Path(download_pretrained_from_hf(repo, filename=filename))
        except Exception as exc:
            raise MissingFileError(not_available_message(f"CLIP {name!r}", spec, repo,
                                                         exc=exc)) from None
    path = Path(spec).expanduser()
    if not path.is_file():
        tags = _tags(name)
        known = "" if _is_path(spec) else \
            f" (and not a pretrained tag; open_clip's tags for {name}: {', '.join(tags) or 'none'})"
        raise MissingFileError(
            f"{path}: CLIP weights file not found{known}. A local path never "
            f"downloads: fetch the file on a connected machine (e.g. open_clip's {name} weights as "
            "open_clip_pytorch_model.bin or .safetensors from its Hugging Face page) and pass its path, or "
            "pass a tag or an hf-hub:ORG/NAME id to load through the Hugging Face cache"
        )
    return path


def clip_weights_record(name: str, weights: str | Path | None) -> dict:
    """``{"id": weights, "path": file, "sha256": ...}`` of the file ``create_clip(name, weights)`` loads.

    For a tag, ``"source"`` names the hub repository it stands for. Random weights (None) give
    ``{"id": None, "path": None, "sha256": None}``. Resolves like :func:`resolve_clip_weights` (fetching
    into the Hugging Face cache when allowed and needed).
    """
    if weights is None or str(weights) == "":
        return {"id": None, "path": None, "sha256": None}
    spec = str(weights)
    path = resolve_clip_weights(name, spec)
    tag = None if is_hub_id(spec) else _tag_cfg(name, spec)
    source = f"hf-hub:{tag['hf_hub'].rstrip('/')}" if tag else None
    return weights_record(spec, path, source=source)


def _check_architecture(name: str) -> None:
    names = clip_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ConfigError(f"unknown CLIP architecture {name!r}" + (f"; close: {', '.join(close)}" if close else ""))


def _tags(name: str) -> list[str]:
    import open_clip

    return open_clip.list_pretrained_tags_by_model(name)


def _is_path(spec: str) -> bool:
    """Whether ``spec`` reads as a path rather than a tag (a separator, a leading dot or a file suffix)."""
    return os.sep in spec or "/" in spec or spec.startswith(".") or bool(Path(spec).suffix)


def _tag_cfg(name: str, spec: str) -> dict:
    """open_clip's pretrained config of tag ``spec`` for ``name`` ({} when it is no tag of ``name``)."""
    import open_clip

    if _is_path(spec):
        return {}
    return open_clip.get_pretrained_cfg(name, spec) or {}


def _tag_file(name: str, spec: str, tag: dict) -> tuple[str, str | None]:
    """(repo id, file name) of a tag's hub copy; refuses a tag trained with another activation than ``name``."""
    import open_clip

    wanted = bool(tag.get("quick_gelu", False))
    if bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False)) != wanted:
        other = f"{name}-quickgelu" if wanted else name.removesuffix("-quickgelu")
        hint = f"use clip_model {other!r}" if other in clip_models() else "use the matching architecture"
        raise ConfigError(f"open_clip's {spec!r} weights for {name} were trained {'with' if wanted else 'without'} "
                          f"QuickGELU, which {name!r} does {'not use' if wanted else 'use'}; {hint}")
    hub = tag.get("hf_hub", "")
    if not hub:
        raise ConfigError(f"open_clip's {spec!r} weights for {name} are no Hugging Face Hub file "
                          f"({tag.get('url', '')}); download it on a connected machine and pass its path")
    # open_clip's convention: "org/name/" (default file names) or "org/name/file".
    repo, filename = os.path.split(hub)
    return repo, filename or None


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _check_hub_config(name: str, spec: str, config_path: Path) -> None:
    """Refuse a hub repository whose ``open_clip_config.json`` describes another architecture than ``name``.

    Keys both configs set must agree (``quick_gelu`` is False when absent); the input size may differ
    (``create_clip`` interpolates position embeddings).
    """
    import open_clip

    try:
        hub = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{spec}: unreadable open_clip_config.json ({exc})") from None
    theirs = _flat(hub.get("model_cfg", hub))
    ours = _flat(open_clip.get_model_config(name) or {})
    for flat in (theirs, ours):
        flat.setdefault("quick_gelu", False)
    differ = [f"{k}: {theirs[k]!r} there, {ours[k]!r} in {name}" for k in sorted(set(theirs) & set(ours))
              if k != "vision_cfg.image_size" and theirs[k] != ours[k]]
    if differ:
        raise ConfigError(f"{spec} holds another architecture than clip_model {name!r} ({'; '.join(differ[:4])}); "
                          "set clip_model to the architecture of those weights")
