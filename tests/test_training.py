"""The training engine end to end on a small SynthPA: outputs, exact resume, bad input, CLI, DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import parlab
from parlab.training import BaselineConfig, CheckpointError, TrainingDiverged, load_checkpoint, train
from parlab.training.config import DataConfig, RunFields, split_config

REPO = Path(__file__).resolve().parents[1]


def tiny(root: Path, out: Path, **changes):
    """(run, data, method) of a tiny baseline run; ``changes``: fields of any of the three."""
    base = dict(root=str(root), backbone="test_resnet", image_size=(64, 32), epochs=2, batch_size=16,
                eval_batch_size=64, lr=1e-3, device="cpu", output_dir=str(out))
    return split_config(BaselineConfig, **(base | changes))


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def run(synthpa_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(*tiny(synthpa_root, out, epochs=3, tune_thresholds=True), progress=False, log=lambda _: None)


def test_run_folder_holds_config_log_checkpoints_and_results(run):
    out = run.output_dir
    for name in ("config.json", "log.csv", "last.pt", "previous.pt", "best.pt", "metrics.json",
                 "test_per_attribute.csv", "test_predictions.npz", "val_predictions.npz"):
        assert (out / name).is_file(), name
    record = json.loads((out / "config.json").read_text())
    assert record["method_name"] == "baseline" and record["method"]["backbone"] == "test_resnet"
    assert record["run"]["seed"] == 0 and record["data"]["image_size"] == [64, 32]
    assert not {"config", "method_config", "seed"} & set(record)  # the earlier layout's keys
    assert {"torch", "timm", "numpy", "parlab"} <= set(record["versions"])
    log = pd.read_csv(out / "log.csv")
    assert list(log["epoch"]) == [1, 2, 3]
    assert {"train_loss", "val_loss", "lr", "val_ma", "val_acc", "val_prec", "val_rec", "val_f1"} <= set(log.columns)
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]  # it learns
    assert run.best_epoch == int(log.loc[log["val_ma"].idxmax(), "epoch"])
    last = load_checkpoint(out / "last.pt")
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "method_name", "run", "data", "method",
            "attributes", "thresholds", "versions", "history", "best"} <= set(last)
    for saved in (record, last):  # the configs the run trained with
        assert (RunFields.from_dict(saved["run"]), DataConfig.from_dict(saved["data"]),
                BaselineConfig.from_dict(saved["method"])) == (run.run, run.data, run.method)
    assert last["epoch"] == 3 and len(last["thresholds"]) == 26
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == run.best_epoch and len(best["attributes"]) == 26
    assert best["thresholds"] == pytest.approx(list(run.thresholds))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["ma"] == pytest.approx(run.test.ma * 100)
    assert metrics["test_tuned_thresholds"]["ma"] == pytest.approx(run.test_tuned.ma * 100)
    assert "selected on val" in metrics["selection"]


def test_evaluate_and_predict_agree_with_the_run(run, synthpa_root):
    metrics = parlab.evaluate(run.output_dir / "best.pt")
    assert metrics.ma == pytest.approx(run.test.ma, abs=1e-9)
    assert metrics.summary() == pytest.approx(run.test.summary())
    saved = np.load(run.output_dir / "test_predictions.npz")
    from parlab.data import load_dataset

    ann = load_dataset("synthpa", synthpa_root)
    files = [ann.image_path(r) for r in saved["rows"][:5]]
    table = parlab.predict(run.output_dir / "best.pt", files, threshold=0.5)
    probs = table[[f"prob.{a}" for a in ann.attributes]].to_numpy()
    expected = 1 / (1 + np.exp(-saved["logits"][:5].astype(np.float64)))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    labels = table[[f"label.{a}" for a in ann.attributes]].to_numpy()
    assert np.array_equal(labels, (probs > 0.5).astype(np.int8))
    folder = parlab.predict(run.output_dir / "best.pt", synthpa_root / "data")
    assert len(folder) == 200
    tuned = parlab.predict(run.output_dir / "best.pt", files)  # the run's tuned thresholds
    assert np.array_equal(tuned[[f"label.{a}" for a in ann.attributes]].to_numpy(),
                          (probs > run.thresholds).astype(np.int8))


def _same_result(a, b) -> None:
    for split in ("val", "test", "test_tuned"):
        assert getattr(a, split).summary() == getattr(b, split).summary(), split
        pd.testing.assert_frame_equal(getattr(a, split).per_attribute, getattr(b, split).per_attribute)
    assert np.array_equal(a.thresholds, b.thresholds) and (a.best_epoch, a.selection) == (b.best_epoch, b.selection)
    assert (a.run, a.data, a.method, a.method_name, a.model_config, a.output_dir) == \
        (b.run, b.data, b.method, b.method_name, b.model_config, b.output_dir)
    pd.testing.assert_frame_equal(a.history, b.history)


def test_a_finished_run_opens_from_its_saved_predictions(run, tmp_path):
    import shutil

    from parlab.runs import open_run

    copy = tmp_path / "copy"
    shutil.copytree(run.output_dir, copy)
    reevaluated = open_run(copy, device="cpu", reevaluate=True)
    (copy / "best.pt").unlink()  # the saved predictions are read: no model is built or evaluated
    saved = open_run(copy, device="cpu")
    _same_result(saved, reevaluated)
    assert saved.test.summary() == run.test.summary()
    # Predictions that do not give the metrics metrics.json recorded (a finish killed while writing them) are
    # not read: the run is re-evaluated, which writes them again.
    shutil.copytree(run.output_dir, tmp_path / "stale")
    stale = dict(np.load(tmp_path / "stale" / "val_predictions.npz"))
    np.savez(tmp_path / "stale" / "val_predictions.npz", logits=-stale["logits"], rows=stale["rows"])
    _same_result(open_run(tmp_path / "stale", device="cpu"), replace(reevaluated, output_dir=tmp_path / "stale",
                                                                     run=replace(reevaluated.run,
                                                                                 output_dir=str(tmp_path / "stale"))))
    assert np.array_equal(np.load(tmp_path / "stale" / "val_predictions.npz")["logits"], stale["logits"])
    # A run of an earlier version saved no validation predictions: it is re-evaluated, which saves them.
    earlier = tmp_path / "earlier"
    shutil.copytree(run.output_dir, earlier)
    (earlier / "val_predictions.npz").unlink()
    first = open_run(earlier, device="cpu")
    assert (earlier / "val_predictions.npz").is_file() and first.test.summary() == run.test.summary()
    _same_result(open_run(earlier, device="cpu"), first)


def test_saved_predictions_that_do_not_fit_the_dataset_are_named(run, tmp_path):
    import shutil

    from parlab.errors import RunFolderError
    from parlab.runs import open_run

    copy = tmp_path / "copy"
    shutil.copytree(run.output_dir, copy)
    saved = np.load(copy / "val_predictions.npz")
    np.savez(copy / "val_predictions.npz", logits=saved["logits"], rows=saved["rows"] + 10**6)
    with pytest.raises(RunFolderError, match=r"val_predictions.npz: rows outside the dataset's \d+ annotations"):
        open_run(copy, device="cpu")
    np.savez(copy / "val_predictions.npz", logits=saved["logits"][:, :3], rows=saved["rows"])
    with pytest.raises(RunFolderError, match="val_predictions.npz: 3 attributes, the dataset has 26"):
        open_run(copy, device="cpu")
    (copy / "val_predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(RunFolderError, match="val_predictions.npz: not readable as saved predictions"):
        open_run(copy, device="cpu")


def test_same_seed_same_weights(run, synthpa_root, tmp_path):
    again = train(*tiny(synthpa_root, tmp_path / "again", epochs=3, tune_thresholds=True), progress=False,
                  log=lambda _: None)
    assert same_weights(run.output_dir / "last.pt", again.output_dir / "last.pt")
    other = train(*tiny(synthpa_root, tmp_path / "seed1", epochs=1, seed=1), progress=False, log=lambda _: None)
    first = train(*tiny(synthpa_root, tmp_path / "seed0", epochs=1), progress=False, log=lambda _: None)
    assert not same_weights(other.output_dir / "last.pt", first.output_dir / "last.pt")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "parlab", *args]


def _train_args(root: Path, out: Path, epochs: int = 3) -> list[str]:
    return ["train", "--root", str(root), "--backbone", "test_resnet", "--image-size", "64", "32",
            "--epochs", str(epochs), "--batch-size", "16", "--lr", "1e-3", "--ema", "--ema-decay", "0.9",
            "--device", "cpu", "--no-progress", "--output-dir", str(out)]


# Runs the ``parlab`` command and SIGKILLs it from inside after the second optimiser step of epoch 2, whatever
# the machine's speed: a kill timed from outside raced the tiny epochs (a fast machine finished the run first).
_KILL_IN_EPOCH_2 = """
import os, runpy, signal, sys
from pathlib import Path
from torch.optim.optimizer import register_optimizer_step_post_hook
log, steps = Path(sys.argv[1]) / "log.csv", []
def kill_mid_epoch_2(optimizer, args, kwargs):
    if log.is_file():  # epoch 1's checkpoint is written before its log row
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
register_optimizer_step_post_hook(kill_mid_epoch_2)
sys.argv = ["parlab", *sys.argv[2:]]
runpy.run_module("parlab", run_name="__main__")
"""


@pytest.mark.parametrize("cached", [False, True], ids=["decoded", "image-cache"])
def test_killed_run_resumes_to_identical_weights(synthpa_root, tmp_path, cached):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # The killed run reads the uint8 image cache in the second case: it must still end as the decoding one.
    cache = ("--image-cache", str(tmp_path / "cache")) if cached else ()
    subprocess.run(_cli(*_train_args(synthpa_root, whole)), check=True, capture_output=True, cwd=REPO)
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_EPOCH_2, str(killed), *_train_args(synthpa_root, killed),
                           *cache], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    assert len(pd.read_csv(killed / "log.csv")) == 1
    done = subprocess.run(_cli(*_train_args(synthpa_root, killed), *cache, "--resume"), capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert same_weights(whole / "last.pt", killed / "last.pt")
    a, b = (load_checkpoint(p / "last.pt")["ema"] for p in (whole, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "metrics.json").read_text())["test"] == \
        json.loads((killed / "metrics.json").read_text())["test"]
    assert pd.read_csv(whole / "log.csv")["val_ma"].tolist() == pd.read_csv(killed / "log.csv")["val_ma"].tolist()


def test_truncated_checkpoint_is_a_clear_error_and_previous_stays(synthpa_root, tmp_path):
    cfg = tiny(synthpa_root, tmp_path / "r", epochs=2)
    train(*cfg, progress=False, log=lambda _: None)
    last, previous = tmp_path / "r" / "last.pt", tmp_path / "r" / "previous.pt"
    before = previous.read_bytes()
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or damaged.*previous.pt is untouched"):
        train(*cfg, existing="resume", progress=False, log=lambda _: None)
    assert previous.read_bytes() == before
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(*cfg, progress=False, log=lambda _: None)


def test_resume_with_another_config_names_the_fields(synthpa_root, tmp_path):
    train(*tiny(synthpa_root, tmp_path / "r", epochs=1), progress=False, log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"different method config .*\n  lr: 0.001 vs 0.01"):
        train(*tiny(synthpa_root, tmp_path / "r", epochs=1, lr=0.01), existing="resume", progress=False,
              log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"different data config .*\n  train_limit: 0 vs 32"):
        train(*tiny(synthpa_root, tmp_path / "r", epochs=1, train_limit=32), existing="resume", progress=False,
              log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"different run config .*\n  seed: 0 vs 1"):
        train(*tiny(synthpa_root, tmp_path / "r", epochs=1, seed=1), existing="resume", progress=False,
              log=lambda _: None)


def test_nan_loss_stops_with_step_batch_and_last_checkpoint(synthpa_root, tmp_path, monkeypatch):
    from parlab.training.losses import PARLoss

    calls = {"n": 0}
    original = PARLoss.forward

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = original(self, logits, targets)
        return loss * float("nan") if calls["n"] == 14 else loss  # epoch 2, step 3: 10 steps + 1 validation loss per epoch

    monkeypatch.setattr(PARLoss, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        train(*tiny(synthpa_root, tmp_path / "r", epochs=2, train_limit=160), progress=False, log=lambda _: None)
    message = str(err.value)
    assert "loss is nan at epoch 2, step 3/10" in message
    assert "annotation rows [" in message
    assert f"{tmp_path / 'r' / 'last.pt'} (after epoch 1)" in message


def test_a_model_that_went_non_finite_on_an_epochs_last_step_stops_before_its_metrics(synthpa_root, tmp_path):
    # One step per epoch at an absurd SGD rate: the step's loss is finite, the weights it leaves are not.
    configs = tiny(synthpa_root, tmp_path / "r", epochs=2, train_limit=16, optimizer="sgd", lr=1e38, grad_clip=0.0,
                   scheduler="none", momentum=0.0, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match=r"(weights|outputs on validation) are not finite after epoch 1\b.*"
                                               r"last good checkpoint: none written yet"):
        train(*configs, progress=False, log=lambda _: None)
    assert not (tmp_path / "r" / "best.pt").exists()  # nothing was validated or saved


def test_non_finite_weights_or_batchnorm_statistics_are_named(tmp_path):
    from types import SimpleNamespace

    from parlab.training.engine import check_finite_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    check_finite_weights(SimpleNamespace(model=model), 0, tmp_path)  # finite: nothing to say
    model[1].running_var[1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"weights are not finite after epoch 3 \(first: 1.running_var\)"):
        check_finite_weights(SimpleNamespace(model=model), 2, tmp_path)


def test_ctrl_c_is_one_line_that_says_how_to_continue(monkeypatch, capsys):
    import parlab.cli

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(parlab.cli, "_train", interrupted)
    assert parlab.cli.main(["train", "--epochs", "1"]) == 130
    assert capsys.readouterr().err.strip() == ("error: interrupted (resume a run with --resume: it continues from "
                                               "its last finished epoch)")


def test_checkpoint_on_another_dataset_names_both_attribute_counts(run, tmp_path):
    from formats import write_peta

    write_peta(tmp_path / "PETA.mat")
    with pytest.raises(CheckpointError, match="predicts 26 attributes but dataset peta has 35"):
        parlab.evaluate(run.output_dir / "best.pt", dataset="peta", root=str(tmp_path))


def test_cli_help_predict_and_errors(run, synthpa_root, tmp_path):
    for command in ("train", "evaluate", "predict"):
        out = subprocess.run(_cli(command, "--help"), capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and f"usage: parlab {command}" in out.stdout
    target = tmp_path / "pred.json"
    images = synthpa_root / "data"
    done = subprocess.run(_cli("predict", str(run.output_dir / "best.pt"), str(images), "--output", str(target)),
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    table = json.loads(target.read_text())
    assert len(table) == 200 and all(0 <= v <= 1 for k, v in next(iter(table.values())).items() if k.startswith("prob."))
    bad = subprocess.run(_cli("train", "--backbone", "resnet5", "--root", str(synthpa_root),
                              "--output-dir", str(tmp_path / "bad")), capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "unknown backbone 'resnet5'" in bad.stderr and "resnet50" in bad.stderr


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_evaluation(synthpa_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "parlab", *_train_args(synthpa_root, out, epochs=2)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "config.json").read_text())
    assert record["world_size"] == 2
    log = pd.read_csv(out / "log.csv")
    assert len(log) == 2 and log["train_loss"].iloc[1] < log["train_loss"].iloc[0]
    distributed = json.loads((out / "metrics.json").read_text())["test"]
    single = parlab.evaluate(out / "best.pt").summary()
    assert single == pytest.approx(distributed, abs=1e-6)


def test_bf16_channels_last_ema_and_the_reference_protocol(synthpa_root, tmp_path):
    # At 128x64, not 64x32: torch 2.14.1's oneDNN bf16 convolution on CPUs with AMX returns NaN now and then
    # for a 3x3 stride-2 convolution of a 4x2 map (a ResNet's last stage at 64x32; docs/reliability.md, "Known problems").
    cfg = tiny(synthpa_root, tmp_path / "r", epochs=1, amp="bf16", channels_last=True, ema=True, ema_decay=0.5,
               protocol="reference", train_split="trainval", scheduler="multistep", milestones=(1,),
               image_size=(128, 64))
    run = train(*cfg, progress=False, log=lambda _: None)
    assert np.isfinite(run.history["train_loss"]).all()
    assert {"test_ma", "test_f1"} <= set(run.history.columns)
    assert "reference protocol: trained on trainval, selected on test" in run.selection
    assert run.run.protocol == "reference"
    assert run.history["lr"].iloc[0] == pytest.approx(1e-3)  # the lr epoch 1 trained with
    lr_after = load_checkpoint(run.output_dir / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr_after == pytest.approx(1e-4)  # multistep decayed at milestone 1
    with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
        train(replace(cfg[0], amp="fp16", output_dir=str(tmp_path / "fp16")), *cfg[1:], progress=False,
              log=lambda _: None)


def test_settings_table_standard_row_is_the_run_and_balanced_rows_differ(run):
    from parlab import results

    table = results.settings_table({"tiny": run})
    assert list(table.index.get_level_values("setting")) == list(results.SETTINGS)
    standard = table.loc[("tiny", "standard")]
    assert standard["mA"] == pytest.approx(100 * run.test.ma) and standard["F1"] == pytest.approx(100 * run.test.f1)
    first, random = table.loc[("tiny", "balanced (first)")], table.loc[("tiny", "balanced (random)")]
    assert first["images"] <= standard["images"] and first["mA"] != standard["mA"]
    assert random["images"] <= standard["images"]
    with pytest.raises(ValueError, match="unknown setting"):
        results.test_metrics(run, "balanced")


def test_predict_and_evaluate_outputs_are_checked_first_and_kept_unless_overwritten(run, synthpa_root, tmp_path,
                                                                                  capsys, monkeypatch):
    from parlab import inference
    from parlab.cli import main

    best, images = str(run.output_dir / "best.pt"), str(synthpa_root / "data")
    target = tmp_path / "pred.csv"
    target.write_text("precious\n")
    calls = []
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("no work before the output is checked")))
    for argv in (["predict", best, images, "--output", str(target)],
                 ["predict", best, images, "--output", str(tmp_path / "absent" / "pred.csv")],
                 ["evaluate", best, "--json", str(target)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert target.read_text() == "precious\n" and calls == []
    monkeypatch.undo()
    assert main(["predict", best, images, "--output", str(target), "--overwrite"]) == 0
    assert target.read_text().startswith("image,prob.") and len(target.read_text().splitlines()) == 201
    # A write that fails half-way leaves neither a partial file nor a temporary one.
    def half_then_fail(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    from parlab.cli import write_output
    from parlab.errors import ParlabError

    with pytest.raises(ParlabError, match="no space left on the device of .*; .*out.csv was not written"):
        write_output(tmp_path / "out.csv", half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv"]


def test_a_yaml_lr_written_1e_3_trains_and_ten_epochs_in_words_is_one_line(synthpa_root, tmp_path, capsys):
    from parlab.cli import main

    common = (f"root: {synthpa_root}\nbackbone: test_resnet\nimage_size: [64, 32]\nbatch_size: 16\n"
              "device: cpu\nlr: 1e-3\n")
    (tmp_path / "ok.yaml").write_text(common + f"epochs: 1\noutput_dir: {tmp_path / 'ok'}\n")
    assert main(["train", "--config", str(tmp_path / "ok.yaml"), "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "ok" / "best.pt")["method"]["lr"] == 1e-3
    (tmp_path / "bad.yaml").write_text(common + f"epochs: ten\noutput_dir: {tmp_path / 'bad'}\n")
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: config field 'epochs' must be an integer, got 'ten'"
    assert not (tmp_path / "bad").exists()  # nothing written


def test_the_run_records_the_weights_it_started_from(synthpa_root, tmp_path):
    import hashlib

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=10).state_dict().items()},
              path)
    run = train(*split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", weights=str(path),
                              image_size=(64, 32), epochs=1, batch_size=16, device="cpu",
                              output_dir=str(tmp_path / "run")),
                progress=False, log=lambda _: None)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for record in (json.loads((run.output_dir / "config.json").read_text()),
                   load_checkpoint(run.output_dir / "best.pt"), load_checkpoint(run.output_dir / "last.pt")):
        assert record["backbone_weights"]["sha256"] == digest and record["backbone_weights"]["id"] == str(path)


def test_overwrite_with_a_bad_input_keeps_the_run_it_would_replace(run, tmp_path):
    import shutil
    from dataclasses import replace as changed

    from parlab.data import DatasetError

    folder = tmp_path / "kept"
    shutil.copytree(run.output_dir, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(DatasetError):
        train(changed(run.run, output_dir=str(folder)), changed(run.data, root=str(tmp_path / "no-such-dataset")),
              run.method, existing="overwrite", progress=False, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_overwrite_leaves_no_file_of_another_methods_run(run, tmp_path):
    import shutil

    folder = tmp_path / "was_frdl"
    shutil.copytree(run.output_dir, folder)
    for name in ("label_prior.csv", "flood_levels.csv"):  # what an FRDL+GOAT run leaves besides the run files
        (folder / name).write_text("epoch,Hat\n1,0.5\n")
    # ... and lists in its config.json, which an overwrite removes (and nothing else: notes.txt is no run's).
    record = json.loads((folder / "config.json").read_text())
    record["files"] += ["label_prior.csv", "flood_levels.csv"]
    (folder / "config.json").write_text(json.dumps(record))
    (folder / "notes.txt").write_text("mine\n")
    train(*tiny(Path(run.data.root), folder, epochs=1, train_limit=32), existing="overwrite", progress=False,
          log=lambda _: None)
    assert not (folder / "label_prior.csv").exists() and not (folder / "flood_levels.csv").exists()
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert json.loads((folder / "config.json").read_text())["run"]["epochs"] == 1


def test_a_split_too_small_for_one_batch_is_an_error(synthpa_root, tmp_path):
    from parlab.errors import ConfigError

    with pytest.raises(ConfigError, match="no batch of batch_size 16"):
        train(*split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=(64, 32),
                            epochs=1, batch_size=16, train_limit=1, device="cpu", output_dir=str(tmp_path / "one")),
              progress=False, log=lambda _: None)


def test_json_outputs_write_paths_with_plain_slashes(run, synthpa_root, tmp_path):
    from parlab.cli import main

    images = sorted((synthpa_root / "data").iterdir())[:3]
    folder = tmp_path / "cam1" / "día 2"  # a separator and a non-ASCII name: both written as they are
    folder.mkdir(parents=True)
    files = [folder / image.name for image in images]
    for image, file in zip(images, files):
        file.write_bytes(image.read_bytes())
    target, summary = tmp_path / "pred.json", tmp_path / "eval.json"
    assert main(["predict", str(run.output_dir / "best.pt"), str(folder), "--output", str(target)]) == 0
    assert main(["evaluate", str(run.output_dir / "best.pt"), "--json", str(summary)]) == 0
    text = target.read_text(encoding="utf-8")
    assert "\\/" not in text and "\\u" not in text and f'"{files[0]}"' in text
    table = json.loads(text)
    assert list(table) == [str(f) for f in files]
    expected = parlab.predict(run.output_dir / "best.pt", files)
    assert table[str(files[0])]["prob.Female"] == pytest.approx(expected["prob.Female"].iloc[0], abs=1e-12)
    assert "\\/" not in summary.read_text(encoding="utf-8") and "ma" in json.loads(summary.read_text())["summary"]


def test_tensorboard_logs_every_epoch_number_of_log_csv(synthpa_root, tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package (pip install parlab[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(*tiny(synthpa_root, out, epochs=1, tensorboard=True), progress=False, log=lambda _: None)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    row = pd.read_csv(out / "log.csv").iloc[0]
    logged = {key: value for key, value in row.items() if key != "epoch" and pd.notna(value)}
    assert logged and set(events.Tags()["scalars"]) == set(logged)
    for key, value in logged.items():
        (scalar,) = events.Scalars(key)
        assert scalar.step == 1 and scalar.value == pytest.approx(float(value), rel=1e-6)  # a bool as 0 or 1


def test_tensorboard_without_its_package_is_one_line_before_any_file(synthpa_root, tmp_path, monkeypatch, capsys):
    from parlab.cli import main
    from parlab.errors import ConfigError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now raises ImportError
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^tensorboard=True needs the tensorboard package: "
                                          r"pip install parlab\[tensorboard\]$"):
        train(*tiny(synthpa_root, out, tensorboard=True), progress=False, log=lambda _: None)
    assert main(["train", "--root", str(synthpa_root), "--backbone", "test_resnet", "--output-dir", str(out),
                 "--tensorboard", "--no-progress"]) == 1
    assert capsys.readouterr().err == "error: tensorboard=True needs the tensorboard package: " \
                                      "pip install parlab[tensorboard]\n"
    assert not out.exists()
