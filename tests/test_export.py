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

import parlab
from parlab.data import load_dataset
from parlab.data.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from parlab.errors import ParlabError
from parlab.export import ExportReport, export_onnx
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


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_onnx_reproduces_predict_on_real_images(baseline, synthpa_root):
    checkpoint, report = baseline
    loaded = load_model(checkpoint)
    ann = load_dataset("synthpa", synthpa_root)
    files = [ann.image_path(r) for r in ann.split("test")[:6]]
    images = np.stack([loaded.transform(load_rgb(f, loaded.transform.image_size)).numpy() for f in files])
    (logits,) = _session(report.output).run(["logits"], {"images": images})
    table = parlab.predict(loaded, files)
    expected = table[[f"prob.{a}" for a in loaded.attributes]].to_numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), expected, rtol=0, atol=1e-4)
    labels = (1 / (1 + np.exp(-logits.astype(np.float64))) > loaded.thresholds).astype(np.int8)
    assert (labels == table[[f"label.{a}" for a in loaded.attributes]].to_numpy()).mean() > 0.99


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


def test_frdl_head_model_exports(synthpa_root, tmp_path):
    run = _train(synthpa_root, tmp_path / "run", head="attribute")
    report = export_onnx(run.output_dir / "best.pt", tmp_path / "frdl.onnx")
    assert report.max_abs_diff <= 1e-4 and report.num_attributes == 26
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    (logits,) = _session(report.output).run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = load_model(run.output_dir / "best.pt").model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_promptpar_exports_with_a_dynamic_batch(synthpa_root, tmp_path):
    pytest.importorskip("onnxscript", reason="PromptPAR export needs onnxscript (pip install parlab[onnx])")
    from open_clip.constants import OPENAI_DATASET_MEAN

    from parlab.methods.promptpar import PromptPARConfig, train_promptpar
    from parlab.models import create_clip

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        clip = create_clip("parlab-clip-tiny", None)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    configs = split_config(PromptPARConfig, root=str(synthpa_root), image_size=(64, 32), epochs=1, batch_size=16,
                           warmup_epochs=0, device="cpu", output_dir=str(tmp_path / "run"),
                           clip_model="parlab-clip-tiny", weights=str(tmp_path / "clip.pt"), vis_prompt=10,
                           vis_depth=4, prompt_warmup_epochs=0)
    run = train_promptpar(*configs, progress=False, log=lambda _: None)
    report = export_onnx(run.output_dir / "best.pt", tmp_path / "promptpar.onnx")
    assert report.max_abs_diff <= 1e-4 and report.image_size == (64, 32)
    meta = _metadata(report.output)
    assert meta["parlab.method"] == "PromptPAR" and meta["parlab.backbone"] == "parlab-clip-tiny"
    assert json.loads(meta["parlab.mean"]) == pytest.approx(list(OPENAI_DATASET_MEAN))
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    (logits,) = _session(report.output).run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = load_model(run.output_dir / "best.pt").model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_the_export_command_prints_the_check_and_keeps_an_existing_file(baseline, tmp_path, capsys):
    from parlab.cli import main

    out = tmp_path / "cli.onnx"
    best, _ = baseline
    assert main(["export", str(best), "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ") and "max |onnx - torch|" in line
    assert main(["export", str(best), "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {out} exists; pass --overwrite to replace it"
