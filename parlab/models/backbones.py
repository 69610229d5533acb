"""timm backbones by name, with pretrained weights from a local file or, when asked, the Hugging Face cache.

``weights`` is one of:

- ``""`` / None / ``"none"``: random initialisation (the default; nothing is downloaded; ``"none"``
  says so explicitly, as the paper profile asks for);
- a local file path (a timm ``model.safetensors`` / ``pytorch_model.bin`` / ``.pth`` /
  ``.npz`` for that architecture). timm loads it through
  ``pretrained_cfg_overlay=dict(file=...)``, which applies the architecture's own
  checkpoint filter (position-embedding resizing for ViTs at 256x192, for instance)
  and reads ``.pth`` files with ``torch.load(weights_only=True)``;
- ``"pretrained"``: timm's pretrained weights for the backbone name's tag
  (``resnet50.a1_in1k``; a name without tag takes timm's default tag), i.e.
  ``timm.create_model(name, pretrained=True)``;
- ``"hf-hub:ORG/NAME"`` (optionally ``@REVISION``): a timm model repository on the
  Hugging Face Hub, i.e. ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``;
  its ``config.json`` must name the backbone's architecture.

A backbone named ``clip:NAME`` (``clip:parlab-clip-hybrid``, ``clip:ViT-B-16-quickgelu``) is the image tower
of open_clip's CLIP ``NAME`` (:func:`parlab.models.clip.clip_image_tower`), ``weights`` then being what
:func:`parlab.models.clip.create_clip` takes (a file, an open_clip tag, ``hf-hub:ORG/NAME``): the CLIP
fine-tuned end to end, the ceiling prompt tuning is measured against.

The last two go through timm's own loaders and the Hugging Face cache (``HF_HOME``);
``HF_HUB_OFFLINE=1`` keeps them to the cache, and a weight neither cached nor
reachable is one :class:`BackboneError` line saying how to pre-fetch it.
:func:`backbone_weights_record` gives the file they resolved to and its sha256.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch.nn as nn

from parlab.errors import ConfigError, ParlabError
from parlab.models.weights import (
    PRETRAINED,
    RANDOM,
    HubUnreachable,
    cached_hub_file,
    hub_or_cache,
    is_hub_id,
    is_unavailable,
    not_available_message,
    offline,
    load_failure,
    reason,
    safe_first,
    split_hub_id,
    weights_record,
)


class BackboneError(ParlabError, ValueError):
    """An unknown backbone name or an unusable weights file."""


def available_backbones(pattern: str = "*") -> list[str]:
    """Architecture names timm can build (``pattern`` is a glob, e.g. ``"convnext_*"``)."""
    return timm.list_models(pattern)


CLIP_PREFIX = "clip:"  # a backbone that is an open_clip CLIP's image tower


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see parlab.models.available_backbones()"
    raise BackboneError(f"unknown backbone {name!r}; {hint}")


class _KeyReport(logging.Handler):
    """Collects timm's 'Missing keys' / 'Unexpected keys' messages while pretrained weights load.

    timm loads non-strictly once the classifier is removed (num_classes=0) and only logs key
    mismatches, so weights of another architecture would silently leave the model random.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys")):
            self.problems.append(message.split(")")[0][:300] + ")")


@contextlib.contextmanager
def _watch_timm_loading():
    logger = logging.getLogger("timm.models._builder")
    report, level = _KeyReport(), logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)


