"""CLIP models from open_clip by name, with weights only from local files.

Besides open_clip's own architectures (``ViT-L-14-quickgelu`` and
``ViT-B-16-quickgelu`` hold OpenAI's CLIP; the names without ``-quickgelu``
silently use the wrong activation with those weights), parlab registers small
architectures for CPU work, stored as JSON like open_clip's model configs in
``parlab/models/clip_configs/``:

- ``parlab-clip-tiny``: a 4-layer ViT (patch 8, width 128) on 64x32 images and a
  4-layer text transformer of width 64 (the text tower dominates the cost of a
  step: 77 tokens per caption against 33 per image), 128-d embeddings; small
  and fast, what the tests build;
- ``parlab-clip-hybrid``: the same ViT shape whose patch embedding is a
  convolutional stem (:mod:`parlab.models.clip_stem`, declared in
  ``clip_configs/stems.json``) and a 3-layer text transformer of width 128
  with a 40-token context; what parlab pretrains on a SynthPA caption corpus
  when no real CLIP weights can be had.

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

Loading at another input size interpolates the visual position embeddings in
parlab, not in open_clip (whose resize assumes a square source grid, so weights
trained at 64x32 would not load at 128x64). The grid of the weights is taken
from the hub config of an ``hf-hub:`` id, else the architecture's configured
grid when the count matches, else that grid's aspect ratio at the count, else a
square (:func:`weights_grid`).

:func:`encode_text_by_length` is ``encode_text`` that stops each text at its
end-of-text token: the same features, for the padding's share less work.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_hooks

from parlab.errors import ConfigError, MissingFileError, ParlabError
from parlab.models.clip_stem import install_stem, stem_specs
from parlab.models.weights import (
    cached_hub_file,
    hub_or_cache,
    is_hub_id,
    load_failure,
    not_available_message,
    split_hub_id,
    weights_record,
)

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


def encode_text_by_length(model: nn.Module, tokens: torch.Tensor, normalize: bool = False,
                          groups: int = 4) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text``, each text run only up to its end-of-text token.

    Under CLIP's causal mask no position up to the end-of-text token (whose feature is the text's) sees a later
    one, so the padding after it changes nothing but the rounding. The texts are sorted by length and encoded
    in ``groups`` groups of equal count, each cut after its longest text: on a batch of short and long
    captions in a context of 40, about 40% of the token positions.

    Args:
        model: an open_clip ``CLIP`` (a tower with another pooling or no causal mask runs ``encode_text``).
        tokens: (N, context) token ids from the model's tokenizer.
    Returns:
        (N, D) text features, in the order of ``tokens``.
    """
    if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "attn_mask", None) is None:
        return model.encode_text(tokens, normalize=normalize)
    lengths = tokens.argmax(dim=-1) + 1  # the end-of-text token has the largest id
    order = torch.argsort(lengths, stable=True)
    cast = model.transformer.get_cast_dtype()
    # One lookup for all texts: each lookup's backward is a dense (vocabulary, width) gradient.
    embedded = model.token_embedding(tokens[:, :int(lengths.max())]).to(cast)
    pieces = []
    for rows in torch.tensor_split(order, min(groups, len(order))):
        n = int(lengths[rows].max())
        x = embedded[rows, :n] + model.positional_embedding[:n].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        pieces.append(x[torch.arange(len(rows), device=x.device), lengths[rows] - 1])
    x = torch.cat(pieces)[torch.argsort(order)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return F.normalize(x, dim=-1) if normalize else x


def residual_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   queries: int | None = None) -> torch.Tensor:
    """An open_clip ``ResidualAttentionBlock`` (self-attention) on batch-first tokens: ``block(x, attn_mask)``.

    Its ``nn.MultiheadAttention`` turns batch-first tokens sequence-first and copies queries, keys and
    values into the heads' layout (and back, in the backward pass); here one packed projection is viewed
    as heads and goes to the same ``scaled_dot_product_attention``: the same sums, ~14% less time for
    PromptPAR's visual blocks on the CPU. With ``queries=n`` only the first n outputs are computed (B, n, W):
    every token is still a key and a value. A block with forward hooks (on it, its attention or global),
    or with attention this does not cover (another attention module, separate key/value weights, bias_k,
    zero attention, a boolean or per-head mask), runs as itself (its first n outputs through its own
    attention).

    Args:
        x: (B, L, W) tokens; attn_mask: (L, L) additive float mask or None.
    """
    attn = getattr(block, "attn", None)
    plain = (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
             and not attn.add_zero_attn and (attn_mask is None or (attn_mask.dim() == 2
                                                                    and attn_mask.is_floating_point())))
    # Hooks (CAMs, attention maps) must see the modules they are on run.
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (block, attn) if m is not None) or \
        bool(_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks)
    if queries is None and (hooked or not plain):
        return block(x, attn_mask=attn_mask)
    b, length, width = x.shape
    n = length if queries is None else queries
    h = block.ln_1(x)
    if hooked or not plain:  # open_clip's own attention takes the queries apart from the keys and values
        mask = None if attn_mask is None else attn_mask[..., :n, :]
        y = x[:, :n] + block.ls_1(block.attention(q_x=h[:, :n], k_x=h, v_x=h, attn_mask=mask))
        return y + block.ls_2(block.mlp(block.ln_2(y)))
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if n == length:
        q, k, v = F.linear(h, weight, bias).view(b, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = F.linear(h[:, :n], weight[:width], None if bias is None else bias[:width])
        q = q.view(b, n, attn.num_heads, -1).transpose(1, 2)
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
        k, v = kv.view(b, length, 2, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    mask = None if attn_mask is None else attn_mask[:n].to(x.dtype)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0)
    y = x[:, :n] + block.ls_1(attn.out_proj(o.transpose(1, 2).reshape(b, n, width)))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def run_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One block of an open_clip ``Transformer`` on batch-first tokens x (B, L, W), whatever its own layout."""
    if getattr(transformer, "batch_first", True):
        return residual_block(block, x, attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def clip_transform(image_size: tuple[int, int], train: bool, pad: int = 10):
    """The PAR transform at (height, width) ``image_size`` with CLIP's input statistics, not ImageNet's."""
    from parlab.data.images import named_transform

    return named_transform("clip", image_size, train, pad)


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
        return _build(name, None, device, size)
    path = resolve_clip_weights(name, weights)
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    positions = _weights_positions(path)
    if positions is None or "patch_size" not in vision or vision.get("timm_model_name"):
        # Not a plain ViT with a readable grid: open_clip's own loading (and resizing).
        return _build(name, path, device, size)
    patch = _pair(vision["patch_size"])
    configured = _pair(vision.get("image_size", 224))
    target = _pair(size) if size is not None else configured
    target_grid = (target[0] // patch[0], target[1] // patch[1])
    hub_size = _hub_image_size(str(weights))
    candidates = [_grid(hub_size, patch)] if hub_size else []
    source_grid = weights_grid(positions, *candidates, _grid(configured, patch))
    if source_grid is None or source_grid == target_grid:
        if source_grid is None and positions != target_grid[0] * target_grid[1] + 1:
            raise ConfigError(f"{path}: cannot tell the patch grid of its {positions - 1} visual position "
                              f"embeddings (not {name}'s configured {_grid(configured, patch)}, nor that aspect "
                              "ratio, nor square); load it at the size it was trained at")
        return _build(name, path, device, size)
    # Built at the weights' own size (open_clip loads them as they are), then resized here.
    model = _build(name, path, device, (source_grid[0] * patch[0], source_grid[1] * patch[1]))
    resize_visual_positions(model, target)
    return model


class CLIPImageTower(nn.Module):
    """An open_clip image tower as a backbone: images (B, 3, H, W) -> image embeddings (B, D), ``num_features``
    D. Trained end to end under a PAR head, it is the full fine-tuning that prompt tuning is compared with."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.num_features = int(visual.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def clip_image_tower(name: str, weights: str | Path | None, image_size: tuple[int, int] | None = None
                     ) -> CLIPImageTower:
    """The image tower of :func:`create_clip` ``(name, weights, image_size=...)``; its text tower is dropped.

    ``weights=None`` is random, as for timm backbones and without :func:`create_clip`'s warning: a checkpoint
    being loaded builds its model that way.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f"{name}: random weights")
        return CLIPImageTower(create_clip(name, weights, image_size=image_size).visual)


def _build(name: str, path: Path | None, device: str, size) -> nn.Module:
    """open_clip's ``name`` at input ``size`` with the weights file ``path`` (None: random), its convolutional
    stem installed first when it has one (:mod:`parlab.models.clip_stem`). A file that does not load (damaged,
    truncated, not weights, another model's) is one :class:`ConfigError` naming it."""
    try:
        return _build_unchecked(name, path, device, size)
    except Exception as exc:
        if path is None or isinstance(exc, ParlabError):
            raise
        raise ConfigError(f"{path}: cannot load as weights of CLIP {name!r} (a damaged or truncated file, or "
                          f"another model's): {load_failure(exc)}") from None


def _build_unchecked(name: str, path: Path | None, device: str, size) -> nn.Module:
    import open_clip

    if path is not None and name not in stem_specs():
        return open_clip.create_model(name, pretrained=str(path), device=device, force_image_size=size,
                                      weights_only=True)
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights" line: random or loaded below
    try:
        model = open_clip.create_model(name, pretrained=None, force_image_size=size)
    finally:
        logging.disable(logging.NOTSET)
    install_stem(model, name)
    if path is not None:
        open_clip.load_checkpoint(model, str(path), weights_only=True)
    return model.to(device)


def weights_grid(positions: int, *grids: tuple[int, int]) -> tuple[int, int] | None:
    """The (rows, columns) patch grid of ``positions`` visual position embeddings (one of them the class token).

    The first of ``grids`` with that many patches; else the first of them scaled at the same aspect ratio;
    else a square grid; else None.
    """
    n = positions - 1
    for rows, cols in grids:
        if rows * cols == n:
            return rows, cols
    for rows, cols in grids:
        scaled = round(math.sqrt(n * rows / cols))
        if scaled > 0 and n % scaled == 0 and scaled * cols == (n // scaled) * rows:
            return scaled, n // scaled
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def resize_visual_positions(model: nn.Module, image_size: tuple[int, int] | int) -> None:
    """Interpolate the visual position embeddings of an open_clip ViT in place to ``image_size`` (H, W).

    Bicubic with antialiasing, as open_clip's own resize, but from the model's actual (possibly non-square)
    grid; the class token's embedding is kept. Sets the tower's ``image_size`` and ``grid_size``.
    """
    visual = model.visual
    size, patch = _pair(image_size), _pair(visual.patch_size)
    grid = (size[0] // patch[0], size[1] // patch[1])
    old_grid = tuple(visual.grid_size)
    if grid != old_grid:
        old = visual.positional_embedding.detach()
        token, image = old[:1], old[1:].reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
        image = F.interpolate(image.float(), size=grid, mode="bicubic", antialias=True, align_corners=False)
        image = image.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(old.dtype)
        requires_grad = visual.positional_embedding.requires_grad
        visual.positional_embedding = nn.Parameter(torch.cat([token, image]), requires_grad=requires_grad)
    visual.image_size, visual.grid_size = size, grid
    preprocess = getattr(visual, "preprocess_cfg", None)
    if isinstance(preprocess, dict) and "size" in preprocess:
        preprocess["size"] = size


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _grid(image_size, patch: tuple[int, int]) -> tuple[int, int]:
    size = _pair(image_size)
    return size[0] // patch[0], size[1] // patch[1]


def _weights_positions(path: Path) -> int | None:
    """How many visual position embeddings the weights file holds, read lazily; None when it cannot tell."""
    keys = ("visual.positional_embedding", "module.visual.positional_embedding")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                names = set(f.keys())
                key = next((k for k in keys if k in names), None)
                return None if key is None else int(f.get_slice(key).get_shape()[0])
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (legacy or TorchScript): open_clip's loader decides
        return None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return None
    key = next((k for k in keys if k in state), None)
    return None if key is None or not hasattr(state[key], "shape") else int(state[key].shape[0])


def _hub_image_size(spec: str):
    """The vision image size in an ``hf-hub:`` id's ``open_clip_config.json`` (the size its weights have)."""
    if not is_hub_id(spec):
        return None
    repo, revision = split_hub_id(spec)
    config_file = cached_hub_file(repo, ["open_clip_config.json"], revision)  # resolve_clip_weights fetched it
    if config_file is None:  # not there after all: the architecture's grid decides
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return config.get("model_cfg", config).get("vision_cfg", {}).get("image_size")


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
        with hub_or_cache() as unreachable:
            try:
                config = download_pretrained_from_hf(repo, filename="open_clip_config.json", revision=revision)
                path = download_pretrained_from_hf(repo, revision=revision)
            except Exception as exc:  # open_clip turns every hub error into FileNotFoundError(... Last error: ...)
                raise MissingFileError(not_available_message(f"CLIP {name!r}", spec, repo, revision,
                                                             exc=unreachable or exc)) from None
        _check_hub_config(name, spec, Path(config))
        return Path(path)
    tag = _tag_cfg(name, spec)
    if tag:
        repo, filename = _tag_file(name, spec, tag)
        with hub_or_cache() as unreachable:
            try:
                return Path(download_pretrained_from_hf(repo, filename=filename))
            except Exception as exc:
                raise MissingFileError(not_available_message(f"CLIP {name!r}", spec, repo,
                                                             exc=unreachable or exc)) from None
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
