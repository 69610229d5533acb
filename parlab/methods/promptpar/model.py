"""The PromptPAR model on an unmodified open_clip CLIP (docs/methods.md section 5).

The CLIP model is built by open_clip and never forked: this module runs its
pieces (patch embedding, residual blocks, final LayerNorm, projection, text
tower) in its own order, adding

- deep visual prompts: a fresh set at each of the first ``vis_depth`` layers;
- region-aware prompts: one part token and one prompt group per band of the
  *actual* patch grid, with an attention mask that keeps them inside the band
  (:mod:`parlab.methods.promptpar.regions`); the part tokens pass through
  CLIP's ``ln_pre`` like the class and patch tokens, the prompts do not (as in
  the reference code);
- deep text prompts: per attribute, ``text_prompt`` tokens at each of the first
  ``text_prompt_depth`` layers of the text tower (VPT-deep; the reference's
  ``prompt_text_deep``); ``text_prompt_depth`` 0 or 1 gives one shallow set
  shared by all attributes;
- global-local aggregation: per-sample cosine similarities of the CLS token
  and the part tokens with the attribute sentences, scaled by the CLIP's own
  ``logit_scale.exp()`` (100 for OpenAI's weights), giving auxiliary logits;
- vision-language fusion: embedded sentence features and visual tokens through
  one transformer block, or the paper's linear alternative (``use_mm_former=False``:
  a Linear over the token axis, from the A + L fused tokens to A), then one head
  per attribute and BN.

Where the public code goes wrong, this does not: the global token is CLS; CLIP's
final LayerNorm comes before the projection (``ln_before_proj=False`` keeps
the reference behaviour); the local similarity is computed for every sample;
the text prompts sit between the start token and the sentence, where the
causal mask lets the end-of-text token (whose feature is the sentence's) see
them (the reference appends them after the 77 tokens, where they are inert).

Only the parameters the paper trains require gradients; checkpoints hold only
them (:meth:`PromptPAR.trained_state_dict`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from parlab.methods.promptpar.config import PromptPARConfig
from parlab.methods.promptpar.regions import TokenLayout, band_rows, region_attention_mask, split_prompts
from parlab.models.clip import clip_tokenizer, create_clip, residual_block, run_block


class PromptPAR(nn.Module):
    """PromptPAR around a frozen open_clip ``CLIP``; see the module docstring.

    ``forward(images)`` with images (B, 3, H, W) returns logits (B, A); in training mode with
    ``use_GL`` it returns (logits, auxiliary logits), both (B, A).
    """

    def __init__(self, config: PromptPARConfig, clip: nn.Module, fusion_block: nn.Module | None,
                 fusion_norm: nn.Module | None, fusion_width: int) -> None:
        super().__init__()
        if not hasattr(clip, "visual") or not hasattr(clip, "token_embedding"):
            raise ValueError(f"{config.clip_model}: PromptPAR needs an open_clip CLIP with its own text tower")
        self.config = config
        self.clip = clip.requires_grad_(False)
        visual = clip.visual
        if not hasattr(visual, "grid_size") or visual.attn_pool is not None:
            raise ValueError(f"{config.clip_model}: PromptPAR needs a ViT visual tower with a class token")
        width, depth = visual.class_embedding.shape[0], len(visual.transformer.resblocks)
        embed_dim = clip.visual.output_dim  # D: the shared image-text embedding width
        if config.vis_depth > depth:
            raise ValueError(f"vis_depth {config.vis_depth} exceeds the {depth} layers of {config.clip_model}")
        a = config.num_attributes
        regions = config.div_num if config.use_div else 0
        prompts = config.vis_prompt if config.vis_depth else 0
        global_prompts, per_region = split_prompts(prompts, regions) if regions and prompts else (prompts, 0)
        self.layout = TokenLayout(tuple(visual.grid_size), global_prompts, regions, per_region)
        self.bands = band_rows(self.layout.grid[0], regions, config.overlap_row) if regions else []
        mask = region_attention_mask(self.layout, self.bands) if config.use_vismask else None
        self.register_buffer("attn_mask", mask, persistent=False)
        # Where each layer's fresh prompts are written: one index_copy per layer, not a concatenation of pieces.
        self.register_buffer("prompt_positions", self.layout.prompt_positions(), persistent=False)

        scale = width ** -0.5  # CLIP's initialisation of its class embedding
        self.prompts = nn.Parameter(scale * torch.randn(config.vis_depth, prompts, width)) if prompts else None
        self.part_tokens = nn.Parameter(scale * torch.randn(regions, width)) if regions else None

        text_layers = len(clip.transformer.resblocks)
        text_depth = text_layers if config.text_prompt_depth is None else config.text_prompt_depth
        if text_depth > text_layers:
            raise ValueError(f"text_prompt_depth {text_depth} exceeds the {text_layers} text layers of "
                             f"{config.clip_model}")
        self.text_prompts = None  # (n, W) shared and shallow, or (depth, A, n, W): per attribute, per layer
        if config.use_textprompt and config.text_prompt:
            text_width = clip.token_embedding.weight.shape[1]
            shape = (text_depth, a) if text_depth > 1 else ()
            self.text_prompts = nn.Parameter(0.02 * torch.randn(*shape, config.text_prompt, text_width))
        sentences = list(config.attribute_sentences) or [f"a pedestrian with attribute {i + 1}" for i in range(a)]
        tokens = clip_tokenizer(config.clip_model)(sentences)
        room = tokens.shape[1] - (0 if self.text_prompts is None else config.text_prompt)
        longest = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the largest id
        if longest > room:
            raise ValueError(f"an attribute sentence is {longest} tokens long; with {config.text_prompt} text "
                             f"prompts at most {room} fit the context of {config.clip_model}")
        self.register_buffer("sentence_tokens", tokens, persistent=False)
        # Without text prompts the sentence features never change: computed once here, moved with .to().
        with torch.no_grad():
            cache = None if self.text_prompts is not None else self._encode_text()
        self.register_buffer("text_cache", cache, persistent=False)

        self.temperature = nn.Parameter(torch.ones(())) if config.use_GL else None
        self.aux_bn = nn.BatchNorm1d(a) if config.use_GL else None
        self.word_embed = nn.Linear(embed_dim, fusion_width)
        self.vis_embed = nn.Linear(embed_dim, fusion_width)
        self.fusion_block = fusion_block
        # The linear alternative: the A sentences and L visual tokens mixed along the token axis into A tokens.
        self.fusion_linear = nn.Linear(a + self.layout.length, a) if fusion_block is None else None
        self.fusion_norm = fusion_norm if fusion_norm is not None else nn.LayerNorm(fusion_width)
        self.head_weight = nn.Parameter(torch.empty(a, fusion_width))  # one Linear(F, 1) per attribute
        self.head_bias = nn.Parameter(torch.zeros(a))
        nn.init.trunc_normal_(self.head_weight, std=fusion_width ** -0.5)
        self.bn = nn.BatchNorm1d(a) if config.logit_bn else nn.Identity()

    # --- text
    def _encode_text(self) -> torch.Tensor:
        """Sentence features (A, D), with the text prompts after the start token when there are any.

        Shallow prompts (n, W) enter once, shared by all attributes; deep ones (depth, A, n, W) enter at the
        first layer and replace the hidden states of their positions at each of the next ``depth - 1``
        (VPT-deep), one set per attribute.
        """
        clip, tokens, prompts = self.clip, self.sentence_tokens, self.text_prompts
        x = clip.token_embedding(tokens)  # (A, 77, W)
        eot = tokens.argmax(dim=-1)
        deep = prompts is not None and prompts.dim() == 4
        if prompts is not None:
            n = prompts.shape[-2]
            first = prompts[0] if deep else prompts.unsqueeze(0).expand(len(x), -1, -1)
            x = torch.cat([x[:, :1], first.to(x.dtype), x[:, 1:x.shape[1] - n]], dim=1)
            eot = eot + n
        x = x + clip.positional_embedding.to(x.dtype)
        mask = clip.attn_mask
        if mask is not None:
            # Under the causal mask no position up to the last end-of-text token sees a later one: the
            # padding after it changes nothing the features read, so it is cut (most of a short sentence's
            # context of 77).
            length = int(eot.max()) + 1
            x, mask = x[:, :length], mask[:length, :length]
        if not deep:
            x = clip.transformer(x, attn_mask=mask)
        else:
            for i, block in enumerate(clip.transformer.resblocks):
                if 0 < i < len(prompts):
                    x = torch.cat([x[:, :1], prompts[i].to(x.dtype), x[:, 1 + n:]], dim=1)
                x = run_block(clip.transformer, block, x, mask)
        x = clip.ln_final(x)[torch.arange(len(x), device=x.device), eot]
        projection = clip.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def text_features(self) -> torch.Tensor:
        """(A, D) sentence features: the cache, or computed with the current text prompts."""
        return self.text_cache if self.text_cache is not None else self._encode_text()

    # --- vision
    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the visual residual blocks with deep prompts and the region mask: (B, L, W) -> (B, L, W)."""
        transformer = self.clip.visual.transformer
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)  # once per forward, not per layer
        for i, block in enumerate(transformer.resblocks):
            if self.prompts is not None and 0 < i < self.prompts.shape[0]:
                # VPT-deep: the prompt positions take layer i's fresh prompts (one copy of x, not a concatenation).
                fresh = self.prompts[i].to(x.dtype).unsqueeze(0).expand(len(x), -1, -1)
                x = x.index_copy(1, self.prompt_positions, fresh)
            x = run_block(transformer, block, x, mask)
        return x

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens (B, L, D) in :attr:`layout` order (CLS, patches, prompts, parts)."""
        visual, layout = self.clip.visual, self.layout
        x = visual._embeds(images)  # (B, 1 + N, W): patches, class token, position embedding, ln_pre
        b = len(x)
        extra = []
        first = None if self.prompts is None else self.prompts[0].to(x.dtype).unsqueeze(0).expand(b, -1, -1)
        # Part tokens pass through ln_pre like CLS and the patches (LayerNorm is per token); prompts do not.
        parts = None if self.part_tokens is None else visual.ln_pre(self.part_tokens).to(x.dtype)
        if layout.global_prompts:
            extra.append(first[:, :layout.global_prompts])
        for k in range(layout.regions):
            extra.append(parts[k].view(1, 1, -1).expand(b, -1, -1))
            if layout.prompts_per_region:
                start = layout.global_prompts + k * layout.prompts_per_region
                extra.append(first[:, start:start + layout.prompts_per_region])
        x = self._blocks(torch.cat([x, *extra], dim=1))
        if self.config.ln_before_proj:
            x = visual.ln_post(x)
        return x @ visual.proj

    # --- heads
    def aggregate(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Global-local aggregation: auxiliary logits (B, A) from tokens (B, L, D) and text (A, D).

        Cosine similarities are scaled by the CLIP's own ``logit_scale.exp()`` (100 for OpenAI's weights).
        """
        layout = self.layout
        picks = [0] + [layout.part_token(k) for k in range(layout.regions)]
        scale = self.clip.logit_scale.exp().to(tokens.dtype)
        sim = scale * F.normalize(tokens[:, picks], dim=-1) @ F.normalize(text, dim=-1).T  # (B, 1 + K, A)
        prob = torch.softmax(sim / self.temperature, dim=-1)  # over attributes, per token and sample
        glob = prob[:, 0]
        if layout.regions:
            parts = prob[:, 1:]
            high, low = parts.max(dim=1).values, parts.min(dim=1).values
            local = torch.where(high > self.config.ag_threshold, high, low)
        else:
            local = glob
        return self.aux_bn((local + glob) / 2)

    def fuse(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Main logits (B, A): sentence features and visual tokens fused, one head per attribute."""
        b, a = len(tokens), len(text)
        words = self.word_embed(text.to(tokens.dtype)).unsqueeze(0).expand(b, -1, -1)  # (B, A, F)
        x = torch.cat([words, self.vis_embed(tokens)], dim=1)  # (B, A + L, F)
        if self.fusion_block is None:  # linear alternative: A + L tokens mixed into A along the token axis
            fused = self.fusion_linear(x.transpose(1, 2)).transpose(1, 2)
        else:
            fused = first_tokens(self.fusion_block, x, a)
        fused = self.fusion_norm(fused)
        logits = (fused * self.head_weight.to(fused.dtype)).sum(-1) + self.head_bias.to(fused.dtype)
        return self.bn(logits)

    def forward(self, images: torch.Tensor):
        tokens = self.visual_tokens(images)
        text = self.text_features().to(tokens.dtype)
        logits = self.fuse(tokens, text)
        if self.training and self.aux_bn is not None:
            return logits, self.aggregate(tokens, text)
        return logits

    # --- what is trained and saved
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained parameters and the BatchNorm statistics: what a checkpoint holds."""
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        buffers = {f"{name}.{b}" for name, m in self.named_modules() if isinstance(m, nn.BatchNorm1d)
                   for b in ("running_mean", "running_var", "num_batches_tracked")}
        return {k: v for k, v in self.state_dict().items() if k in trained | buffers}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load :meth:`trained_state_dict` output; every key must match exactly."""
        own = self.trained_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source}: PromptPAR trained parameters do not match this config "
                             f"(missing: {missing[:6]}, unexpected: {unexpected[:6]})")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, this model {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)


def _clip_fusion(clip: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """A frozen copy of the CLIP visual tower's last block and final LayerNorm (width W)."""
    visual = clip.visual
    block, norm = copy.deepcopy(visual.transformer.resblocks[-1]), copy.deepcopy(visual.ln_post)
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError("fusion='clip_block' needs a batch-first open_clip transformer")
    return _FrozenBlock(block, ("ln_1", "ln_2")), norm, visual.class_embedding.shape[0]


# The paper's fusion block: the last block of the original ImageNet ViT-B/16 (the reference code's
# jx_vit_base_p16_224-80ecf9dd.pth, which timm serves under this tag).
FUSION_VIT = "vit_base_patch16_224.orig_in21k_ft_in1k"


def _vit_b16_fusion(weights: str | None) -> tuple[nn.Module, nn.Module, int]:
    """The last block and final norm of the ImageNet ViT-B/16 (width 768).

    ``weights``: "pretrained" or "hf-hub:ORG/NAME" (timm's loader and the Hugging Face cache, as a backbone's
    weights: offline, a one-line error with the download hint), or a local timm ``vit_base_patch16_224``
    file, of which only the last block and the final norm are read; None: random (counting and tests only).
    """
    import timm

    from parlab.models.backbones import create_backbone
    from parlab.models.weights import PRETRAINED, is_hub_id

    if weights == PRETRAINED or is_hub_id(weights):
        vit = create_backbone(FUSION_VIT, weights)
        return _FrozenBlock(vit.blocks[-1], ("norm1", "norm2")), vit.norm, vit.embed_dim
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    if weights is None:
        warnings.warn("fusion='vit_b16' without fusion_weights: a random block (counting and tests only)",
                      stacklevel=3)
    else:
        source = Path(weights)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: ImageNet ViT-B/16 weights for the fusion block not found (timm's "
                                    "vit_base_patch16_224 as .safetensors or .pth); a local path never downloads: "
                                    "fusion_weights='pretrained' loads them through timm and the Hugging Face cache")
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(source))
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        last = len(vit.blocks) - 1
        wanted = {k: v for k, v in state.items() if k.startswith((f"blocks.{last}.", "norm."))}
        if not wanted:
            raise ValueError(f"{source}: no blocks.{last}.* / norm.* weights; expected a timm vit_base_patch16_224 "
                             "state dict")
        missing = vit.load_state_dict(wanted, strict=False).missing_keys
        lacking = [k for k in missing if k.startswith((f"blocks.{last}.", "norm."))]
        if lacking:
            raise ValueError(f"{source}: missing {', '.join(lacking[:4])}")
    return _FrozenBlock(vit.blocks[-1], ("norm1", "norm2")), vit.norm, vit.embed_dim