def create_backbone(name: str, weights: str | Path | None = None, drop_rate: float = 0.0,
                    image_size: tuple[int, int] | None = None) -> nn.Module:
    """A timm model without classifier: ``forward(x)`` gives pooled features (B, C).

    Args:
        name: a timm architecture name (``resnet50``, ``convnext_base``, ``vit_base_patch16_224``...),
            optionally with a pretrained tag (``resnet50.a1_in1k``).
        weights: None/"" for random initialisation, a local weights file, ``"pretrained"`` (timm's weights
            for the name's tag) or ``"hf-hub:ORG/NAME"`` (see the module docstring).
        drop_rate: dropout before the (removed) classifier.
        image_size: (height, width) of the inputs; passed to architectures with a fixed input grid
            (ViT, Swin...), whose position embeddings timm then resizes from the pretrained ones.

    The returned module has ``num_features`` (C).
    """
    if name.startswith(CLIP_PREFIX):
        from parlab.models.clip import clip_image_tower

        return clip_image_tower(name[len(CLIP_PREFIX):], weights_spec(weights) or None, image_size)
    _check_name(name)
    spec = weights_spec(weights)
    kwargs: dict = {"num_classes": 0, "drop_rate": drop_rate}
    model_name, hub = name, None  # hub: (repo id, revision) a download may fail on
    if spec == PRETRAINED:
        cfg = _pretrained_cfg(name)
        if cfg.hf_hub_id:
            hub = split_hub_id(cfg.hf_hub_id)
        else:
            _check_url_weights(name, cfg.url)
        kwargs["pretrained"] = True
    elif is_hub_id(spec):
        hub = _hub_id(spec)
        model_name = spec
        kwargs["pretrained"] = True
    elif spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"pretrained weights for {name!r} not found: {path}. A local path never downloads; "
                f"put the timm weights file of {name} (model.safetensors or pytorch_model.bin from its "
                "Hugging Face page, fetched on a connected machine) at that path, pass weights='pretrained' "
                "or 'hf-hub:ORG/NAME' to load through the Hugging Face cache, or weights='' to train from scratch"
            )
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    # Only weights from the hub wait for it: a local file or random weights never ask it.
    with hub_or_cache() if hub is not None else contextlib.nullcontext() as unreachable:
        if is_hub_id(spec):
            _check_hub_architecture(name, spec, *hub, unreachable)
        try:
            with _watch_timm_loading() as report:
                model = _create(model_name, image_size, kwargs)
        except Exception as exc:
            if not spec:
                raise
            if hub is not None and is_unavailable(exc):
                raise BackboneError(not_available_message(f"backbone {name!r}", spec, *hub,
                                                          exc=unreachable or exc)) from None
            if spec == PRETRAINED and is_unavailable(exc):
                raise BackboneError(_url_message(name, _pretrained_cfg(name).url, exc)) from None
            # A damaged file fails anywhere in the unpickler (IndexError, EOFError, struct.error ...): whatever
            # the kind, the file given is at fault, since the same architecture builds without it.
            raise BackboneError(f"{spec}: cannot load as weights of {name!r}: "
                                f"{load_failure(exc, limit=2000)}") from None
    if spec and report.problems:
        raise BackboneError(f"{spec}: cannot load as weights of {name!r}: " + "; ".join(report.problems))
    return model


def backbone_weights_record(backbone: str, weights: str | Path | None) -> dict | None:
    """What a run started from: ``{"id": weights, "path": file, "sha256": ...}``; None for random weights.

    ``path`` is the file timm reads for that spelling: the local file, or the Hugging Face cache file behind
    ``"pretrained"`` / ``"hf-hub:ORG/NAME"`` (with ``"source"``: the hub repository or URL a tag stands for).
    Looks only at the cache, never at the network: call it once the weights are there (after
    :func:`create_backbone` fetched them); a weight not cached is a :class:`BackboneError`.
    """
    spec = weights_spec(weights)
    if not spec:
        return None
    if backbone.startswith(CLIP_PREFIX):
        from parlab.models.clip import clip_weights_record

        return clip_weights_record(backbone[len(CLIP_PREFIX):], spec)
    if spec == PRETRAINED:
        cfg = _pretrained_cfg(backbone)
        if not cfg.hf_hub_id:
            path = _torch_hub_file(cfg.url)
            if not path.is_file():
                raise BackboneError(_url_message(backbone, cfg.url))
            return weights_record(spec, path, source=cfg.url)
        repo, revision = split_hub_id(cfg.hf_hub_id)
        path = cached_hub_file(repo, safe_first(cfg.hf_hub_filename or "pytorch_model.bin"), revision)
        if path is None:
            raise BackboneError(not_available_message(f"backbone {backbone!r}", spec, repo, revision,
                                                      fetched=False))
        return weights_record(spec, path, source=f"hf-hub:{cfg.hf_hub_id}")
    if is_hub_id(spec):
        repo, revision = _hub_id(spec)
        config = cached_hub_file(repo, ["config.json"], revision)
        filename = None
        if config is not None:
            cfg = json.loads(config.read_text(encoding="utf-8"))
            filename = cfg.get("pretrained_cfg", cfg).get("hf_hub_filename")
        path = cached_hub_file(repo, safe_first(filename or "pytorch_model.bin"), revision)
        if path is None:
            raise BackboneError(not_available_message(f"backbone {backbone!r}", spec, repo, revision,
                                                      fetched=False))
        return weights_record(spec, path)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise BackboneError(f"pretrained weights for {backbone!r} not found: {path}")
    return weights_record(spec, path)


