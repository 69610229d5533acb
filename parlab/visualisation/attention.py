"""Where PromptPAR's tokens look: attention of the class token and of each region's part token.

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
