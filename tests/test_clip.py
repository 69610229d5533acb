"""CLIP through open_clip: parlab's registered architecture, local weights only, parameter counts."""

from __future__ import annotations

import pytest
import torch

from parlab.models import clip_models, count_parameters, create_clip
from parlab.models.clip import CONFIG_DIR


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
