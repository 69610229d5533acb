"""SynthPA's captions and caption corpus: claims that say what the words say, a corpus apart from the splits."""

from __future__ import annotations

import numpy as np
import torch

from parlab.data.sentences import sentence_for
from parlab.data.synthpa import ATTRIBUTES, generate, sample_labels
from parlab.data.synthpa.captions import corpus_caption, full_caption, negate, truth
from parlab.data.synthpa.corpus import caption_corpus, corpus_labels, render_corpus

COL = {a: i for i, a in enumerate(ATTRIBUTES)}


def _labels(*present: str) -> np.ndarray:
    y = np.zeros(len(ATTRIBUTES), np.uint8)
    for name in present:
        y[COL[name]] = 1
    return y


def test_a_full_caption_names_everything_present_compactly():
    y = _labels("Female", "Age18-60", "Side", "ShortSleeve", "UpperPlaid", "Shorts", "HandBag")
    assert full_caption(y) == ("An adult woman seen from the side, wearing short sleeves, a plaid top and shorts, "
                               "carrying a handbag.")
    assert full_caption(_labels("AgeOver60", "Back", "HoldObjectsInFront")) == \
        "An elderly man seen from the back, holding something in front."


def test_caption_claims_agree_with_the_labels_and_the_words():
    labels = sample_labels(300, 1)
    rng = np.random.default_rng(0)
    kinds = {"full": 0, "sentence": 0, "partial": 0}
    for y in labels:
        (text, claims), (negative, flipped) = corpus_caption(y, rng)
        assert np.count_nonzero(claims != flipped) == 1 and np.array_equal(claims != 0, flipped != 0)
        assert negative != text and not truth(y[None], flipped[None])[0, 0]
        said = np.flatnonzero(claims)
        assert len(said) >= 1
        # Every claim is true of the image it was drawn for.
        assert np.array_equal(claims[said] == 1, y[said] == 1)
        if len(said) == len(ATTRIBUTES):
            kinds["full"] += 1
            assert text == full_caption(y)
        elif not text.endswith("."):  # an attribute's own sentence, word for word as zero-shot asks it
            kinds["sentence"] += 1
            assert len(said) == 1
            sentence = sentence_for(ATTRIBUTES[said[0]])
            assert text == (sentence if claims[said[0]] == 1 else negate(sentence))
        else:
            kinds["partial"] += 1
            negated = claims[said] == -1
            assert (" not " in text or "without" in text) == bool(negated.any())
    assert all(count > 30 for count in kinds.values()), kinds


def test_a_caption_is_true_of_every_image_its_claims_fit():
    labels = np.stack([_labels("Hat"), _labels("Hat", "Backpack"), _labels()])
    claims = np.zeros((3, len(ATTRIBUTES)), np.int8)
    claims[0, COL["Hat"]] = 1  # "wearing a hat"
    claims[1, COL["Backpack"]] = -1  # "without a backpack"
    claims[2] = np.where(labels[2] == 1, 1, -1)  # the complete caption of image 2
    expected = np.array([[True, True, False], [True, False, False], [False, True, True]])
    assert np.array_equal(truth(labels, claims), expected)


def test_the_corpus_is_apart_from_the_dataset_and_the_same_for_a_seed(tmp_path):
    root = generate(tmp_path / "s", 30, seed=0, workers=1)
    images, labels = render_corpus(30, 0, (64, 32), workers=1)
    assert images.shape == (30, 64, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, corpus_labels(30, 0)) and not np.array_equal(labels, sample_labels(30, 0))
    from PIL import Image

    from parlab.data.images import build_transform

    resize = build_transform((64, 32)).resize
    with Image.open(root / "data" / "000001.jpg") as img:
        first = np.asarray(resize(img.convert("RGB")))
    assert not any(np.array_equal(first, image) for image in images)  # no dataset image in the corpus
    again, _ = render_corpus(30, 0, (64, 32), workers=2)
    assert np.array_equal(images, again)
    kept = caption_corpus(tmp_path / "corpus", 30, 0, (64, 32), workers=1)
    stamp = (tmp_path / "corpus" / "images.npy").stat().st_mtime_ns
    reused = caption_corpus(tmp_path / "corpus", 30, 0, (64, 32), workers=1)
    assert (tmp_path / "corpus" / "images.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(kept[0]), images) and np.array_equal(np.asarray(reused[0]), images)


def test_corpus_images_are_the_decoded_and_resized_renderings():
    import io

    from PIL import Image

    from parlab.data.images import build_transform
    from parlab.data.synthpa.corpus import CORPUS_STREAM
    from parlab.data.synthpa.render import render_jpeg

    images, labels = render_corpus(3, 5, (64, 32), workers=1)
    data = render_jpeg(labels[2], np.random.default_rng([CORPUS_STREAM, 5, 2]), (128, 64))
    with Image.open(io.BytesIO(data)) as img:
        assert np.array_equal(np.asarray(build_transform((64, 32)).resize(img.convert("RGB"))), images[2])


def test_the_augmented_batch_is_a_function_of_the_generator_seed():
    from parlab.data.batch_augment import augment_batch, draws_from_generator

    images = torch.randint(0, 256, (6, 16, 8, 3), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    a, b, c = (augment_batch(images, mean, std, 2, draws_from_generator(torch.Generator().manual_seed(s), 6, 2))
               for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_balanced_claims_say_a_rare_attribute_as_often_as_its_negation():
    labels = sample_labels(4000, 2)
    prevalence = labels.mean(0)
    hat = COL["Hat"]
    assert prevalence[hat] < 0.1
    counts = {"balanced": [0, 0], "uniform": [0, 0]}
    for name, given in (("balanced", prevalence), ("uniform", None)):
        rng = np.random.default_rng(0)
        for y in labels:
            (_, claims), _ = corpus_caption(y, rng, full=0.0, sentence=1.0, prevalence=given)
            if claims[hat]:
                counts[name][int(claims[hat] == 1)] += 1
    negative, positive = counts["balanced"]
    assert 0.4 < positive / negative < 2.5  # "wearing a hat" nearly as often as "not wearing a hat"
    negative, positive = counts["uniform"]
    assert positive / negative < 0.15  # without balancing, the prior: hats are rare