def weights_spec(weights: str | Path | None) -> str:
    """``weights`` as a spelling: "" for random weights, which "none" also says (explicitly, as the paper
    profile asks for)."""
    spec = "" if weights is None else str(weights)
    return "" if spec == RANDOM else spec


def _hub_id(spec: str) -> tuple[str, str | None]:
    try:
        return split_hub_id(spec)
    except ConfigError as exc:
        raise BackboneError(str(exc)) from None


def _pretrained_cfg(name: str):
    """timm's pretrained config for ``name`` (its tag, or timm's default tag); a BackboneError if it has none."""
    from timm.models import resolve_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    tags = timm.list_pretrained(f"{arch}.*")
    try:
        cfg = resolve_pretrained_cfg(arch, tag or None)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        known = f"timm's pretrained tags for {arch}: {', '.join(tags)}" if tags else \
            f"timm has no pretrained weights for {arch}"
        raise BackboneError(f"weights='pretrained': no pretrained weights for {name!r} ({known}); give a "
                            "local file or an hf-hub:ORG/NAME id instead")
    return cfg


def _check_hub_architecture(name: str, spec: str, repo: str, revision: str | None,
                            unreachable: HubUnreachable | None = None) -> None:
    """Read the hub repository's ``config.json`` (cached, or fetched) and refuse another architecture.

    ``unreachable``: why the hub did not answer (:func:`hub_or_cache`), named when the config is not cached.
    """
    from timm.models import load_model_config_from_hf, split_model_name_tag

    try:
        _, architecture, _ = load_model_config_from_hf(repo + (f"@{revision}" if revision else ""))
    except Exception as exc:
        if is_unavailable(exc):
            raise BackboneError(not_available_message(f"backbone {name!r}", spec, repo, revision,
                                                      exc=unreachable or exc)) from None
        raise BackboneError(f"{spec}: not a timm model repository (its config.json: {reason(exc)})") from None
    wanted = split_model_name_tag(name)[0]
    if architecture != wanted:
        raise BackboneError(f"{spec} holds weights of a {architecture!r}, not of backbone {name!r}; set the "
                            f"backbone to {architecture!r}")


def _torch_hub_file(url: str) -> Path:
    """Where torch.hub (timm's loader for weights given only as a URL) keeps ``url``'s file."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _url_message(name: str, url: str, exc: BaseException | None = None) -> str:
    path = _torch_hub_file(url)
    mode = "HF_HUB_OFFLINE is set" if offline() else "not reachable"
    why = f"; {reason(exc, root=True)}" if exc is not None else ""
    return (f"pretrained weights of {name!r} ({url}, not on the Hugging Face Hub) are not in torch's cache "
            f"({path.parent}) and {mode}{why}. To use them offline, download that URL on a connected machine "
            f"and copy it to {path} (TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)")


def _check_url_weights(name: str, url: str) -> None:
    """Weights timm has only as a URL download through torch.hub: honour HF_HUB_OFFLINE for them too."""
    if offline() and not _torch_hub_file(url).is_file():
        raise BackboneError(_url_message(name, url))


def _create(name: str, image_size: tuple[int, int] | None, kwargs: dict) -> nn.Module:
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=tuple(image_size), **kwargs)
        except TypeError as exc:
            # Convolutional nets take any input size and have no img_size argument.
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)
