"""PromptPAR on open_clip: switches, band layout, masks, what trains, text prompts, checkpoints."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import replace

import pytest
import torch
from promptpar_models import TINY, tiny

from parlab.methods.promptpar import PromptPARConfig, build_model
from parlab.methods.promptpar.model import first_tokens
from parlab.methods.promptpar.regions import band_rows
from parlab.methods.promptpar.training import PromptPARTask
from parlab.models import clip as clip_module
from parlab.models import count_parameters, create_clip
from parlab.models.clip import residual_block
from parlab.training.checkpoint import CheckpointError
from parlab.training.config import DataConfig, RunFields


def _switches():
    for div, mask in ((False, False), (True, False), (True, True)):
        for gl, mm, text in itertools.product((False, True), repeat=3):
            yield {"use_div": div, "use_vismask": mask, "use_GL": gl, "use_mm_former": mm, "use_textprompt": text}


@pytest.mark.parametrize("switches", list(_switches()), ids=lambda s: "-".join(k for k, v in s.items() if v) or "none")
def test_every_switch_combination_gives_logits_of_the_right_shape(switches):
    model = tiny(**switches)
    x = torch.randn(3, 3, 64, 32)
    model.train()
    out = model(x)
    if switches["use_GL"]:
        assert isinstance(out, tuple) and [o.shape for o in out] == [(3, 5), (3, 5)]
    else:
        assert out.shape == (3, 5)
    model.eval()
    assert model(x).shape == (3, 5)
    regions = 4 if switches["use_div"] else 0
    assert model.visual_tokens(x).shape == (3, 1 + 8 * 4 + 10 + regions, 128)


@pytest.mark.parametrize("fusion", ["clip_block", "trainable", "vit_b16"])
def test_fusion_options(fusion):
    model = tiny(fusion=fusion)
    model.eval()
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 5)
    fusion_params = dict(model.fusion_block.named_parameters())
    trainable = {n for n, p in fusion_params.items() if p.requires_grad}
    if fusion == "trainable":
        assert trainable == set(fusion_params)
    else:  # frozen block, trained LayerNorms
        assert trainable and all("norm" in n or "ln_" in n for n in trainable)
        assert len(trainable) < len(fusion_params)


@pytest.mark.parametrize("fusion", ["clip_block", "trainable", "vit_b16"])
def test_the_fusion_computes_only_its_sentence_tokens_and_equals_the_whole_block(fusion):
    model = tiny(fusion=fusion).eval()
    block, width = model.fusion_block, model.head_weight.shape[1]
    x = torch.randn(2, 5 + 9, width, requires_grad=True)
    got = first_tokens(block, x, 5)
    want = block(x)[:, :5]
    assert got.shape == (2, 5, width)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(got)
    norms = [p for n, p in block.named_parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad((got * weights).sum(), [x, *norms]),
                    torch.autograd.grad((want * weights).sum(), [x, *norms]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size,grid", [((112, 112), (14, 14)), ((128, 128), (16, 16)), ((128, 96), (16, 12))])
def test_bands_come_from_the_actual_patch_grid(size, grid):
    model = tiny(image_size=size)
    assert model.layout.grid == grid
    assert model.bands == band_rows(grid[0], 4, 2)
    mask = model.attn_mask
    for k, (first, last) in enumerate(model.bands):
        row = mask[model.layout.part_token(k), model.layout.patches].view(grid)
        assert torch.isfinite(row[first:last + 1]).all()  # its band is visible
        outside = torch.cat([row[:first], row[last + 1:]])
        assert torch.isinf(outside).all()  # nothing else is
    assert model.eval()(torch.randn(1, 3, *size)).shape[-1] == 5


def test_part_token_ignores_patches_outside_its_band_in_a_masked_layer():
    model = tiny(vis_depth=1).eval()
    layout, (first, last) = model.layout, model.bands[0]
    block = model.clip.visual.transformer.resblocks[0]
    x = torch.randn(1, layout.length, 128)
    changed = x.clone()
    rows_outside = [r for r in range(layout.grid[0]) if not first <= r <= last]
    for r in rows_outside:
        start = 1 + r * layout.grid[1]
        changed[:, start:start + layout.grid[1]] += torch.randn(layout.grid[1], 128)
    with torch.no_grad():
        a, b = block(x, attn_mask=model.attn_mask), block(changed, attn_mask=model.attn_mask)
    part = layout.region(0)
    assert torch.allclose(a[:, part], b[:, part], atol=1e-5)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-3)  # CLS sees everything


def test_only_the_papers_parameters_train_and_frozen_ones_do_not_move():
    model = tiny()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("clip.") for n in trained)
    assert {"prompts", "part_tokens", "text_prompts", "temperature", "head_weight", "head_bias",
            "word_embed.weight", "vis_embed.weight", "bn.weight", "aux_bn.weight"} <= trained
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    task = PromptPARTask(RunFields(epochs=2), DataConfig(image_size=(64, 32)), TINY)
    optimizer, _, _ = task.optimizer_and_schedule(model, steps_per_epoch=1)
    model.train()
    logits, aux = model(torch.randn(4, 3, 64, 32))
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert not torch.equal(params["prompts"], before["prompts"])
    assert {len(g["params"]) for g in optimizer.param_groups} and len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["params"][0] is params["prompts"]


def test_text_prompts_learn_and_change_the_logits():
    model = tiny(use_GL=False).eval()
    x = torch.randn(2, 3, 64, 32)
    out = model(x)
    out.sum().backward()
    assert model.text_prompts.grad is not None and model.text_prompts.grad.abs().sum() > 0
    with torch.no_grad():
        # Random, not constant: a constant shift would vanish in LayerNorm.
        model.text_prompts.add_(0.5 * torch.randn_like(model.text_prompts))
        assert not torch.allclose(model(x), out)
    assert model.text_cache is None


def test_without_text_prompts_sentence_features_are_cached():
    model = tiny(use_textprompt=False)
    assert model.text_cache is not None and model.text_cache.shape == (5, 128)
    assert torch.equal(model.text_features(), model._encode_text().detach())


def test_local_similarity_is_computed_for_every_sample():
    model = tiny().eval()
    tokens, text = torch.randn(4, model.layout.length, 128), torch.randn(5, 128)
    with torch.no_grad():
        together = model.aggregate(tokens, text)
        alone = torch.cat([model.aggregate(tokens[i:i + 1], text) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


def test_global_token_is_cls_and_final_layernorm_comes_before_projection():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        tokens = model.visual_tokens(x)
        # Without prompts, CLS after LayerNorm and projection is exactly CLIP's own image embedding.
        plain = tiny(vis_prompt=0, use_div=False, use_vismask=False).eval()
        assert torch.allclose(plain.visual_tokens(x)[:, 0], plain.clip.encode_image(x), atol=1e-5)
        reference = tiny(ln_before_proj=False).eval()
        assert not torch.allclose(reference.visual_tokens(x)[:, 0], tokens[:, 0], atol=1e-3)


def _base_file(tmp_path, seed: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        clip = create_clip("parlab-clip-tiny", None)
    path = tmp_path / f"clip{seed}.pt"
    torch.save(clip.state_dict(), path)
    return path


def test_checkpoint_holds_only_trained_parameters_and_refuses_other_base_weights(tmp_path):
    base = _base_file(tmp_path, 0)
    task = PromptPARTask(RunFields(), DataConfig(image_size=(64, 32)), replace(TINY, weights=str(base)))
    model = task.build_model(5).eval()
    with torch.no_grad():
        model.head_bias.add_(1.0)
        model.prompts.mul_(2.0)
    state = task.state_dict(model)
    assert not any(k.startswith("clip.") for k in state)
    trainable, total = count_parameters(model)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == trainable
    ckpt = {"model": state} | task.checkpoint_fields()
    torch.save(ckpt, tmp_path / "best.pt")
    loaded = torch.load(tmp_path / "best.pt", weights_only=True)
    fresh = PromptPARTask.from_record(loaded, "best.pt").load_selected(loaded["model"], 5, "best.pt")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    other = _base_file(tmp_path, 1)
    with pytest.raises(CheckpointError, match="base CLIP weights"):
        PromptPARTask.from_record(loaded, "best.pt", clip_weights=str(other))
    with pytest.raises(ValueError, match="do not match"):
        fresh.load_trained_state_dict({k: v for k, v in state.items() if k != "prompts"}, "best.pt")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(replace(TINY, weights=str(tmp_path / "ViT-L-14.pt")))
    with pytest.raises(FileNotFoundError, match="fusion block"):
        tiny(fusion="vit_b16", fusion_weights=str(tmp_path / "vit_b16.safetensors"))


def test_vit_l14_trainable_count_is_the_papers():
    # The paper's setting: ImageNet ViT-B/16 fusion block, deep per-attribute text prompts at the 12 text layers.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        model = build_model(PromptPARConfig(num_attributes=26, fusion="vit_b16"))
    trainable, total = count_parameters(model)
    assert (trainable, total) == (3_157_635, 437_858_948)  # paper: 3.2 M, 0.75%
    assert 0.0070 < trainable / total < 0.0075, (trainable, total)
    assert model.text_prompts.shape == (12, 26, 3, 768)
    assert model.prompts.shape == (24, 50, 1024) and model.layout.grid == (16, 16)
    assert model.bands == [(0, 4), (3, 8), (7, 12), (11, 15)]


def test_prompts_written_in_place_equal_the_concatenated_sequence_with_their_gradients():
    # Reference: each layer's prompts spliced in by concatenating the sequence around them.
    def spliced(model, x):
        layout, blocks = model.layout, model.clip.visual.transformer.resblocks
        spans = [layout.global_slice] + [slice(layout.region(k).start + 1, layout.region(k).stop)
                                         for k in range(layout.regions)]
        for i, block in enumerate(blocks):
            if 0 < i < model.prompts.shape[0]:
                fresh, pieces, start, used = model.prompts[i].expand(len(x), -1, -1), [], 0, 0
                for s in spans:
                    pieces += [x[:, start:s.start], fresh[:, used:used + s.stop - s.start]]
                    used, start = used + s.stop - s.start, s.stop
                x = torch.cat([*pieces, x[:, start:]], dim=1)
            x = residual_block(block, x, model.attn_mask)  # as _blocks runs them (test_clip: same as block(x))
        return x

    model = tiny().train()
    x = torch.randn(3, model.layout.length, model.prompts.shape[-1])
    got = model._blocks(x)
    (grad,) = torch.autograd.grad(got.square().sum(), model.prompts)
    want = spliced(model, x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), model.prompts)
    assert torch.equal(got, want) and torch.equal(grad, want_grad)
    assert grad[1:].abs().sum() > 0  # the deep prompts get gradients


def test_sentence_features_cut_after_the_last_end_of_text_token_equal_the_whole_context(monkeypatch):
    plain = tiny(use_textprompt=False).eval()
    with torch.no_grad():  # without prompts: CLIP's own encode_text over its whole context
        assert torch.allclose(plain.text_features(), plain.clip.encode_text(plain.sentence_tokens), atol=1e-5)
    model = tiny().eval()
    cut = model._encode_text()
    assert int(model.sentence_tokens.argmax(-1).max()) + 1 + 2 < model.sentence_tokens.shape[1]  # it does cut
    # The whole context, by setting the mask aside (a mask of None is never cut) and giving it to each block.
    mask = model.clip.attn_mask
    monkeypatch.setattr(model.clip, "attn_mask", None)
    monkeypatch.setattr(clip_module, "residual_block", lambda block, x, _: residual_block(block, x, mask))
    whole = model._encode_text()
    assert torch.allclose(cut, whole, atol=1e-5)
