"""Shared fixtures: a small SynthPA on disk and the reference label files when present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def synthpa_root(tmp_path_factory) -> Path:
    from parlab.data.synthpa import generate

    return generate(tmp_path_factory.mktemp("synthpa") / "synthpa", 200, seed=3, workers=1)


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"reference file {path} not present (only on machines with ../shared/data)")
    return path


@pytest.fixture(scope="session")
def custom_root(synthpa_root, tmp_path_factory) -> Path:
    """SynthPA's images and labels as a custom table, under renamed attributes, with one unknown label."""
    from formats import write_table

    from parlab.data import load_dataset

    ann = load_dataset("synthpa", synthpa_root)
    root = tmp_path_factory.mktemp("custom") / "mine"
    (root / "photos").mkdir(parents=True)
    split_of = {int(r): s for s in ("train", "val", "test") for r in ann.split(s)}
    keep = [j for j in range(ann.num_attributes) if (ann.labels[ann.split("train"), j] == 1).any()]
    names = [f"my_{ann.attributes[j].replace('&', 'and')}" for j in keep]
    rows = []
    for i, name in enumerate(ann.image_names):
        shutil.copy(ann.image_path(i), root / "photos" / Path(str(name)).name)
        labels = ann.labels[i, keep].tolist()
        if i == 0:
            labels[0] = -1
        rows.append([f"photos/{Path(str(name)).name}", split_of[i], *labels])
    write_table(root, ["image", "split", *names], rows)
    (root / "sentences.csv").write_text(f"attribute,sentence\n{names[0]},a person who is my first attribute\n")
    return root
