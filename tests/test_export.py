"""ONNX export: the file reproduces parlab.predict, carries its metadata, has a dynamic batch, is written atomically."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install parlab[onnx])")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install parlab[onnx])")

from PIL import Image

import parlab
from parlab.data import load_dataset
from parlab.data.images import IMAGENET_MEAN, IMAGENET_STD, TRANSFORMS, load_rgb
from parlab.errors import ParlabError
from parlab.export import ExportReport, export_onnx, export_safetensors, preprocess
from parlab.inference import load_model
from parlab.training import BaselineConfig, load_checkpoint, train
from parlab.training.config import split_config


def _train(root: Path, out: Path, **changes):
    configs = split_config(BaselineConfig, root=str(root), backbone="test_resnet", image_size=(64, 32), epochs=1,
                           batch_size=16, device="cpu", output_dir=str(out), **changes)
    return train(*configs, progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def baseline(synthpa_root, tmp_path_factory):
    run = _train(synthpa_root, tmp_path_factory.mktemp("runs") / "baseline")
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return run.output_dir / "best.pt", export_onnx(run.output_dir / "best.pt", out)


@pytest.fixture(scope="module")
def stage1(synthpa_root, tmp_path_factory) -> Path:
    """best.pt of a baseline with FRDL's attribute-feature head: FRDL's stage 1."""
    return _train(synthpa_root, tmp_path_factory.mktemp("runs") / "stage1", head="attribute").output_dir / "best.pt"


@pytest.fixture(scope="module")
def frdl(stage1, tmp_path_factory):
    """A one-epoch FRDL stage 2 on :func:`stage1` and its ONNX export."""
    from parlab.methods.frdl_config import FRDLConfig
    from parlab.methods.frdl_training import train_frdl

    run, _, method = split_config(FRDLConfig, stage1=str(stage1.parent), epochs=1, balance_start=1, batch_size=16,
                                  bank_size=64, eval_batch_size=64, device="cpu",
                                  output_dir=str(tmp_path_factory.mktemp("runs") / "frdl"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="balanced batches cannot balance")  # the small SynthPA's
        result = train_frdl(run, method, progress=False, log=lambda _: None)
    out = tmp_path_factory.mktemp("onnx") / "frdl.onnx"
    return result.output_dir / "best.pt", export_onnx(result.output_dir / "best.pt", out)


@pytest.fixture(scope="module")
def promptpar(synthpa_root, tmp_path_factory):
    """A tiny PromptPAR run on PromptPAR's own input pipeline (letterboxed to a square) and its ONNX export."""
    pytest.importorskip("onnxscript", reason="PromptPAR export needs onnxscript (pip install parlab[onnx])")
    from parlab.methods.promptpar import PromptPARConfig, train_promptpar
    from parlab.models import create_clip

    folder = tmp_path_factory.mktemp("promptpar")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        clip = create_clip("parlab-clip-tiny", None)
    torch.save(clip.state_dict(), folder / "clip.pt")
    configs = split_config(PromptPARConfig, root=str(synthpa_root), image_size=(64, 32), epochs=1, batch_size=16,
                           warmup_epochs=0, device="cpu", output_dir=str(folder / "run"),
                           clip_model="parlab-clip-tiny", weights=str(folder / "clip.pt"), vis_prompt=10,
                           vis_depth=4, prompt_warmup_epochs=0, transform="promptpar")
    run = train_promptpar(*configs, progress=False, log=lambda _: None)
    return run.output_dir / "best.pt", export_onnx(run.output_dir / "best.pt", folder / "promptpar.onnx")


