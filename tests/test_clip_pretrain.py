"""The small CLIP pretrained on SynthPA captions: training writes loadable weights; the checks are right."""

from __future__ import annotations

import json

import pytest
import torch

from parlab.methods.promptpar.pretrain import CLIPPretrainConfig, negate, pretrain_clip, retrieval_recall
from parlab.models import create_clip


def test_pretraining_writes_open_clip_weights_that_load_by_name(synthpa_root, tmp_path):
    out = tmp_path / "clip.pt"
    config = CLIPPretrainConfig(root=str(synthpa_root), epochs=2, batch_size=32, device="cpu", output=str(out))
    result = pretrain_clip(config, progress=False, log=lambda _: None)
    assert list(result.history["epoch"]) == [1, 2] and result.history["loss"].notna().all()
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["recall"]) == {"1", "5"} and 0 <= record["recall"]["5"] <= 100
    assert result.recall[1] <= result.recall[5]
    loaded = create_clip("parlab-clip-tiny", out).eval()
    with pytest.warns(UserWarning):
        fresh = create_clip("parlab-clip-tiny", None)
    assert not torch.equal(loaded.visual.conv1.weight, fresh.visual.conv1.weight)
    again = pretrain_clip(config, existing="resume", progress=False, log=lambda _: None)
    assert again.recall == result.recall and again.zero_shot.ma == pytest.approx(result.zero_shot.ma)
    with pytest.raises(FileExistsError, match="existing='resume'"):
        pretrain_clip(config, progress=False, log=lambda _: None)


def test_recall_counts_identical_captions_as_hits():
    similarity = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.9], [0.0, 0.3, 0.8]])
    # Image 0's best caption is caption 1, which has the same text as its own caption 0.
    assert retrieval_recall(similarity, torch.tensor([0, 0, 1]), (1, 2)) == pytest.approx({1: 200 / 3, 2: 100.0})
    assert retrieval_recall(similarity, torch.tensor([0, 1, 2]), (1, 2)) == pytest.approx({1: 100 / 3, 2: 200 / 3})


def test_negated_attribute_sentences():
    assert negate("A pedestrian wearing a hat") == "A pedestrian not wearing a hat"
    assert negate("A female pedestrian") == "A pedestrian who is not female"
    assert negate("An adult pedestrian between eighteen and sixty") == \
        "A pedestrian who is not adult between eighteen and sixty"
    assert negate("Hat") == "Not hat"
