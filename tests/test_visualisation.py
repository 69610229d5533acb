"""CAMs per image and attribute for CNN, ViT and PromptPAR models; PromptPAR token attention; overlays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from parlab.methods.promptpar import PromptPARConfig, build_model as build_promptpar
from parlab.models import build_model
from parlab.visualisation import attribute_cams, cam_layer, overlay, token_attention


def _promptpar():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        return build_promptpar(PromptPARConfig(clip_model="parlab-clip-tiny", num_attributes=4, image_size=(64, 32),
                                               vis_prompt=10, vis_depth=4)).eval()


@pytest.mark.parametrize("backbone,head", [("test_resnet", "linear_bn"), ("test_resnet", "attribute"),
                                           ("test_vit", "linear_bn")])
def test_every_image_gets_its_own_target(backbone, head):
    torch.manual_seed(0)
    model = build_model(backbone, 4, head, image_size=(64, 32)).eval()
    images = torch.randn(3, 3, 64, 32)
    cams = attribute_cams(model, images, [0, 2])
    assert cams.shape == (3, 2, 64, 32) and cams.min() >= 0 and cams.max() <= 1
    # Each image's map in a batch is the map it gets alone: no image is left without a target
    # (a Grad-CAM map may legitimately be all zero when every weighted activation is negative).
    alone = np.concatenate([attribute_cams(model, images[i:i + 1], [0, 2]) for i in range(3)])
    np.testing.assert_allclose(cams, alone, atol=1e-5)
    assert (alone.max(axis=(2, 3)) > 0).any()


def test_attribute_heads_give_attribute_specific_maps():
    torch.manual_seed(0)
    model = build_model("test_resnet", 4, "attribute", image_size=(64, 32)).eval()
    cams = attribute_cams(model, torch.randn(2, 3, 64, 32), [0, 1, 3])
    assert not np.allclose(cams[:, 0], cams[:, 1])


def test_vit_tokens_are_laid_out_on_the_actual_grid():
    model = build_model("test_vit", 4, "linear_bn", image_size=(64, 32)).eval()
    layer = cam_layer(model)
    tokens = torch.randn(2, model.backbone.num_prefix_tokens + 4 * 2, 7)
    maps = layer.reshape(tokens)
    assert maps.shape == (2, 7, 4, 2)
    assert torch.equal(maps[:, :, 0, 1], tokens[:, model.backbone.num_prefix_tokens + 1])


def test_promptpar_cams_use_patch_tokens_only():
    model = _promptpar()
    layer = cam_layer(model)
    tokens = torch.arange(model.layout.length, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 3)
    maps = layer.reshape(tokens)
    assert maps.shape == (2, 3, 8, 4)
    assert maps.min() == 1 and maps.max() == 32  # patches 1..32: neither CLS (0) nor prompts/part tokens
    cams = attribute_cams(model, torch.randn(2, 3, 64, 32), [1, 3])
    assert cams.shape == (2, 2, 64, 32) and np.isfinite(cams).all()


def test_part_tokens_attend_only_inside_their_band():
    model = _promptpar()
    attention = token_attention(model, torch.randn(2, 3, 64, 32))
    assert attention.shape == (2, 1 + 4, 8, 4)
    for k, (first, last) in enumerate(model.bands):
        row = attention[:, 1 + k]
        inside = row[:, first:last + 1]
        outside = torch.cat([row[:, :first], row[:, last + 1:]], dim=1)
        assert inside.sum() > 0 and outside.abs().sum() == 0
    total = attention.sum(dim=(2, 3))
    assert (total > 0).all() and (total <= 1 + 1e-5).all()


def test_overlay_keeps_the_original_image_size():
    image = Image.new("RGB", (64, 128), (200, 10, 10))  # width 64, height 128
    heat = np.zeros((64, 32), dtype=np.float32)
    heat[:32] = 1.0  # the upper half of the model input
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == (128, 64, 3) and out.dtype == np.uint8
    assert Image.fromarray(out).size == image.size  # a PIL image as it is, no conversion
    assert not np.allclose(out[10, 30], out[120, 30])  # the hot half differs from the cold half


def test_a_letterboxed_map_is_laid_on_the_image_without_its_black_bars():
    image = Image.new("RGB", (32, 64), (200, 10, 10))  # width 32, height 64: bars of 16 columns each side
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:, :12] = 1.0  # hot only over the left bar of the square
    cold = overlay(image, np.zeros_like(heat))
    np.testing.assert_array_equal(overlay(image, heat, letterboxed=True), cold)
    assert not np.array_equal(overlay(image, heat), cold)  # stretched, the bar's heat lands on the image


def test_strongest_channels_are_sorted_and_frdl_features_match_the_head():
    from parlab.visualisation import attribute_features, pca_2d, strongest_channels

    torch.manual_seed(0)
    model = build_model("test_resnet", 4, "attribute", image_size=(64, 32)).eval()
    image = torch.randn(1, 3, 64, 32)
    layer = cam_layer(model).layer
    maps, channels = strongest_channels(model, image, layer, k=3)
    means = maps.mean(axis=(1, 2))
    assert maps.shape[0] == 3 and list(means) == sorted(means, reverse=True)
    images = torch.randn(6, 3, 64, 32)
    f = attribute_features(model, images, attribute=2)
    with torch.no_grad():
        logits = model(images)[:, 2]
    head = model.head.classifiers
    np.testing.assert_allclose(f @ head.weight[2].detach().numpy() + head.bias[2].item(), logits.numpy(), rtol=1e-4,
                               atol=1e-4)
    points, mean, components = pca_2d(f)
    assert points.shape == (6, 2) and np.allclose(points.mean(axis=0), 0, atol=1e-5)
    with pytest.raises(ValueError, match="attribute head"):
        attribute_features(build_model("test_resnet", 4, "linear_bn"), images, 0)


def test_attention_rollout_of_a_vit_is_a_distribution_over_tokens():
    from parlab.visualisation import attention_rollout

    torch.manual_seed(0)
    model = build_model("test_vit", 4, "linear_bn", image_size=(64, 32)).eval()
    images = torch.randn(2, 3, 64, 32)
    maps = attention_rollout(model, images)
    assert maps.shape == (2, 4, 2) and (maps > 0).all()
    assert (maps.sum(dim=(1, 2)) < 1).all()  # the rest stays on the class token itself
    # With no attention mixing (residual 1) the class token keeps everything to itself.
    assert torch.allclose(attention_rollout(model, images, residual=1.0), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="ViT backbone"):
        attention_rollout(build_model("test_resnet", 4, "linear_bn"), images)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "eigencam", "layercam"])
@pytest.mark.parametrize("kind", ["cnn", "promptpar"])
def test_every_cam_method_on_every_model_kind(method, kind):
    torch.manual_seed(0)
    model = _promptpar() if kind == "promptpar" else build_model("test_resnet", 4, "attribute").eval()
    cams = attribute_cams(model, torch.randn(2, 3, 64, 32), [1, 2], method=method)
    assert cams.shape == (2, 2, 64, 32) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_unknown_cam_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, hirescam"):
        attribute_cams(build_model("test_resnet", 4).eval(), torch.randn(1, 3, 64, 32), [0], method="scorecam")


def test_swin_stages_are_turned_channels_first():
    import timm

    from parlab.models import PARModel
    from parlab.models.heads import HEADS

    torch.manual_seed(0)
    backbone = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, embed_dim=24,
                                 depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=(64, 32), window_size=4)
    model = PARModel(backbone, HEADS["linear_bn"](backbone.num_features, 4)).eval()
    layer = cam_layer(model)
    assert "channels last" in layer.description
    assert layer.reshape(torch.zeros(2, 2, 1, 192)).shape == (2, 192, 2, 1)
    cams = attribute_cams(model, torch.randn(2, 3, 64, 32), [0, 3])
    assert cams.shape == (2, 2, 64, 32) and np.isfinite(cams).all()


@pytest.mark.parametrize("backbone, size, grid", [("resnet10t", (64, 32), (8, 4)), ("resnet10t", (256, 192), (8, 6)),
                                                 ("resnet10t", (128, 64), (8, 4))])
def test_cnn_cams_read_a_map_of_at_least_8x4(backbone, size, grid):
    from parlab.visualisation.cams import cam_layer

    model = build_model(backbone, 4, "attribute", image_size=size).eval()
    layer = cam_layer(model, size)
    seen = []
    handle = layer.layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, *size))
    handle.remove()
    assert seen == [grid] and f"{grid[0]}x{grid[1]} map" in layer.description
    maps = attribute_cams(model, torch.randn(2, 3, *size), [0, 3])
    # The maps vary along both axes: a place, not a band.
    assert maps.shape == (2, 2, *size) and (maps.std(axis=2) > 0).any() and (maps.std(axis=3) > 0).any()
