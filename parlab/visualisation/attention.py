"""Where attention goes: PromptPAR's class and part tokens, and attention rollout for ViT backbones.

The attention weights are recomputed from the last visual block's input
(open_clip's blocks do not return them): the block's own LayerNorm and
projections, PromptPAR's region mask, softmax, mean over heads. Rows of the
part tokens are zero outside their band by construction when the mask is on,
which the figure shows next to the bands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parlab.methods.promptpar.model import PromptPAR
from parlab.models import PARModel


@torch.no_grad()
def token_attention(model: PromptPAR, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Attention of CLS and of each part token over the patches in one visual block.

    Args:
        images: (B, 3, H, W) as PromptPAR's evaluation transform makes them.
        layer: which block (default the last).

    Returns:
        (B, 1 + K, rows, cols): row 0 is CLS, row k is part token k (K = regions, 0 without use_div);
        each row sums to at most 1 over the patches (the rest goes to prompts and other tokens).
    """
    model.eval()
    blocks = model.clip.visual.transformer.resblocks
    block = blocks[layer]
    captured = {}

    def keep_input(_module, args, _kwargs) -> None:
        captured["x"] = args[0]

    hook = block.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        model.visual_tokens(images)
    finally:
        hook.remove()
    x = block.ln_1(captured["x"])  # (B, L, W), batch first
    attn = block.attn
    b, length, width = x.shape
    heads = attn.num_heads
    q, k, _ = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q = q.reshape(b, length, heads, -1).transpose(1, 2)
    k = k.reshape(b, length, heads, -1).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / (width // heads) ** 0.5  # (B, heads, L, L)
    if model.attn_mask is not None:
        scores = scores + model.attn_mask.to(scores.dtype)
    weights = scores.softmax(dim=-1).mean(dim=1)  # (B, L, L)
    layout = model.layout
    rows = [0] + [layout.part_token(j) for j in range(layout.regions)]
    return weights[:, rows, layout.patches].reshape(b, len(rows), *layout.grid)


@torch.no_grad()
def attention_rollout(model: PARModel, images: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020) of a timm ViT backbone: what the class token draws
    on from each patch through all blocks.

    Each block's attention (mean over heads) is recomputed from the block's attention input, mixed
    with the identity for the residual connection (``residual``), row-normalised, and the blocks'
    matrices are multiplied in order.

    Returns:
        (B, rows, cols): the class token's row over the patches, on the backbone's patch grid.
    """
    backbone = model.backbone
    if not (hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed")):
        raise ValueError("attention rollout needs a ViT backbone (timm VisionTransformer)")
    model.eval()
    inputs = []

    def keep_input(_module, args) -> None:
        inputs.append(args[0])

    hooks = [block.attn.register_forward_pre_hook(keep_input) for block in backbone.blocks]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    rollout = None
    for block, x in zip(backbone.blocks, inputs):
        attn = block.attn
        b, n, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)  # (B, N, N)
        mixed = residual * torch.eye(n, device=x.device) + (1 - residual) * weights
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    rows, cols = backbone.patch_embed.grid_size
    return rollout[:, 0, prefix:prefix + rows * cols].reshape(len(images), rows, cols)
