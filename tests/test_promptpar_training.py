"""PromptPAR on the shared engine: run folder, trained-only checkpoints, evaluation, resume, CLI, torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import parlab
from parlab.errors import ConfigError
from parlab.files import file_sha256
from parlab.inference import load_model
from parlab.methods.promptpar import PromptPARConfig, train_promptpar
from parlab.models import create_clip
from parlab.runs import open_run
from parlab.training.checkpoint import CheckpointError, load_checkpoint
from parlab.training.config import split_config

REPO = Path(__file__).resolve().parents[1]
MODEL_ARGS = ["--clip-model", "parlab-clip-tiny", "--vis-prompt", "10", "--vis-depth", "4", "--image-size", "64",
              "32", "--warmup-epochs", "0", "--prompt-warmup-epochs", "0", "--batch-size", "16", "--device", "cpu",
              "--no-progress"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        clip = create_clip("parlab-clip-tiny", None)
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(clip.state_dict(), path)
    return path


def _configs(root: Path, clip: Path, out: Path, **changes):
    """(run, data, method): the paper's optimisation (PromptPARConfig's defaults) on a tiny CLIP, for 2 epochs."""
    return split_config(PromptPARConfig, root=str(root), image_size=(64, 32), epochs=2, batch_size=16,
                        warmup_epochs=0, device="cpu", output_dir=str(out), clip_model="parlab-clip-tiny",
                        weights=str(clip), vis_prompt=10, vis_depth=4, prompt_warmup_epochs=0, **changes)


@pytest.fixture(scope="module")
def run(synthpa_root, clip_file, tmp_path_factory):
    configs = _configs(synthpa_root, clip_file, tmp_path_factory.mktemp("pp") / "run", ema=True, ema_decay=0.5)
    return train_promptpar(*configs, progress=False, log=lambda _: None)


def test_run_writes_trained_parameters_only_tied_to_the_base_file(run, clip_file):
    assert run.method_name == "PromptPAR" and run.method.clip_model == "parlab-clip-tiny"
    assert len(run.method.attribute_sentences) == 26
    assert run.method.image_size == run.data.image_size == (64, 32)  # the model's input is the data's
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run.output_dir / name)
        assert ckpt["base_weights"]["sha256"] == file_sha256(clip_file)
        assert not any(k.startswith("clip.") for k in ckpt["model"]) and "prompts" in ckpt["model"]
    last = load_checkpoint(run.output_dir / "last.pt")
    assert set(last["ema"]) == set(last["model"])
    assert len(last["optimizer"]["param_groups"]) == 2  # heads and prompts
    record = json.loads((run.output_dir / "config.json").read_text())
    assert record["method_name"] == "PromptPAR" and record["method"]["vis_prompt"] == 10
    assert record["method"]["ema"] is True and record["data"]["image_size"] == [64, 32]
    # Trained parameters are well under a tenth of the tiny CLIP's own weights.
    assert (run.output_dir / "best.pt").stat().st_size < clip_file.stat().st_size / 10


def test_evaluate_rebuilds_the_model_and_matches_the_run(run):
    metrics = parlab.evaluate(run.output_dir / "best.pt")
    assert metrics.summary() == pytest.approx(run.test.summary(), abs=1e-9)
    again = open_run(run.output_dir, device="cpu")
    assert again.method_name == "PromptPAR" and again.test.summary() == pytest.approx(run.test.summary(), abs=1e-9)


def test_other_base_weights_are_refused(run, clip_file, tmp_path):
    other = tmp_path / "other.pt"
    state = torch.load(clip_file, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="base CLIP weights"):
        load_model(run.output_dir / "best.pt", clip_weights=str(other))
    done = subprocess.run([sys.executable, "-m", "parlab", "evaluate", str(run.output_dir / "best.pt"),
                           "--clip-weights", str(other)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and "base CLIP weights" in done.stderr


def test_resume_after_epoch_one_ends_with_the_same_parameters(synthpa_root, clip_file, tmp_path):
    whole = train_promptpar(*_configs(synthpa_root, clip_file, tmp_path / "whole"), progress=False,
                            log=lambda _: None)
    run, data, model = _configs(synthpa_root, clip_file, tmp_path / "cut")
    train_promptpar(run, data, model, progress=False, log=lambda _: None)
    # Roll the second run back to its epoch-1 checkpoint, then resume it.
    cut = tmp_path / "cut"
    (cut / "previous.pt").replace(cut / "last.pt")
    (cut / "metrics.json").unlink()
    resumed = train_promptpar(run, data, model, existing="resume", progress=False, log=lambda _: None)
    a, b = load_checkpoint(whole.output_dir / "last.pt")["model"], load_checkpoint(cut / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test.summary() == pytest.approx(whole.test.summary(), abs=1e-9)
    with pytest.raises(CheckpointError, match="different method config"):
        train_promptpar(run, data, PromptPARConfig(**{**model.to_dict(), "ag_threshold": 0.3}), existing="resume",
                        progress=False, log=lambda _: None)


def test_unused_baseline_fields_are_refused():
    with pytest.raises(ConfigError, match="unknown config field 'backbone'"):
        split_config(PromptPARConfig, backbone="resnet50")


@pytest.mark.slow
def test_cli_under_torchrun_matches_single_process_evaluation(synthpa_root, clip_file, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "parlab", "promptpar", "--root", str(synthpa_root), "--weights",
           str(clip_file), "--epochs", "2", "--output-dir", str(out), *MODEL_ARGS]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    distributed = json.loads((out / "metrics.json").read_text())["test"]
    assert parlab.evaluate(out / "best.pt").summary() == pytest.approx(distributed, abs=1e-6)


def test_bf16_autocast_trains_with_finite_losses(synthpa_root, clip_file, tmp_path):
    run = train_promptpar(*_configs(synthpa_root, clip_file, tmp_path / "bf16", amp="bf16", train_limit=48),
                          progress=False, log=lambda _: None)
    assert np.isfinite(run.history["train_loss"]).all()
    assert len(run.history) == 2 and run.test.summary()["ma"] > 0