def _image_files(root: Path, folder: Path) -> list[Path]:
    """SynthPA test images: three enlarged to JPEGs past twice the 64x32 input (where a reduced-scale JPEG decode
    would start), one of them wider than tall (letterboxed the other way), and two as they are."""
    ann = load_dataset("synthpa", root)
    sources = [ann.image_path(r) for r in ann.split("test")[:5]]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (source, size) in enumerate(zip(sources, [(200, 400), (160, 480), (300, 150)])):  # PIL's (W, H)
        files.append(folder / f"cam{i}" / f"{i:04d}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        with Image.open(source) as img:
            img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(files[-1], quality=92)
        with Image.open(files[-1]) as img:  # these files are where libjpeg's draft mode would decode smaller
            img.draft("RGB", (32, 64))
            assert img.size != size
    return files + sources[3:]


def _recipe_by_hand(path: Path, metadata: dict[str, str]) -> np.ndarray:
    """The steps of ``parlab.preprocess`` written with PIL and numpy alone, as a user without parlab would."""
    (h, w), resize = json.loads(metadata["parlab.input_size"]), json.loads(metadata["parlab.resize"])
    mean, std = (np.asarray(json.loads(metadata[f"parlab.{k}"]), dtype=np.float32) for k in ("mean", "std"))
    with Image.open(path) as img:
        img = img.convert("RGB")
    if resize == "letterbox":
        side = max(img.size)
        square = Image.new("RGB", (side, side))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = square
    x = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    return ((x - mean) / std).transpose(2, 0, 1)[None]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("method", ["baseline", "frdl", "promptpar"])
def test_onnx_on_image_files_through_the_documented_preprocessing_equals_predict(method, request, synthpa_root,
                                                                                 tmp_path):
    checkpoint, report = request.getfixturevalue(method)
    session = _session(report.output)
    metadata = session.get_modelmeta().custom_metadata_map  # all a user of the .onnx file has
    files = _image_files(synthpa_root, tmp_path / "images")
    loaded = load_model(checkpoint)
    images = np.concatenate([preprocess(f, metadata) for f in files])
    assert images.shape == (len(files), 3, 64, 32) and images.dtype == np.float32
    # The reference preprocessing is parlab's own evaluation transform, to the bit, and the recipe as written.
    np.testing.assert_array_equal(images, torch.stack([loaded.transform(load_rgb(f)) for f in files]).numpy())
    np.testing.assert_allclose(images, np.concatenate([_recipe_by_hand(f, metadata) for f in files]), rtol=0,
                               atol=1e-6)
    (logits,) = session.run(["logits"], {"images": images})
    table = parlab.predict(checkpoint, files)
    probs = _sigmoid(logits)
    np.testing.assert_allclose(probs, table[[f"prob.{a}" for a in loaded.attributes]].to_numpy(), rtol=0, atol=1e-4)
    labels = (probs > np.asarray(json.loads(metadata["parlab.thresholds"]))).astype(np.int8)
    assert (labels == table[[f"label.{a}" for a in loaded.attributes]].to_numpy()).mean() > 0.99


def test_the_recipe_in_the_metadata_names_each_step_and_preprocess_reads_it(baseline, promptpar, synthpa_root,
                                                                            tmp_path):
    stretched, letterboxed = (_metadata(report.output) for _, report in (baseline, promptpar))
    assert json.loads(stretched["parlab.resize"]) == "stretch"
    assert json.loads(letterboxed["parlab.resize"]) == "letterbox"
    assert json.loads(letterboxed["parlab.mean"]) == pytest.approx(TRANSFORMS["promptpar"]["mean"])
    for meta in (stretched, letterboxed):
        recipe = meta["parlab.preprocess"]
        assert "in full" in recipe and "BILINEAR" in recipe and "width 32, height 64" in recipe
        assert "(N, 3, 64, 32) float32" in recipe and "parlab.export.preprocess" in recipe
    assert "black" in letterboxed["parlab.preprocess"] and "black" not in stretched["parlab.preprocess"]
    # A wide image is padded above and below: the letterboxed input's top rows are black, the stretched one's not.
    wide = _image_files(synthpa_root, tmp_path)[2]
    black = (0 - np.asarray(TRANSFORMS["promptpar"]["mean"])) / np.asarray(TRANSFORMS["promptpar"]["std"])
    np.testing.assert_allclose(preprocess(wide, letterboxed)[0, :, 0, :], np.repeat(black[:, None], 32, 1), atol=1e-6)
    assert not np.allclose(preprocess(wide, stretched)[0, :, 0, 0], (0 - np.asarray(IMAGENET_MEAN)) / IMAGENET_STD)
    with Image.open(wide) as img:  # a PIL image: the same as its file
        np.testing.assert_array_equal(preprocess(img, stretched), preprocess(wide, stretched))


def test_preprocess_refuses_metadata_that_is_not_parlabs(baseline, tmp_path):
    meta = _metadata(baseline[1].output)
    for broken, match in (({k: v for k, v in meta.items() if k != "parlab.std"}, "no parlab.std"),
                          (meta | {"parlab.resize": '"crop"'}, "parlab.resize is 'crop'; known: stretch, letterbox"),
                          (meta | {"parlab.mean": "[0.5,"}, "parlab.mean is not JSON")):
        with pytest.raises(ParlabError, match=match) as err:
            preprocess(Image.new("RGB", (20, 40)), broken)
        assert "\n" not in str(err.value)


def test_report_describes_the_file(baseline):
    _, report = baseline
    assert isinstance(report, ExportReport) and report.output.is_file()
    assert report.image_size == (64, 32) and report.num_attributes == 26 and report.opset == 17
    assert 0 <= report.max_abs_diff <= 1e-4
    line = report.summary()
    assert "\n" not in line and line.startswith(str(report.output)) and "26 attributes, input 64x32" in line
    assert "max |onnx - torch| = " in line


def test_metadata_holds_what_a_consumer_needs(baseline):
    checkpoint, report = baseline
    ckpt = load_checkpoint(checkpoint)
    meta = _metadata(report.output)
    assert json.loads(meta["parlab.attributes"]) == list(ckpt["attributes"])
    thresholds = ckpt.get("thresholds") or [0.5] * len(ckpt["attributes"])
    assert json.loads(meta["parlab.thresholds"]) == pytest.approx(list(thresholds))
    assert json.loads(meta["parlab.input_size"]) == [64, 32]
    assert json.loads(meta["parlab.mean"]) == pytest.approx(list(IMAGENET_MEAN))
    assert json.loads(meta["parlab.std"]) == pytest.approx(list(IMAGENET_STD))
    assert meta["parlab.version"] == parlab.__version__
    assert meta["parlab.method"] == "baseline" and meta["parlab.backbone"] == "test_resnet"


def test_batch_axis_is_dynamic(baseline):
    checkpoint, report = baseline
    session = _session(report.output)
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "logits"
    model = load_model(checkpoint).model
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (5, 26)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_written_atomically_and_replaced_whole(baseline, tmp_path):
    checkpoint, report = baseline
    assert sorted(p.name for p in report.output.parent.iterdir()) == ["model.onnx"]  # no temporary left
    target = tmp_path / "out" / "again.onnx"
    target.parent.mkdir()
    target.write_bytes(b"an older export")
    export_onnx(checkpoint, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["again.onnx"]
    assert _metadata(target)["parlab.backbone"] == "test_resnet"


def test_a_disagreeing_export_is_an_error_and_writes_nothing(baseline, tmp_path):
    checkpoint, _ = baseline
    with pytest.raises(ParlabError, match=r"disagrees with PyTorch.*atol") as info:
        export_onnx(checkpoint, tmp_path / "strict.onnx", atol=-1.0)  # no difference passes a negative atol
    assert str(checkpoint) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "best.pt"
    bogus.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ParlabError, match="best.pt"):
        export_onnx(bogus, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_missing_onnxruntime_says_how_to_install(baseline, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ParlabError, match=r"pip install parlab\[onnx\]"):
        export_onnx(baseline[0], tmp_path / "model.onnx")


def test_frdl_head_model_exports(stage1, tmp_path):
    report = export_onnx(stage1, tmp_path / "frdl.onnx")
    assert report.max_abs_diff <= 1e-4 and report.num_attributes == 26
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    (logits,) = _session(report.output).run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = load_model(stage1).model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_promptpar_exports_with_a_dynamic_batch(promptpar):
    checkpoint, report = promptpar
    assert report.max_abs_diff <= 1e-4 and report.image_size == (64, 32)
    meta = _metadata(report.output)
    assert meta["parlab.method"] == "PromptPAR" and meta["parlab.backbone"] == "parlab-clip-tiny"
    assert json.loads(meta["parlab.std"]) == pytest.approx(list(TRANSFORMS["promptpar"]["std"]))
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    (logits,) = _session(report.output).run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = load_model(checkpoint).model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


# --- timm's safetensors layout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["linear", "linear_bn"])
def test_safetensors_export_loads_in_timm_with_parlabs_logits_and_inputs(head, baseline, synthpa_root, tmp_path):
    import timm
    from timm.data import create_transform, resolve_data_config

    best = baseline[0] if head == "linear" else _train(synthpa_root, tmp_path / "run", head=head).output_dir / "best.pt"
    loaded = load_model(best)
    if head == "linear_bn":  # trained statistics, so that folding the BatchNorm is not the identity
        assert not torch.allclose(loaded.model.head.bn.running_var, torch.ones(26))
    out = tmp_path / "timm"
    report = export_safetensors(best, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert report.checked_with == "timm" and report.opset is None and 0 <= report.max_abs_diff <= 1e-5
    assert "max |timm - torch|" in report.summary()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 26
    assert config["label_names"] == list(loaded.attributes)
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0
    assert config["pretrained_cfg"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert config["parlab"]["thresholds"] == pytest.approx(list(loaded.thresholds))
    assert config["parlab"]["resize"] == "stretch" and config["parlab"]["method"] == "baseline"

    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = loaded.model(x)
        by_folder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm's loaders, no parlab
        torch.testing.assert_close(by_folder(x), expected, rtol=0, atol=1e-5)
        by_name = timm.create_model("test_resnet", num_classes=26)
        timm.models.load_checkpoint(by_name, str(out / "model.safetensors"))
        torch.testing.assert_close(by_name.eval()(x), expected, rtol=0, atol=1e-5)
    # timm's own eval transform, configured from the file, prepares an image as parlab does.
    timm_transform = create_transform(**resolve_data_config(model=by_folder))
    for path in _image_files(synthpa_root, tmp_path / "images"):
        with Image.open(path) as img:
            torch.testing.assert_close(timm_transform(img.convert("RGB")), loaded.transform(load_rgb(path)),
                                       rtol=0, atol=1e-6)


def test_safetensors_export_of_a_model_timm_cannot_hold_is_one_line_naming_what_can(stage1, frdl, promptpar,
                                                                                     tmp_path):
    for checkpoint, what in ((stage1, "AttributeFeatureHead"), (frdl[0], "AttributeFeatureHead"),
                             (promptpar[0], "PromptPAR")):
        with pytest.raises(ParlabError, match=f"'linear' or 'linear_bn' head.*{what}.*--format onnx") as err:
            export_safetensors(checkpoint, tmp_path / "timm")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "timm").exists()


def test_the_export_command_writes_safetensors_and_keeps_existing_files(baseline, tmp_path, capsys):
    from parlab.cli import main

    best, out = baseline[0], tmp_path / "timm"
    assert main(["export", str(best), "--format", "safetensors", "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 26 attributes")
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(best), "--format", "safetensors", "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == \
        f"error: {out} holds model.safetensors, config.json; pass --overwrite to replace"
    assert main(["export", str(best), "--format", "safetensors", "--output", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == before  # the same model, written again


def test_the_export_command_prints_the_check_and_keeps_an_existing_file(baseline, tmp_path, capsys):
    from parlab.cli import main

    out = tmp_path / "cli.onnx"
    best, _ = baseline
    assert main(["export", str(best), "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ") and "max |onnx - torch|" in line
    assert main(["export", str(best), "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {out} exists; pass --overwrite to replace it"
