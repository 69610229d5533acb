import hashlib

import numpy as np
import pytest

from parlab import labelstats
from parlab.data import load_dataset
from parlab.data.pa100k import TRAIN_POSITIVE_PERCENT
from parlab.data.synthpa import ATTRIBUTES, full_caption, generate, sample_labels

from conftest import shared_file

COL = {a: j for j, a in enumerate(ATTRIBUTES)}


@pytest.fixture(scope="module")
def labels():
    return sample_labels(200_000, seed=11)


def test_attributes_are_pa100k_in_eval_order():
    assert ATTRIBUTES == tuple(TRAIN_POSITIVE_PERCENT)


def test_marginals_match_pa100k_within_one_and_a_half_points(labels):
    ratios = 100 * labels.mean(0)
    published = np.array([TRAIN_POSITIVE_PERCENT[a] for a in ATTRIBUTES])
    assert np.abs(ratios - published).max() < 1.5


def test_exclusive_groups_and_complements(labels):
    for group in (("AgeOver60", "Age18-60", "AgeLess18"), ("Front", "Side", "Back"),
                  ("Trousers", "Shorts", "Skirt&Dress")):
        assert (labels[:, [COL[g] for g in group]].sum(1) == 1).all(), group
    assert (labels[:, COL["ShortSleeve"]] + labels[:, COL["LongSleeve"]] == 1).all()


@pytest.mark.parametrize("a,b,sign", [
    ("Shorts", "Trousers", -1), ("Skirt&Dress", "Female", 1), ("AgeLess18", "Backpack", 1),
    ("Glasses", "Back", -1), ("Shorts", "AgeLess18", 1), ("Female", "ShoulderBag", 1),
    ("LongSleeve", "Hat", 1), ("LongCoat", "LongSleeve", 1),
])
def test_main_pa100k_correlations_reproduced(labels, a, b, sign):
    phi = labelstats.phi(labels)[COL[a], COL[b]]
    assert sign * phi > 0.1, (a, b, phi)


def test_phi_structure_matches_real_pa100k(labels):
    real = load_dataset("pa100k", shared_file("PA100k/annotation.mat").parent).split_labels("train")
    assert labelstats.phi_agreement(labels, real) >= 0.9


def test_sampling_is_deterministic():
    assert np.array_equal(sample_labels(500, 4), sample_labels(500, 4))
    assert not np.array_equal(sample_labels(500, 4), sample_labels(500, 5))


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_byte_identical_whatever_the_workers(tmp_path):
    a = generate(tmp_path / "a", 40, seed=9, workers=1)
    b = generate(tmp_path / "b", 40, seed=9, workers=2)
    c = generate(tmp_path / "c", 40, seed=10, workers=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_written_in_pa100k_format_and_read_back(synthpa_root):
    ann = load_dataset("synthpa", synthpa_root)
    assert ann.attributes == ATTRIBUTES
    assert np.array_equal(ann.labels, sample_labels(200, 3))
    assert [len(ann.split(s)) for s in ("train", "val", "test")] == [160, 20, 20]
    pa = load_dataset("pa100k", synthpa_root)  # the real PA100k reader reads it too
    assert np.array_equal(pa.labels, ann.labels)
    assert all(p.is_file() for p in ann.image_paths("test"))


def test_images_have_the_configured_size(tmp_path):
    from PIL import Image

    root = generate(tmp_path / "s", 12, seed=1, image_size=(96, 40), workers=1)
    with Image.open(root / "data" / "000001.jpg") as img:
        assert img.size == (40, 96) and img.mode == "RGB"


def test_captions_name_every_positive_attribute(synthpa_root):
    lines = (synthpa_root / "captions.tsv").read_text().splitlines()
    assert lines[0] == "filepath\tcaption" and len(lines) == 201
    y = sample_labels(200, 3)[7]
    path, text = lines[8].split("\t")
    assert path == "data/000008.jpg" and text == full_caption(y)
    assert (" woman" in text) == bool(y[COL["Female"]])


def test_regeneration_is_skipped_when_identical_and_replaced_otherwise(tmp_path):
    root = generate(tmp_path / "s", 12, seed=1, workers=1)
    stamp = (root / "annotation.mat").stat().st_mtime_ns
    generate(root, 12, seed=1, workers=1)
    assert (root / "annotation.mat").stat().st_mtime_ns == stamp
    generate(root, 14, seed=1, workers=1)
    assert len(load_dataset("synthpa", root).labels) == 14
    assert not (tmp_path / "s.partial").exists()


def test_attributes_change_pixels_where_they_live():
    """Toggling an attribute drawn last changes only its body region."""
    from parlab.data.synthpa.render import render_person

    y = sample_labels(50, 2)
    row = next(i for i in range(50) if y[i, COL["Front"]] and not y[i, COL["Hat"]])
    base = y[row].copy()
    hat = base.copy()
    hat[COL["Hat"]] = 1
    a = np.asarray(render_person(base, np.random.default_rng(1)), dtype=int)
    b = np.asarray(render_person(hat, np.random.default_rng(1)), dtype=int)
    changed = np.abs(a - b).sum(2) > 30
    rows = np.flatnonzero(changed.any(1))
    assert changed.sum() > 10
    assert rows.max() < 0.4 * a.shape[0]  # the hat only changes the top of the image
