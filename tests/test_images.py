import numpy as np
import pytest
import torch
from PIL import Image

from parlab.data import DatasetError, load_dataset
from parlab.data.images import PARImageDataset, build_transform, image_sizes, load_rgb


def test_dataset_items(synthpa_root):
    ann = load_dataset("synthpa", synthpa_root)
    ds = PARImageDataset(ann, "val", build_transform((64, 32), train=True))
    x, y, row = ds[0]
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(ann.labels[row].astype(np.float32)))
    assert len(ds) == 20 and ds.labels().shape == (20, 26)
    assert image_sizes(ann, "val", limit=5).tolist() == [[128, 64]] * 5


def test_greyscale_and_palette_images_become_rgb(tmp_path):
    Image.new("L", (8, 16), 100).save(tmp_path / "g.png")
    Image.new("P", (8, 16), 3).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "g.png").mode == "RGB"
    assert load_rgb(tmp_path / "p.png").mode == "RGB"


def test_a_jpeg_far_larger_than_the_input_is_decoded_in_full(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (400, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "large.jpg", quality=92)
    with Image.open(tmp_path / "large.jpg") as full:  # libjpeg at full scale, what any decoder gives
        expected = np.asarray(full.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "large.jpg")), expected)


def test_missing_image_error_or_skip(synthpa_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthpa_root, root)
    ann = load_dataset("synthpa", root)
    victim = ann.image_paths("test")[3]
    victim.unlink()
    # Found when the dataset is built, before any epoch reaches it.
    with pytest.raises(DatasetError, match=f"1 of 20 images of split 'test' are missing.*{victim.name}"):
        PARImageDataset(ann, "test")
    skipping = PARImageDataset(ann, "test", on_missing="skip")
    assert len(skipping) == 19 and skipping.num_skipped == 1


def test_truncated_image_is_named(tmp_path):
    Image.new("RGB", (64, 128), (10, 200, 30)).save(tmp_path / "x.jpg", quality=90)
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match="x.jpg: unreadable or truncated image"):
        load_rgb(tmp_path / "x.jpg")


def test_train_transform_is_fixed_by_its_seed_and_pads_with_black():
    import random

    import torch
    from PIL import Image

    from parlab.data.images import IMAGENET_MEAN, IMAGENET_STD, PARTransform

    img = Image.new("RGB", (32, 64), (200, 120, 40))
    tf = PARTransform((64, 32), train=True, pad=10)
    a, b = tf(img, random.Random(5)), tf(img, random.Random(5))
    assert a.shape == (3, 64, 32) and torch.equal(a, b)
    outs = [tf(img, random.Random(s)) for s in range(20)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    black = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    # Some crop of 20 leaves the image by a few pixels: those pixels are the zero padding.
    assert any(torch.allclose(o[:, 0, 0], black, atol=1e-5) or torch.allclose(o[:, -1, -1], black, atol=1e-5)
               for o in outs)
    plain = PARTransform((64, 32), train=False)(img)
    colour = torch.tensor([(c / 255 - m) / s for c, m, s in zip((200, 120, 40), IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(plain, colour[:, None, None].expand(3, 64, 32), atol=1e-5)


def test_the_promptpar_transform_letterboxes_a_non_square_image_to_the_centre_of_a_black_square():
    from PIL import Image

    from parlab.data.images import TRANSFORMS, letterbox, named_transform

    person = Image.new("RGB", (40, 100), (200, 100, 50))  # width 40, height 100
    square = letterbox(person)
    assert square.size == (100, 100)
    pixels = np.asarray(square)
    assert (pixels[:, :30] == 0).all() and (pixels[:, 70:] == 0).all()  # 30 black columns each side
    assert (pixels[:, 30:70] == (200, 100, 50)).all()
    x = named_transform("promptpar", (20, 20), train=False)(person)  # letterbox, resize, (x - 0.5) / 0.5
    assert x.shape == (3, 20, 20)
    np.testing.assert_allclose(x[:, :, 0].numpy(), -1.0)  # black padding at mean 0.5, std 0.5
    np.testing.assert_allclose(x[0, 10, 10].item(), (200 / 255 - 0.5) / 0.5, atol=1e-6)
    stretched = named_transform("clip", (20, 20), train=False)(person)
    assert (stretched[:, :, 0] > -1).all()  # stretching leaves no padding
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert TRANSFORMS["clip"]["mean"] == OPENAI_DATASET_MEAN and TRANSFORMS["clip"]["std"] == OPENAI_DATASET_STD
