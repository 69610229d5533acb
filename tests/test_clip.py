"""CLIP through open_clip: parlab's registered architecture, local weights only, parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from parlab.models import clip_models, count_parameters, create_clip
from parlab.models.clip import CONFIG_DIR, clip_tokenizer, encode_text_by_length, residual_block


def test_tiny_clip_is_registered_and_runs_on_64x32_images():
    assert {"parlab-clip-tiny", "ViT-L-14-quickgelu", "ViT-B-16-quickgelu"} <= set(clip_models())
    with pytest.warns(UserWarning, match="random weights"):
        model = create_clip("parlab-clip-tiny", None)
    assert tuple(model.visual.grid_size) == (8, 4)
    assert model.encode_image(torch.randn(2, 3, 64, 32)).shape == (2, 128)


def test_weights_round_trip_through_a_local_file(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-tiny", None).eval()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded = create_clip("parlab-clip-tiny", path).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), loaded.encode_image(x))


def test_missing_weights_and_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_clip("ViT-B-16-quickgelu", tmp_path / "absent.bin")
    with pytest.raises(ValueError, match="close: .*ViT-B-16-quickgelu"):
        create_clip("ViT-B-16-quickgel", None)


def test_count_parameters_counts_trainable_and_shared_once():
    shared = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(shared, torch.nn.Linear(4, 2), shared)
    model[1].requires_grad_(False)
    assert count_parameters(model) == (20, 30)


def test_square_weights_load_at_a_non_square_size_with_interpolated_positions(tmp_path):
    import json

    import open_clip

    config = json.loads((CONFIG_DIR / "parlab-clip-tiny.json").read_text())
    config["vision_cfg"]["image_size"] = 32  # a square 4x4 grid, as real CLIP weights have (16x16, 14x14)
    (tmp_path / "parlab-test-square.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "parlab-test-square.json")
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        square = create_clip("parlab-test-square", None)
    path = tmp_path / "square.pt"
    torch.save(square.state_dict(), path)
    tall = create_clip("parlab-test-square", path, image_size=(64, 48))  # like 256x192: 8x6 patches
    assert tuple(tall.visual.grid_size) == (8, 6)
    assert tall.visual.positional_embedding.shape == (1 + 8 * 6, 128)
    assert torch.equal(tall.visual.positional_embedding[0], square.visual.positional_embedding[0])  # class token
    assert tall.encode_image(torch.randn(1, 3, 64, 48)).shape == (1, 128)


def _tiny_file(tmp_path, image_size=None, suffix=".pt"):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-tiny", None, image_size=image_size).eval()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return model, path


def _interpolated(positions: torch.Tensor, grid, new_grid) -> torch.Tensor:
    image = positions[1:].reshape(1, *grid, -1).permute(0, 3, 1, 2)
    image = torch.nn.functional.interpolate(image, size=new_grid, mode="bicubic", antialias=True,
                                            align_corners=False)
    return torch.cat([positions[:1], image.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("size", [(128, 64), (96, 48), (64, 64)])
def test_non_square_weights_load_at_other_sizes(tmp_path, suffix, size):
    source, path = _tiny_file(tmp_path, suffix=suffix)  # trained at 64x32: an 8x4 grid
    loaded = create_clip("parlab-clip-tiny", path, image_size=size).eval()
    grid = (size[0] // 8, size[1] // 8)
    assert tuple(loaded.visual.grid_size) == grid and tuple(loaded.visual.image_size) == size
    positions = loaded.visual.positional_embedding
    assert positions.shape == (1 + grid[0] * grid[1], 128)
    # Interpolated from the weights' own 8x4 grid (open_clip would have taken 32 positions for a square).
    expected = _interpolated(source.visual.positional_embedding.detach(), (8, 4), grid)
    assert torch.allclose(positions, expected, atol=1e-6)
    assert torch.equal(positions[0], source.visual.positional_embedding[0])
    others = {k: v for k, v in loaded.state_dict().items() if k != "visual.positional_embedding"}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in others.items())
    with torch.no_grad():
        assert loaded.encode_image(torch.randn(1, 3, *size)).shape == (1, 128)


@pytest.mark.parametrize("size", [None, (64, 32)])
def test_loading_at_the_weights_own_size_is_bit_identical(tmp_path, size):
    source, path = _tiny_file(tmp_path)
    loaded = create_clip("parlab-clip-tiny", path, image_size=size)
    state = loaded.state_dict()
    assert state.keys() == source.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in source.state_dict().items())


def test_weights_at_an_unconfigured_non_square_size_load_back_at_the_configured_one(tmp_path):
    source, path = _tiny_file(tmp_path, image_size=(128, 64))  # a 16x8 grid: 128 positions, no square
    loaded = create_clip("parlab-clip-tiny", path, image_size=(64, 32))
    assert loaded.visual.positional_embedding.shape == (1 + 8 * 4, 128)
    expected = _interpolated(source.visual.positional_embedding.detach(), (16, 8), (8, 4))
    assert torch.allclose(loaded.visual.positional_embedding, expected, atol=1e-6)
    same = create_clip("parlab-clip-tiny", path, image_size=(128, 64))
    assert torch.equal(same.visual.positional_embedding, source.visual.positional_embedding)


def test_the_grid_of_the_weights():
    from parlab.models.clip import weights_grid

    assert weights_grid(1 + 32, (8, 4)) == (8, 4)  # the configured grid
    assert weights_grid(1 + 128, (8, 4)) == (16, 8)  # its aspect ratio
    assert weights_grid(1 + 72, (8, 4)) == (12, 6)
    assert weights_grid(1 + 256, (8, 4)) == (16, 16)  # no 2:1 grid has 256 patches: a square
    assert weights_grid(1 + 256, (16, 16)) == (16, 16)
    assert weights_grid(1 + 196, (16, 16)) == (14, 14)
    assert weights_grid(1 + 30, (8, 4)) is None
    assert weights_grid(1 + 32, (4, 8), (8, 4)) == (4, 8)  # the first grid given (a hub config's) wins


def test_the_hybrid_clip_has_a_conv_stem_that_saves_and_loads_at_other_sizes(tmp_path):
    from parlab.models.clip_stem import ChannelNorm

    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-hybrid", None).eval()
    stem = model.visual.conv1
    assert isinstance(stem, torch.nn.Sequential) and not any(isinstance(m, torch.nn.BatchNorm2d) for m in stem)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stem) == 3 and any(isinstance(m, ChannelNorm) for m in stem)
    with torch.no_grad():
        assert stem(torch.randn(2, 3, 64, 32)).shape == (2, 128, 8, 4)  # the 8x4 grid of patch 8
    path = tmp_path / "hybrid.pt"
    torch.save(model.state_dict(), path)
    same = create_clip("parlab-clip-hybrid", path).eval()
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 128, 64)
    larger = create_clip("parlab-clip-hybrid", path, image_size=(128, 64)).eval()
    assert tuple(larger.visual.grid_size) == (16, 8)
    assert torch.equal(larger.visual.conv1[0].weight, stem[0].weight)
    with torch.no_grad():
        assert larger.encode_image(x).shape == (2, 128)


def test_a_stem_must_make_the_configured_patch():
    from parlab.models.clip_stem import conv_stem

    with pytest.raises(ValueError, match="8-pixel patches, not 16"):
        conv_stem(64, 16, [16, 32])


def test_texts_encoded_up_to_their_end_of_text_token_equal_the_whole_context_with_their_gradients():
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-tiny", None).eval()
    texts = ["a man", "a woman carrying a backpack and wearing a hat, not a skirt", "a child", "a man in a long coat",
             "a person", "a woman without a hat who carries nothing in her hands and wears trousers"]
    tokens = clip_tokenizer("parlab-clip-tiny")(texts)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # the context is longer than every text
    cut = encode_text_by_length(model, tokens, normalize=True, groups=3)
    whole = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(whole)
    grads = [torch.autograd.grad((f * weights).sum(), model.token_embedding.weight)[0] for f in (cut, whole)]
    # float32 sums in another order: an error relative to the gradient's scale (max |g| is about 37 here), which
    # a gradient lost or doubled for some token (differences of the gradients' own size) still far exceeds.
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-6 * float(grads[1].abs().max()))
    model.attn_mask = None  # a tower without its causal mask sees the padding: the whole context
    assert torch.equal(encode_text_by_length(model, tokens), model.encode_text(tokens))


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_a_residual_block_run_batch_first_equals_the_block_with_its_gradients(tower):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-hybrid", None, image_size=(64, 32))
    blocks = (model.visual.transformer if tower == "visual" else model.transformer).resblocks
    x = torch.randn(5, 12, blocks[0].ln_1.normalized_shape[0], requires_grad=True)
    # The text tower's causal mask; for the visual one an additive mask like PromptPAR's region mask.
    mask = model.attn_mask[:12, :12] if tower == "text" else torch.where(torch.rand(12, 12) < 0.3, -torch.inf, 0.0)
    mask.fill_diagonal_(0.0)
    weights = torch.randn(5, 12, x.shape[-1])
    outputs, grads = [], []
    for run in (lambda b, h: b(h, attn_mask=mask), lambda b, h: residual_block(b, h, mask)):
        h = x
        for block in blocks:
            h = run(block, h)
        outputs.append(h)
        grads.append(torch.autograd.grad((h * weights).sum(), [x, *blocks.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):  # weight gradients sum the batch in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The first n outputs alone, and a boolean mask (True = masked for nn.MultiheadAttention, the opposite for
    # scaled_dot_product_attention) left to the block's own attention.
    block = blocks[0]
    torch.testing.assert_close(residual_block(block, x, mask, queries=4), block(x, attn_mask=mask)[:, :4],
                               rtol=1e-5, atol=1e-6)
    masked = torch.isinf(mask)
    torch.testing.assert_close(residual_block(block, x, masked), block(x, attn_mask=masked), rtol=1e-5, atol=1e-6)
    # A hooked block (Grad-CAM's target layer, attention maps) runs as itself, so that its hooks see it.
    seen = []
    handle = block.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    residual_block(block, x, mask)
    handle.remove()
    assert seen == [x.shape]



def test_the_batch_first_path_covers_biases_and_layer_scale_without_the_blocks_own_attention():
    from unittest import mock

    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4, ls_init_value=0.5, batch_first=True)
    with torch.no_grad():
        for p in block.parameters():  # no zero biases or unit gains left to hide a slip
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, 10, 32)
    mask = torch.where(torch.rand(10, 10) < 0.3, -torch.inf, 0.0).fill_diagonal_(0.0)
    want, first = block(x, attn_mask=mask), block(x, attn_mask=mask)[:, :4]
    with mock.patch.object(torch.nn.MultiheadAttention, "forward", side_effect=AssertionError("not batch-first")):
        got, got_first = residual_block(block, x, mask), residual_block(block, x, mask, queries=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_first, first, rtol=1e-5, atol=1e-6)
    # A hook on the attention module: the block runs as itself, queries included, and the hook sees it.
    calls = []
    handle = block.attn.register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(residual_block(block, x, mask, queries=4), first, rtol=1e-5, atol=1e-6)
    handle.remove()
    assert calls == [1]


def test_a_clip_image_tower_fine_tuned_under_a_par_head_trains_and_reads_back(synthpa_root, tmp_path):
    from parlab.inference import load_model, predict
    from parlab.runs import open_run
    from parlab.training import BaselineConfig, DataConfig, RunFields, train
    from parlab.visualisation import attribute_cams

    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        clip = create_clip("parlab-clip-tiny", None)
    weights = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), weights)
    out = tmp_path / "run"
    result = train(RunFields(epochs=1, batch_size=32, device="cpu", output_dir=str(out)),
                   DataConfig(root=str(synthpa_root), image_size=(64, 32), transform="clip"),
                   BaselineConfig(backbone="clip:parlab-clip-tiny", weights=str(weights)),
                   progress=False, log=lambda _: None)
    tower = create_clip("parlab-clip-tiny", weights).visual
    loaded = load_model(out / "best.pt")
    tower_size = count_parameters(tower)[1]
    assert count_parameters(loaded.model) == (tower_size + 128 * 26 + 26,) * 2  # every weight of the tower trains
    moved = [n for n, p in tower.state_dict().items() if not torch.equal(p, loaded.model.backbone.visual.state_dict()[n])]
    assert moved  # fine-tuned, not frozen
    run = open_run(out, device="cpu")
    assert run.method.backbone == "clip:parlab-clip-tiny" and run.test.summary() == result.test.summary()
    assert json.loads((out / "config.json").read_text())["method"]["weights"] == str(weights)
    images = [synthpa_root / "data" / name for name in sorted(p.name for p in (synthpa_root / "data").iterdir())[:2]]
    assert predict(loaded, images).shape[0] == 2
    assert attribute_cams(loaded.model, torch.randn(2, 3, 64, 32), [0]).shape == (2, 1, 64, 32)
