"""PromptPAR against the paper and the reference code: deep per-attribute text prompts, the CLIP's own logit scale
in the global-local branch, the linear fusion over the token axis, the optimiser groups and their clipping, part
tokens through ln_pre."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from promptpar_models import TINY, A, tiny

from parlab.errors import ConfigError
from parlab.methods.promptpar import PromptPARConfig
from parlab.methods.promptpar.training import GroupGradClip, PromptPARTask
from parlab.models import count_parameters
from parlab.training.config import DataConfig, RunFields

TEXT_LAYERS, TEXT_WIDTH = 4, 64  # parlab-clip-tiny's text tower


# --- 1. deep, per-attribute text prompts

def test_text_prompts_are_deep_and_per_attribute_by_default():
    model = tiny()
    assert TINY.text_prompt_depth is None  # every layer of the text tower
    assert model.text_prompts.shape == (TEXT_LAYERS, A, 2, TEXT_WIDTH)
    assert tiny(text_prompt_depth=2).text_prompts.shape == (2, A, 2, TEXT_WIDTH)
    for shallow in (0, 1):  # one set shared by all attributes, at the input only
        assert tiny(text_prompt_depth=shallow).text_prompts.shape == (2, TEXT_WIDTH)


def test_text_prompt_depth_is_checked():
    with pytest.raises(ValueError, match="text_prompt_depth 5 exceeds the 4 text layers"):
        tiny(text_prompt_depth=5)
    with pytest.raises(ConfigError, match="text_prompt_depth"):
        replace(TINY, text_prompt_depth=-1)
    assert PromptPARConfig.from_dict({"text_prompt_depth": "12"}).text_prompt_depth == 12


def test_every_layers_text_prompts_get_gradients_and_change_the_logits():
    model = tiny(use_GL=False).eval()
    x = torch.randn(2, 3, 64, 32)
    out = model(x)
    out.sum().backward()
    grad = model.text_prompts.grad
    assert all(grad[layer].abs().sum() > 0 for layer in range(TEXT_LAYERS))
    for layer in range(TEXT_LAYERS):
        with torch.no_grad():
            saved = model.text_prompts[layer].clone()
            model.text_prompts[layer].add_(0.5 * torch.randn_like(saved))
            assert not torch.allclose(model(x), out, atol=1e-5), layer
            model.text_prompts[layer].copy_(saved)
    assert model.text_cache is None


def test_deep_text_prompts_replace_their_positions_after_the_start_token_at_each_layer():
    model = tiny().eval()
    seen = []
    # A block's input is what its first LayerNorm reads.
    hooks = [block.ln_1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
             for block in model.clip.transformer.resblocks]
    with torch.no_grad():
        model.text_features()
    for h in hooks:
        h.remove()
    prompts, start = model.text_prompts, model.clip.token_embedding(model.sentence_tokens[:, :1])
    position = model.clip.positional_embedding
    assert torch.allclose(seen[0][:, 1:3], prompts[0] + position[1:3])  # the input, with its positions
    assert torch.allclose(seen[0][:, :1], start + position[:1])  # the start token stays first
    for layer in range(1, TEXT_LAYERS):
        assert torch.equal(seen[layer][:, 1:3], prompts[layer])  # VPT-deep: the hidden states replaced


def test_changing_attribute_js_prompts_changes_only_attribute_js_text_feature():
    model = tiny().eval()
    with torch.no_grad():
        before = model.text_features()
        model.text_prompts[:, 2].add_(0.5 * torch.randn_like(model.text_prompts[:, 2]))
        after = model.text_features()
    others = [i for i in range(A) if i != 2]
    assert torch.allclose(before[others], after[others], atol=1e-6)
    assert not torch.allclose(before[2], after[2], atol=1e-4)


def test_shallow_text_prompts_are_shared_by_all_attributes():
    model = tiny(text_prompt_depth=1).eval()
    with torch.no_grad():
        before = model.text_features()
        model.text_prompts.add_(0.5 * torch.randn_like(model.text_prompts))
        change = (model.text_features() - before).abs().amax(dim=-1)
    assert (change > 1e-4).all()  # every attribute's feature moves


def test_sentence_features_stay_cached_without_trained_text_prompts():
    for changes in ({"use_textprompt": False}, {"text_prompt": 0}):
        model = tiny(**changes)
        assert model.text_prompts is None and model.text_cache is not None
        assert torch.equal(model.text_features(), model._encode_text().detach())


def test_trained_count_is_the_deep_text_prompts_plus_the_rest():
    rest, total_without = count_parameters(tiny(use_textprompt=False))
    for depth in (None, 2, 0, 1):
        trainable, total = count_parameters(tiny(text_prompt_depth=depth))
        layers = TEXT_LAYERS if depth is None else depth
        per_set = 2 * TEXT_WIDTH * (A if layers > 1 else 1)  # text_prompt x width (x A when deep)
        assert trainable == max(layers, 1) * per_set + rest, depth
        assert total == total_without + trainable - rest


# --- 2. the global-local similarity uses the CLIP's logit scale

def _aggregate_by_hand(model, tokens, text, scale):
    layout = model.layout
    picks = [0] + [layout.part_token(k) for k in range(layout.regions)]
    sim = scale * F.normalize(tokens[:, picks], dim=-1) @ F.normalize(text, dim=-1).T
    prob = torch.softmax(sim / model.temperature, dim=-1)
    glob, parts = prob[:, 0], prob[:, 1:]
    high, low = parts.max(dim=1).values, parts.min(dim=1).values
    local = torch.where(high > model.config.ag_threshold, high, low)
    return model.aux_bn((local + glob) / 2)


def test_global_local_logits_use_the_clips_logit_scale():
    model = tiny().eval()
    tokens, text = torch.randn(3, model.layout.length, 128), torch.randn(A, 128)
    results = {}
    with torch.no_grad():
        for scale in (5.0, 50.0):
            model.clip.logit_scale.fill_(math.log(scale))
            results[scale] = model.aggregate(tokens, text)
            assert torch.allclose(results[scale], _aggregate_by_hand(model, tokens, text, scale), atol=1e-6)
        assert not torch.allclose(results[5.0], results[50.0], atol=1e-3)
        model.clip.logit_scale.fill_(math.log(100.0))  # OpenAI's weights: the paper's x100
        assert torch.allclose(model.aggregate(tokens, text), _aggregate_by_hand(model, tokens, text, 100.0),
                              atol=1e-6)


# --- 3. the linear fusion alternative

def test_linear_fusion_mixes_all_fused_tokens_along_the_token_axis_and_trains():
    model = tiny(use_mm_former=False)
    length = model.layout.length
    assert model.fusion_block is None
    assert (model.fusion_linear.in_features, model.fusion_linear.out_features) == (A + length, A)
    tokens, text = torch.randn(2, length, 128), torch.randn(A, 128)
    model.eval()
    with torch.no_grad():
        out = model.fuse(tokens, text)
        moved = tokens.clone()
        moved[:, 5] += 1.0  # a patch token, not CLS
        assert out.shape == (2, A) and not torch.allclose(model.fuse(moved, text), out, atol=1e-5)
    model.train()
    logits, aux = model(torch.randn(3, 3, 64, 32))
    (logits.sum() + aux.sum()).backward()
    assert model.fusion_linear.weight.grad is not None and model.fusion_linear.weight.grad.abs().sum() > 0
    assert model.fusion_linear.weight.requires_grad and "fusion_linear.weight" in model.trained_state_dict()


# --- 4. optimiser groups and per-group clipping

def test_global_local_batchnorm_and_temperature_train_in_the_prompt_group():
    model = tiny()
    task = PromptPARTask(RunFields(epochs=2), DataConfig(image_size=(64, 32)), TINY)  # the paper's optimisation
    optimizer, _, _ = task.optimizer_and_schedule(model, steps_per_epoch=1)
    names = {id(p): n for n, p in model.named_parameters()}
    heads, prompts = ({names[id(p)] for p in g["params"]} for g in optimizer.param_groups)
    assert prompts == {"prompts", "part_tokens", "text_prompts", "aux_bn.weight", "aux_bn.bias", "temperature"}
    assert {"head_weight", "head_bias", "bn.weight", "bn.bias", "word_embed.weight", "vis_embed.bias",
            "fusion_norm.weight"} <= heads
    assert heads | prompts == {n for n, p in model.named_parameters() if p.requires_grad}
    assert [g["initial_lr"] for g in optimizer.param_groups] == [8e-3, TINY.prompt_lr]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([8e-3 / 5, TINY.prompt_lr / 10])  # warm-ups


def test_each_group_is_clipped_on_its_own():
    model = tiny()
    run, data = RunFields(epochs=2), DataConfig(image_size=(64, 32))
    task = PromptPARTask(run, data, replace(TINY, grad_clip=1.0))
    assert task.grad_clip == 0.0  # the engine's single clip over all parameters is off
    optimizer, _, _ = task.optimizer_and_schedule(model, steps_per_epoch=1)
    heads, prompts = (g["params"] for g in optimizer.param_groups)
    for p in heads:
        p.grad = torch.full_like(p, 10.0)  # far above the limit
    for p in prompts:
        p.grad = torch.full_like(p, 1e-4)
    small = [p.grad.clone() for p in prompts]
    optimizer.step()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in heads]))
    assert norm == pytest.approx(1.0, rel=1e-4)
    assert all(torch.equal(p.grad, g) for p, g in zip(prompts, small))  # a global clip would have shrunk them
    off = PromptPARTask(run, data, replace(TINY, grad_clip=0.0))
    optimizer, _, _ = off.optimizer_and_schedule(model, steps_per_epoch=1)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.full_like(p, 10.0)
    optimizer.step()
    assert all(bool((p.grad == 10.0).all()) for p in optimizer.param_groups[0]["params"])  # grad_clip=0: none


def test_group_clip_hook_clips_each_group():
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(9))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.0)
    optimizer.register_step_pre_hook(GroupGradClip(2.0))
    a.grad, b.grad = torch.full((4,), 3.0), torch.full((9,), 0.1)
    optimizer.step()
    assert torch.linalg.vector_norm(a.grad) == pytest.approx(2.0, rel=1e-5)
    assert torch.equal(b.grad, torch.full((9,), 0.1))


# --- 5. part tokens through ln_pre

def _first_block_input(model, images):
    seen = []
    hook = model.clip.visual.transformer.resblocks[0].ln_1.register_forward_pre_hook(  # the block's input
        lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model.visual_tokens(images)
    hook.remove()
    return seen[0]


def test_part_tokens_pass_through_ln_pre():
    model = tiny().eval()
    ln_pre = model.clip.visual.ln_pre
    with torch.no_grad():
        ln_pre.weight.copy_(1.0 + torch.rand_like(ln_pre.weight))
        ln_pre.bias.copy_(torch.randn_like(ln_pre.bias))
    x = torch.randn(2, 3, 64, 32)
    first = _first_block_input(model, x)
    layout = model.layout
    for k in range(layout.regions):
        expected = ln_pre(model.part_tokens[k]).detach()
        assert torch.allclose(first[:, layout.part_token(k)], expected.expand(2, -1), atol=1e-6)
    with torch.no_grad():
        model.part_tokens.mul_(3.0)  # LayerNorm takes out a token's scale
    assert torch.allclose(_first_block_input(model, x), first, atol=1e-2)  # ~0.2 apart without ln_pre
