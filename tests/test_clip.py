"""CLIP through open_clip: parlab's registered architecture, local weights only, parameter counts."""

from __future__ import annotations

import pytest
import torch

from parlab.models import clip_models, count_parameters, create_clip


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
