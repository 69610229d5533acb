"""``parlab cam``: one titled CAM overlay per image and attribute, for baseline and PromptPAR runs."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parlab
from parlab.cli import main
from parlab.data import load_dataset
from parlab.training import BaselineConfig, train
from parlab.training.config import split_config

ATTRIBUTES = ("Hat", "Skirt&Dress")
QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def baseline(synthpa_root, tmp_path_factory) -> Path:
    configs = split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=(64, 32),
                           epochs=1, batch_size=16, train_limit=32, device="cpu",
                           output_dir=str(tmp_path_factory.mktemp("runs") / "baseline"))
    return train(*configs, **QUIET).output_dir


@pytest.fixture(scope="module")
def promptpar(synthpa_root, tmp_path_factory) -> Path:
    from parlab.methods.promptpar import PromptPARConfig, train_promptpar
    from parlab.models import create_clip

    folder = tmp_path_factory.mktemp("promptpar")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        torch.save(create_clip("parlab-clip-tiny", None).state_dict(), folder / "clip.pt")
    configs = split_config(PromptPARConfig, root=str(synthpa_root), image_size=(64, 32), epochs=1, batch_size=16,
                           train_limit=32, warmup_epochs=0, device="cpu", output_dir=str(folder / "run"),
                           clip_model="parlab-clip-tiny", weights=str(folder / "clip.pt"), vis_prompt=10, vis_depth=4,
                           prompt_warmup_epochs=0)
    return train_promptpar(*configs, **QUIET).output_dir


@pytest.fixture(scope="module")
def images(synthpa_root) -> list[Path]:
    ann = load_dataset("synthpa", synthpa_root)
    return [ann.image_path(int(row)) for row in ann.split("test")[:2]]


def _cam(run: Path, images: list[Path], output: Path, *extra: str) -> int:
    attributes = [arg for name in ATTRIBUTES for arg in ("--attribute", name)]
    return main(["cam", str(run), *map(str, images), *attributes, "--output", str(output), *extra])


@pytest.mark.parametrize("method", ["baseline", "promptpar"])
def test_one_png_per_image_and_attribute_titled_with_the_predicted_probability(method, images, tmp_path, capsys,
                                                                              request):
    run = request.getfixturevalue(method)
    assert _cam(run, images, tmp_path / "cams") == 0
    expected = parlab.predict(run / "best.pt", images)
    written = sorted((tmp_path / "cams").iterdir())
    assert [p.name for p in written] == sorted(f"{i.stem}_{a.replace('&', '_')}.png" for i in images
                                               for a in ATTRIBUTES)
    printed = capsys.readouterr().out.splitlines()
    for image in images:
        width, height = Image.open(image).size
        for attribute in ATTRIBUTES:
            path = tmp_path / "cams" / f"{image.stem}_{attribute.replace('&', '_')}.png"
            with Image.open(path) as png:
                pixels = np.asarray(png.convert("RGB"))
                title = png.text["Title"]
            assert abs(pixels.shape[1] / pixels.shape[0] - width / height) < 0.15 * width / height
            assert pixels.std() > 10  # an image, not a blank canvas
            probability = expected.at[str(image), f"prob.{attribute}"]
            assert title.startswith(attribute) and float(re.search(r"p = ([\d.]+)", title)[1]) == \
                pytest.approx(probability, abs=5e-4)
            assert f"{path}  {attribute} p={probability:.3f}" in printed


def test_the_python_function_returns_the_probabilities_of_predict(baseline, images, tmp_path):
    from parlab.visualisation import write_cams

    cams = write_cams(baseline, images, ["Female"], tmp_path, method="gradcam++")
    expected = parlab.predict(baseline / "best.pt", images)["prob.Female"]
    assert [c.image for c in cams] == images and all(c.path.is_file() for c in cams)
    assert [c.probability for c in cams] == pytest.approx(expected.tolist(), abs=1e-6)


def test_an_unknown_attribute_is_one_line_with_the_close_names(baseline, images, tmp_path, capsys):
    rc = main(["cam", str(baseline), str(images[0]), "--attribute", "Skirt&Dres", "--output", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("error: unknown attribute 'Skirt&Dres'; close matches: Skirt&Dress, ")
    assert not (tmp_path / "c").exists()


def test_an_unknown_method_and_a_missing_image_are_one_line_each(baseline, images, tmp_path, capsys):
    assert _cam(baseline, images, tmp_path, "--method", "scorecam") == 1
    assert capsys.readouterr().err.startswith("error: unknown CAM method 'scorecam'; known: gradcam, gradcam++")
    assert _cam(baseline, [images[0], tmp_path / "nobody.png"], tmp_path) == 1
    assert capsys.readouterr().err == f"error: image not found: {tmp_path / 'nobody.png'}\n"


def test_an_existing_png_is_kept_unless_overwrite(baseline, images, tmp_path, capsys):
    kept = tmp_path / f"{images[1].stem}_Hat.png"
    kept.write_bytes(b"mine")
    assert _cam(baseline, images, tmp_path) == 1
    assert capsys.readouterr().err == f"error: {kept} exists; pass --overwrite to replace it\n"
    assert kept.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == [kept.name]
    assert _cam(baseline, images, tmp_path, "--overwrite") == 0
    assert Image.open(kept).format == "PNG" and len(list(tmp_path.iterdir())) == 4


def test_two_images_of_one_name_are_refused(baseline, images, tmp_path, capsys):
    twins = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for twin, image in zip(twins, images):
        twin.parent.mkdir()
        shutil.copy(image, twin)
    assert _cam(baseline, twins, tmp_path / "cams") == 1
    assert capsys.readouterr().err == (f"error: {twins[0]} and {twins[1]} would both be written to "
                                       f"{tmp_path / 'cams' / 'x_Hat.png'}; give them in separate commands with "
                                       "different output folders\n")
    assert not (tmp_path / "cams").exists()
