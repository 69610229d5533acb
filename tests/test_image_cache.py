"""The uint8 image cache and device-side augmentation: the same pixels and batches as decoding the files."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from parlab.data import load_dataset
from parlab.data.batch_augment import augment_batch, draws_from_seeds
from parlab.data.errors import DatasetError
from parlab.data.image_cache import build_image_cache, open_image_cache
from parlab.data.images import PARTransform, build_transform, load_rgb
from parlab.models.clip import clip_transform
from parlab.training import BaselineConfig, load_checkpoint, train
from parlab.training.batches import evaluation_batches, training_batches
from parlab.training.config import split_config
from parlab.training.distributed import DistContext

SIZE = (64, 32)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def cache(synthpa_root, tmp_path_factory):
    ann = load_dataset("synthpa", synthpa_root)
    return ann, build_image_cache(tmp_path_factory.mktemp("cache"), ann, SIZE, workers=1, log=lambda _: None)


def test_the_cache_holds_the_decoded_and_resized_images(cache):
    ann, built = cache
    resize = build_transform(SIZE).resize
    assert built.images.shape == (len(ann.image_names), *SIZE, 3)
    for row in range(len(ann.image_names)):
        expected = np.asarray(resize(load_rgb(ann.image_path(row))))
        assert np.array_equal(built.images[row], expected), row
    rows = np.array([5, 1, 9, 1])
    assert torch.equal(built.batch(rows), torch.from_numpy(np.stack([built.images[r] for r in rows])))


def test_a_built_cache_is_reused_and_a_changed_image_asks_for_a_new_one(synthpa_root, tmp_path):
    import shutil

    root = tmp_path / "synthpa"
    shutil.copytree(synthpa_root, root)
    ann = load_dataset("synthpa", root)
    first = build_image_cache(tmp_path / "c", ann, SIZE, workers=2, log=lambda _: None)
    stamp = (first.folder / "images.npy").stat().st_mtime_ns
    again = build_image_cache(tmp_path / "c", ann, SIZE, log=lambda _: None)
    assert again.folder == first.folder and (first.folder / "images.npy").stat().st_mtime_ns == stamp
    path = ann.image_path(0)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert open_image_cache(tmp_path / "c", ann, SIZE) is None  # stale pixels are never served
    path.unlink()
    with pytest.raises(DatasetError, match=f"{path.name}: image not found"):
        build_image_cache(tmp_path / "c", ann, SIZE, log=lambda _: None)


def test_seeded_draws_on_the_batch_equal_the_per_image_transform_bit_for_bit():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, *SIZE, 3), dtype=np.uint8)
    seeds = rng.integers(0, 2**62, 12)
    for transform in (PARTransform(SIZE, train=True), clip_transform(SIZE, train=True, pad=3)):
        batch = augment_batch(torch.from_numpy(images), transform.mean, transform.std, transform.pad,
                              draws_from_seeds(seeds, transform.pad))
        for i in range(12):
            expected = transform(Image.fromarray(images[i]), random.Random(int(seeds[i])))
            assert torch.equal(batch[i], expected), i
    plain = augment_batch(torch.from_numpy(images), PARTransform(SIZE, False).mean, PARTransform(SIZE, False).std)
    assert torch.equal(plain[3], PARTransform(SIZE, train=False)(Image.fromarray(images[3])))


def test_cached_batches_equal_the_decoding_loader_for_each_epoch(cache):
    ann, built = cache
    rows = ann.split("train")
    decode = training_batches(ann, rows, build_transform(SIZE, train=True), 16, 7, 0, CPU)
    cached = training_batches(ann, rows, build_transform(SIZE, train=True), 16, 7, 0, CPU, built)
    assert len(decode) == len(cached)
    for epoch in (0, 3):
        decode.sampler.set_epoch(epoch)
        cached.sampler.set_epoch(epoch)
        for (x, y, r), (cx, cy, cr) in zip(decode, cached, strict=True):
            assert torch.equal(x, cx) and torch.equal(y, cy) and torch.equal(r, cr)
    val = ann.split("val")
    pairs = zip(evaluation_batches(ann, val, build_transform(SIZE), 50, 0, CPU),
                evaluation_batches(ann, val, build_transform(SIZE), 50, 0, CPU, built), strict=True)
    assert all(torch.equal(x, cx) and torch.equal(r, cr) for (x, _, r), (cx, _, cr) in pairs)


def test_a_run_from_the_cache_trains_the_same_weights(synthpa_root, tmp_path):
    run, data, method = split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=SIZE,
                                     epochs=1, batch_size=16, lr=1e-3, device="cpu",
                                     output_dir=str(tmp_path / "decoded"))
    decoded = train(run, data, method, progress=False, log=lambda _: None)
    cached = train(replace(run, output_dir=str(tmp_path / "cached")),
                   replace(data, image_cache=str(tmp_path / "cache")), method, progress=False, log=lambda _: None)
    assert any((tmp_path / "cache").glob("synthpa-64x32-*/images.npy"))
    a, b = (load_checkpoint(r.output_dir / "last.pt")["model"] for r in (decoded, cached))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert decoded.test.summary() == cached.test.summary()


def test_the_cache_command_builds_once_and_names_a_bad_root(synthpa_root, tmp_path, capsys):
    from parlab.cli import main

    args = ["cache", str(tmp_path / "c"), "--root", str(synthpa_root), "--image-size", "32", "16", "--workers", "1"]
    assert main(args) == 0
    built = list((tmp_path / "c").glob("synthpa-32x16-*/images.npy"))
    assert len(built) == 1 and np.load(built[0], mmap_mode="r").shape[1:] == (32, 16, 3)
    assert main(args) == 0 and "image cache" not in capsys.readouterr().out.split("\n")[-2]  # reused, not rebuilt
    assert main(["cache", str(tmp_path / "c"), "--root", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_a_letterboxed_cache_serves_the_promptpar_transform_and_only_it(cache, tmp_path):
    from parlab.data.images import named_transform

    ann, stretched = cache
    square = build_image_cache(tmp_path / "c", ann, SIZE, workers=1, log=lambda _: None, square=True)
    assert square.square and square.folder.name.startswith(f"synthpa-{SIZE[0]}x{SIZE[1]}-square-")
    assert open_image_cache(tmp_path / "c", ann, SIZE) is None  # a stretched cache is another cache
    promptpar = named_transform("promptpar", SIZE, train=False)
    rows = ann.split("val")[:20]
    decoded = evaluation_batches(ann, rows, promptpar, 10, 0, CPU)
    cached = evaluation_batches(ann, rows, promptpar, 10, 0, CPU, square)
    assert all(torch.equal(x, cx) for (x, _, _), (cx, _, _) in zip(decoded, cached, strict=True))
    with pytest.raises(ValueError, match="stretched"):
        evaluation_batches(ann, rows, promptpar, 10, 0, CPU, stretched)