def first_tokens(block: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``block(x)[:, :n]`` (B, n, F) from tokens x (B, L, F), computing only what those n outputs need.

    In one pre-norm transformer block the first n outputs read every token as a key and a value but only
    their own queries, attention output and MLP; the fusion reads only its A sentence tokens of A + L, so the
    other L queries and MLP rows (most of the block) are skipped. ``block``: an open_clip
    ``ResidualAttentionBlock`` or a timm ``Block`` (bare or in a :class:`_FrozenBlock`).
    """
    block = block.block if isinstance(block, _FrozenBlock) else block
    if hasattr(block, "ln_1"):  # open_clip
        return residual_block(block, x, queries=n)
    attn = block.attn  # timm: its fused qkv Linear split into the query rows and the key and value rows
    if getattr(attn, "gate", None) is not None:
        raise ValueError("a gated timm attention is not supported as the PromptPAR fusion block")
    h = block.norm1(x)
    (b, length, _), heads, dim = h.shape, attn.num_heads, attn.num_heads * attn.head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :n], weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(h, weight[dim:], None if bias is None else bias[dim:])
    q = attn.q_norm(q.view(b, n, heads, -1).transpose(1, 2))
    k, v = kv.view(b, length, 2, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, attn.k_norm(k), v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(b, n, dim))))
    y = x[:, :n] + block.drop_path1(block.ls1(o))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


class _FrozenBlock(nn.Module):
    """A transformer block (B, L, F) -> (B, L, F) whose only trainable parts are its LayerNorms."""

    def __init__(self, block: nn.Module, norms: tuple[str, ...]) -> None:
        super().__init__()
        self.block = block.requires_grad_(False)
        for name in norms:
            getattr(block, name).requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _trainable_fusion(width: int) -> tuple[nn.Module, nn.Module, int]:
    from timm.models.vision_transformer import Block

    return Block(width, num_heads=max(1, width // 64)), nn.LayerNorm(width), width


def build_model(config: PromptPARConfig, device: str | torch.device = "cpu") -> PromptPAR:
    """PromptPAR for ``config`` on open_clip's ``config.clip_model`` with weights from ``config.weights``.

    ``weights=None`` builds random CLIP weights, with a warning: for counting parameters and tests.
    """
    if config.weights is not None and not config.attribute_sentences:
        raise ValueError("PromptPARConfig.attribute_sentences is empty: give one sentence per attribute "
                         "(a dataset's Annotations.sentences)")
    clip = create_clip(config.clip_model, config.weights, image_size=config.image_size)
    clip.eval()
    if not config.use_mm_former:
        block, norm, width = None, None, clip.visual.output_dim
    elif config.fusion == "clip_block":
        block, norm, width = _clip_fusion(clip)
    elif config.fusion == "vit_b16":
        block, norm, width = _vit_b16_fusion(config.fusion_weights)
    else:
        block, norm, width = _trainable_fusion(clip.visual.output_dim)
    if norm is not None:
        norm.requires_grad_(True)  # the fusion LayerNorms are trained, as in the paper
    model = PromptPAR(config, clip, block, norm, width)
    return model.to(device)
