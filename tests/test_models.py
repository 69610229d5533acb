"""Backbones (offline weights, name errors) and PAR heads."""

from __future__ import annotations

import pytest
import torch

from parlab.models import (
    AttributeClassifiers,
    AttributeFeatureHead,
    BackboneError,
    LinearHead,
    build_model,
    create_backbone,
)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet", "test_vit"])
def test_build_model_gives_one_logit_per_attribute(name):
    model = build_model(name, 26, "linear_bn", image_size=(64, 32)).eval()
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 26)


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnet5'.*resnet50"):
        create_backbone("resnet5")


def test_missing_weights_file_names_the_file(tmp_path):
    missing = tmp_path / "resnet50.safetensors"
    with pytest.raises(BackboneError, match=str(missing)) as err:
        create_backbone("test_resnet", weights=missing)
    assert "never downloads" in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_are_loaded(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=10)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    net = create_backbone("test_resnet", weights=path)
    loaded = net.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert body and all(torch.equal(loaded[k], state[k]) for k in body)
    fresh = create_backbone("test_resnet")
    assert not all(torch.equal(fresh.state_dict()[k], state[k]) for k in body if state[k].is_floating_point())


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, path)
    with pytest.raises(BackboneError, match="cannot load as weights of 'test_resnet'"):
        create_backbone("test_resnet", weights=path)


def test_linear_head_batchnorm_is_optional():
    g = torch.randn(8, 5)
    plain, normed = LinearHead(5, 3, batch_norm=False), LinearHead(5, 3, batch_norm=True)
    normed.fc.load_state_dict(plain.fc.state_dict())
    assert torch.allclose(plain(g), g @ plain.fc.weight.T + plain.fc.bias)
    out = normed.train()(g)
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)  # BatchNorm after the linear layer


def test_attribute_classifiers_equal_separate_linear_layers():
    torch.manual_seed(0)
    heads = AttributeClassifiers(4, 6)
    f = torch.randn(3, 4, 6)
    expected = torch.stack([f[:, j] @ heads.weight[j] + heads.bias[j] for j in range(4)], dim=1)
    assert torch.allclose(heads(f), expected, atol=1e-6)


def test_attribute_feature_head_shapes_and_independence():
    torch.manual_seed(0)
    head = AttributeFeatureHead(6, 4).eval()
    g = torch.randn(3, 6)
    f = head.features(g)
    assert f.shape == (3, 4, 6)
    logits = head(g)
    assert logits.shape == (3, 4)
    # Attribute j's logit depends only on its own feature block and classifier.
    with torch.no_grad():
        head.classifiers.weight[1] += 1.0
    changed = head(g)
    assert torch.equal(changed[:, [0, 2, 3]], logits[:, [0, 2, 3]]) and not torch.equal(changed[:, 1], logits[:, 1])


def test_unknown_head_lists_the_known_ones():
    with pytest.raises(ValueError, match="linear, linear_bn, attribute"):
        build_model("test_resnet", 3, head="mlp")
