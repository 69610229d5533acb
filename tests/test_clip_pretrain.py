"""The small CLIP pretrained on a SynthPA caption corpus: loadable, cached by its settings, checks that are right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parlab.data.synthpa.captions import negate
from parlab.methods.promptpar.pretrain import (CLIPPretrainConfig, MultiPositiveClipLoss, likelihood_recall,
                                               linear_probe, pretrain_clip, retrieval_recall, weights_path,
                                               zero_shot_probs)
from parlab.models import create_clip
from parlab.models.clip import clip_tokenizer


def _config(root, tmp_path, **changes) -> CLIPPretrainConfig:
    return CLIPPretrainConfig(**({"root": str(root), "corpus_size": 96, "epochs": 1, "batch_size": 32,
                                  "device": "cpu", "cache_dir": str(tmp_path / "clip")} | changes))


def test_pretraining_writes_keyed_open_clip_weights_that_load_by_name_and_are_reused(synthpa_root, tmp_path):
    config = _config(synthpa_root, tmp_path)
    result = pretrain_clip(config, progress=False, log=lambda _: None)
    assert result.weights == weights_path(config) and result.weights.parent == tmp_path / "clip"
    assert list(result.history["epoch"]) == [1] and result.history["loss"].notna().all()
    record = json.loads(result.weights.with_suffix(".json").read_text())
    assert set(record["recall"]) == {"1", "5"} and {"ma", "f1"} <= set(record["probe"])
    assert result.recall[1] <= result.recall[5]
    loaded = create_clip("parlab-clip-hybrid", result.weights).eval()
    with pytest.warns(UserWarning):
        fresh = create_clip("parlab-clip-hybrid", None)
    assert not torch.equal(loaded.visual.conv1[0].weight, fresh.visual.conv1[0].weight)
    stamp = result.weights.stat().st_mtime_ns
    again = pretrain_clip(config, progress=False, log=lambda _: None)  # same settings: the cached weights
    assert result.weights.stat().st_mtime_ns == stamp and again.train_s == pytest.approx(result.train_s)
    assert again.recall == result.recall and again.probe.ma == pytest.approx(result.probe.ma)
    # The evaluation folder and the device are not part of the key; what shapes the weights is.
    assert weights_path(_config("elsewhere", tmp_path, device="cuda")) == result.weights
    assert weights_path(_config(synthpa_root, tmp_path, lr=2e-3)) != result.weights
    with pytest.raises(FileExistsError, match="existing='resume'"):
        pretrain_clip(config, existing="error", progress=False, log=lambda _: None)


def test_multi_positive_targets_treat_identical_captions_as_positives():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    texts[1] = texts[0]  # captions 0 and 1 are the same text
    scale = torch.tensor(10.0)
    loss = MultiPositiveClipLoss()
    identity = torch.eye(4)
    import open_clip

    assert loss(images, texts, scale, identity) == pytest.approx(float(open_clip.ClipLoss()(images, texts, scale)))
    targets = identity.clone()
    targets[0, 1] = targets[1, 0] = 1  # either caption is true of either image
    logits = scale * images @ texts.T
    rows = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    columns = -(targets.T / targets.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    assert loss(images, texts, scale, targets) == pytest.approx(float(rows + columns) / 2)
    # A caption true of two images (caption 2, say "wearing a hat", also fits image 3): the identity pushes image 3
    # away from it, these targets pull image 3 towards it: descent moves image 3 more towards caption 2.
    fits = identity.clone()
    fits[3, 2] = 1
    features = images.clone().requires_grad_(True)
    loss(features, texts, scale, fits).backward()
    towards_multi = -features.grad[3] @ texts[2]  # descent's component along caption 2
    features.grad = None
    loss(features, texts, scale, identity).backward()
    assert towards_multi > -features.grad[3] @ texts[2] + 0.1
    with pytest.raises(ValueError, match="at least one caption true of it"):
        loss(images, texts, scale, torch.zeros(4, 4))
    # Hard negatives: more captions than images; one true of no image adds nothing to the caption side.
    extra = torch.cat([texts, torch.nn.functional.normalize(torch.randn(2, 8), dim=1)])
    wide = torch.cat([identity, torch.tensor([[0.0, 0], [0, 0], [0, 0], [0, 1]])], 1)
    logits = scale * images @ extra.T
    rows = -(wide / wide.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    fitting = wide.T[[0, 1, 2, 3, 5]]
    columns = -(fitting / fitting.sum(1, keepdim=True) * logits.T[[0, 1, 2, 3, 5]].log_softmax(1)).sum(1).mean()
    assert loss(images, extra, scale, wide) == pytest.approx(float(rows + columns) / 2)


def test_zero_shot_compares_each_sentence_with_its_negation():
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = create_clip("parlab-clip-hybrid", None).eval()
    tokenizer = clip_tokenizer("parlab-clip-hybrid")
    sentences = ["A pedestrian wearing a hat", "A female pedestrian"]
    images = torch.nn.functional.normalize(torch.randn(3, 128), dim=1)
    probs = zero_shot_probs(model, images, sentences, tokenizer, "cpu")
    with torch.no_grad():
        pos = model.encode_text(tokenizer(sentences), normalize=True)
        neg = model.encode_text(tokenizer([negate(s) for s in sentences]), normalize=True)
        scale = model.logit_scale.exp()
        expected = torch.softmax(torch.stack([scale * images @ pos.T, scale * images @ neg.T]), dim=0)[0]
    assert np.allclose(probs, expected.numpy(), atol=1e-6)
    assert negate("A pedestrian wearing a hat") == "A pedestrian not wearing a hat"
    assert negate("A female pedestrian") == "A pedestrian who is not female"


def test_the_linear_probe_learns_a_separable_attribute_and_balances_classes():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=generator)
    labels = np.stack([(x[:, 0] > 1.2).numpy(), (x[:, 1] + x[:, 2] > 0).numpy()], 1).astype(np.int64)
    labels[:5, 1] = -1  # ignored entries
    probs = linear_probe(x, labels, x)
    assert ((probs[:, 0] > 0.5) == labels[:, 0]).mean() > 0.95  # a rare (12%) attribute, found
    assert ((probs[5:, 1] > 0.5) == labels[5:, 1]).mean() > 0.95


def test_recall_counts_identical_captions_as_hits():
    similarity = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.9], [0.0, 0.3, 0.8]])
    # Image 0's best caption is caption 1, which has the same text as its own caption 0.
    assert retrieval_recall(similarity, torch.tensor([0, 0, 1]), (1, 2)) == pytest.approx({1: 200 / 3, 2: 100.0})
    assert retrieval_recall(similarity, torch.tensor([0, 1, 2]), (1, 2)) == pytest.approx({1: 100 / 3, 2: 200 / 3})


def test_logit_adjustment_adds_each_one_claim_captions_log_prior():
    from parlab.methods.promptpar.pretrain import _single_claim_log_priors

    claims = np.zeros((3, 4), np.int8)
    claims[0, 1] = 1  # "wearing a hat": true of 10%
    claims[1, 1] = -1  # "without a hat": true of 90%
    claims[2, :] = [1, -1, 1, -1]  # a complete caption: no offset
    prevalence = np.array([0.5, 0.1, 0.3, 0.7])
    offsets = _single_claim_log_priors(claims, prevalence)
    assert np.allclose(offsets, [np.log(0.1), np.log(0.9), 0.0])
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    targets = torch.eye(3)
    scale = torch.tensor(10.0)
    shift = torch.from_numpy(offsets)
    logits = scale * images @ texts.T
    rows = torch.nn.functional.cross_entropy(logits + shift, targets)
    columns = torch.nn.functional.cross_entropy(logits.T, targets)  # the caption side is not adjusted
    loss = MultiPositiveClipLoss()(images, texts, scale, targets, shift)
    assert loss == pytest.approx(float(rows + columns) / 2)


def test_a_classifier_retrieves_the_captions_whose_labels_its_probabilities_favour():
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 0, 0]])
    texts = ["a", "b", "a", "c"]  # images 0 and 2 share a caption
    # Image 0 (caption a) favours b, then a; the others favour their own captions.
    probs = np.array([[0.6, 0.9, 0.9], [0.2, 0.8, 0.7], [0.9, 0.1, 0.6], [0.3, 0.2, 0.4]])
    assert likelihood_recall(probs, labels, texts, (1, 2)) == {1: 75.0, 2: 100.0}
    ignored = labels.copy()
    ignored[:, 1] = -1  # the attribute that misled image 0, left out of every score
    assert likelihood_recall(probs, ignored, texts, (1,)) == {1: 100.0}
    # Certain probabilities (exact 0 and 1) still score: the right captions win, nothing is NaN.
    assert likelihood_recall(labels.astype(float), labels, texts, (1,)) == {1: 100.0}
