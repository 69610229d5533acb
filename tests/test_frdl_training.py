"""FRDL stage 2 and GOAT end to end on a small SynthPA, and GOAT's pieces on hand-made inputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import parlab
from parlab.data import load_dataset
from parlab.labelstats import positive_ratio
from parlab.methods.frdl_config import FRDLConfig, frdl_defaults
from parlab.methods.frdl_training import FRDLTask, _positive_prior, load_stage1, train_frdl
from parlab.methods.goat import GOAT, flood_levels, flooded_bce
from parlab.models import build_model
from parlab.training import BaselineConfig, CheckpointError, load_checkpoint, train
from parlab.training.config import DataConfig, RunFields, split_config

REPO = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "log": lambda _: None}
# The small SynthPA has an attribute without training positives; that warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:balanced batches cannot balance")


@pytest.fixture(scope="module")
def stage1(synthpa_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "run"
    train(*split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", head="attribute",
                        image_size=(64, 32), epochs=2, batch_size=16, lr=1e-3, device="cpu", output_dir=str(out)),
          **QUIET)
    return out


def stage2(stage1: Path, out: Path, **changes) -> tuple[RunFields, FRDLConfig]:
    """(run, method) of a small stage 2; ``changes``: fields of either."""
    base = dict(stage1=str(stage1), epochs=3, balance_start=1, batch_size=16, lr=1e-3, bank_size=64,
                eval_batch_size=64, device="cpu", output_dir=str(out))
    run, _, method = split_config(FRDLConfig, **(base | changes))
    return run, method


@pytest.fixture(scope="module")
def frdl(stage1, tmp_path_factory):
    return train_frdl(*stage2(stage1, tmp_path_factory.mktemp("frdl") / "run", tune_thresholds=True), **QUIET)


def test_run_folder_holds_a_baseline_runs_files_and_the_label_priors(frdl):
    for name in ("config.json", "log.csv", "last.pt", "previous.pt", "best.pt", "metrics.json",
                 "test_per_attribute.csv", "test_predictions.npz", "label_prior.csv"):
        assert (frdl.output_dir / name).is_file(), name


def test_every_file_records_the_method_and_its_configs_under_one_key_each(frdl, stage1):
    out = frdl.output_dir
    record = json.loads((out / "config.json").read_text())
    assert frdl.method_name == record["method_name"] == "FRDL"
    stage1_method = BaselineConfig.from_dict(load_checkpoint(stage1 / "best.pt")["method"])
    assert frdl.model_config == stage1_method and stage1_method.head == "attribute"
    for ckpt in (record, load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")):
        assert ckpt["method_name"] == "FRDL" and ckpt["stage1"]["weights_sha256"]
        assert FRDLConfig.from_dict(ckpt["method"]) == frdl.method
        assert RunFields.from_dict(ckpt["run"]) == frdl.run and DataConfig.from_dict(ckpt["data"]) == frdl.data
        assert BaselineConfig.from_dict(ckpt["stage1"]["method"]) == stage1_method
        assert not {"frdl_config", "method_config", "config", "seed"} & set(ckpt)


def test_best_pt_is_stage1_bit_for_bit_with_new_classifiers(frdl, stage1):
    best, first = load_checkpoint(frdl.output_dir / "best.pt"), load_checkpoint(stage1 / "best.pt")
    classifiers = {k for k in best["model"] if k.startswith("head.classifiers.")}
    assert classifiers == {"head.classifiers.weight", "head.classifiers.bias"}
    assert all(torch.equal(best["model"][k], first["model"][k]) for k in best["model"] if k not in classifiers)
    assert not torch.equal(best["model"]["head.classifiers.weight"], first["model"]["head.classifiers.weight"])


def test_the_saved_model_on_images_gives_the_numbers_of_the_cached_features(frdl):
    assert parlab.evaluate(frdl.output_dir / "best.pt").summary() == pytest.approx(frdl.test.summary(), abs=1e-6)


def test_tuned_thresholds_are_kept_in_best_pt(frdl):
    best = load_checkpoint(frdl.output_dir / "best.pt")
    assert frdl.test_tuned is not None and len(best["thresholds"]) == 26
    assert best["thresholds"] == pytest.approx(frdl.thresholds.tolist())


def test_last_pt_holds_the_heads_only_and_is_not_a_model_to_load(frdl):
    last = load_checkpoint(frdl.output_dir / "last.pt")
    assert set(last["model"]) == {"weight", "bias"}  # h_ft
    with pytest.raises(CheckpointError, match="no complete model"):
        parlab.load_model(frdl.output_dir / "last.pt")


def test_a_finished_run_reopens_with_the_same_results(frdl):
    from parlab.runs import open_run

    again = open_run(frdl.output_dir, device="cpu")
    assert again.method_name == "FRDL" and again.best_epoch == frdl.best_epoch
    assert again.test.summary() == frdl.test.summary()
    reevaluated = open_run(frdl.output_dir, device="cpu", reevaluate=True)  # through the task, stage 1 loaded
    assert (again.run, again.data, again.method, again.model_config) == \
        (reevaluated.run, reevaluated.data, reevaluated.method, reevaluated.model_config)
    assert (again.data, again.method, again.model_config) == (frdl.data, frdl.method, frdl.model_config)
    assert again.val.summary() == reevaluated.val.summary()
    assert again.test_tuned.summary() == reevaluated.test_tuned.summary()


def _before_the_config_split(record: dict) -> dict:
    """A current FRDL record (config.json or checkpoint) as parlab wrote it before run, data and method.

    The flat ``config`` was stage 1's (its data and model fields), ``method`` the label, and ``method_config``
    FRDL's own fields with the run's (FRDLConfig was a RunFields then) and a ``root`` ("": stage 1's).
    """
    record = dict(record)
    run, data, method = (record.pop(key) for key in ("run", "data", "method"))
    stage1 = dict(record.pop("stage1"))
    record |= {"config": data | stage1.pop("method"), "stage1": stage1, "method": record.pop("method_name"),
               "method_config": method | run | {"root": ""}}
    record.pop("files", None)  # not listed then
    return record


def _before_the_shared_engine(record: dict) -> dict:
    """... and before the shared engine: the config under ``frdl_config``, without the fields added since."""
    record = _before_the_config_split(record)
    record["frdl_config"] = record.pop("method_config")
    for field in ("milestones", "gamma", "grad_clip", "goat_weight_decay", "goat_reset_optimizer", "goat_start"):
        record["frdl_config"].pop(field)  # added since
    return record


def test_a_run_in_the_layout_of_earlier_versions_still_opens(frdl, tmp_path):
    """Before the shared engine, FRDL kept its config as ``frdl_config`` and ``h_ft`` in a 'frdl-training' last.pt."""
    import shutil

    from parlab.runs import open_run

    old = tmp_path / "old"
    shutil.copytree(frdl.output_dir, old)
    (old / "val_predictions.npz").unlink()  # not written then: the run is re-evaluated
    record = _before_the_shared_engine(json.loads((old / "config.json").read_text()))
    assert not {"run", "data", "method_config", "method_name"} & set(record) and record["method"] == "FRDL"
    (old / "config.json").write_text(json.dumps(record))
    last = _before_the_shared_engine(load_checkpoint(old / "last.pt"))
    for key in ("scheduler", "scaler", "ema", "method"):
        last.pop(key)
    last |= {"kind": "frdl-training", "h_ft": last.pop("model")}
    torch.save(last, old / "last.pt")
    again = open_run(old, device="cpu")
    assert again.method_name == "FRDL" and again.test.summary() == frdl.test.summary()
    assert (again.data, again.model_config) == (frdl.data, frdl.model_config)
    assert (again.run.epochs, again.run.seed) == (frdl.run.epochs, frdl.run.seed)
    # What such a run did: constant lr, no clipping (the fields added since take those values).
    assert (again.method.milestones, again.method.grad_clip) == ((), 0.0)
    assert replace(again.method, milestones=frdl.method.milestones, grad_clip=frdl.method.grad_clip,
                   goat_weight_decay=frdl.method.goat_weight_decay,
                   goat_reset_optimizer=frdl.method.goat_reset_optimizer) == frdl.method
    last["epoch"] = 1  # an unfinished run of that layout had no best.pt yet: it cannot be continued
    torch.save(last, old / "last.pt")
    with pytest.raises(CheckpointError, match="earlier parlab.*--overwrite"):
        train_frdl(replace(frdl.run, output_dir=str(old)), frdl.method, existing="resume", **QUIET)


def test_heads_saw_natural_then_balanced_labels(frdl, synthpa_root):
    prior = pd.read_csv(frdl.output_dir / "label_prior.csv", index_col="epoch")
    assert prior["balanced"].tolist() == [False, True, True]
    values = prior.drop(columns="balanced")
    ann = load_dataset("synthpa", synthpa_root)
    natural = positive_ratio(ann.labels[ann.split("train")])
    # Epoch 1 trains on every training image once (batches of 16 divide the split or drop one image).
    assert np.abs(values.iloc[0].to_numpy() - natural).max() < 0.02
    # Balanced epochs: about p = 0.5 for every attribute, however rare (sampling error of ~160 draws),
    # except one without positives in this small training split, which keeps its only label.
    balanced = values.iloc[1:].to_numpy()
    absent = natural == 0
    assert absent.sum() == 1 and (balanced[:, absent] == 0).all()
    assert abs(balanced[:, ~absent].mean() - 0.5) < 0.02 and np.abs(balanced[:, ~absent] - 0.5).max() < 0.2
    assert natural[~absent].min() < 0.1  # so the check above means something


def test_cached_views_give_the_recomputing_run(stage1, frdl, tmp_path):
    cached = train_frdl(*stage2(stage1, tmp_path / "cached", feature_cache=3, tune_thresholds=True), **QUIET)
    a, b = (load_checkpoint(r.output_dir / "last.pt") for r in (frdl, cached))
    torch.testing.assert_close(a["model"], b["model"], rtol=1e-4, atol=1e-5)  # h_ft
    assert frdl.history["val_ma"].to_numpy() == pytest.approx(cached.history["val_ma"].to_numpy(), abs=0.5)


def test_stage1_must_use_the_attribute_head_and_not_change_under_a_resume(stage1, synthpa_root, tmp_path):
    plain = tmp_path / "plain"
    train(*split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=(64, 32),
                        epochs=1, batch_size=16, device="cpu", output_dir=str(plain)), **QUIET)
    with pytest.raises(ValueError, match="head='attribute'"):
        load_stage1(plain)
    copy = tmp_path / "stage1"
    copy.mkdir()
    (copy / "best.pt").write_bytes((stage1 / "best.pt").read_bytes())
    config = stage2(copy, tmp_path / "frdl", epochs=1, feature_cache=1)
    train_frdl(*config, **QUIET)
    ckpt = load_checkpoint(copy / "best.pt")
    ckpt["thresholds"] = [0.4] * 26  # the same weights saved again: still the same stage 1
    torch.save(ckpt, copy / "best.pt")
    train_frdl(*config, existing="resume", **QUIET)
    ckpt["model"]["head.classifiers.bias"] += 1.0
    torch.save(ckpt, copy / "best.pt")
    with pytest.raises(CheckpointError, match="stage-1 weights changed"):
        train_frdl(*config, existing="resume", **QUIET)


def test_a_channels_last_stage1_loads_in_its_layout_with_the_same_outputs(stage1, tmp_path):
    ckpt = load_checkpoint(stage1 / "best.pt")
    ckpt["method"]["channels_last"] = True
    torch.save(ckpt, tmp_path / "best.pt")
    plain, nhwc = load_stage1(stage1).model, load_stage1(tmp_path / "best.pt").model
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-5)


class _Stop(Exception):
    pass


def _stop_after_epoch(n: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {n:>3}/"):
            raise _Stop

    return log


def test_goat_run_interrupted_and_resumed_ends_identical(stage1, tmp_path):
    run, config = stage2(stage1, tmp_path / "whole", goat=True, goat_period=4)
    whole = train_frdl(run, config, **QUIET)
    assert "goat_loss" in whole.history and whole.method_name == "FRDL+GOAT"
    assert (whole.output_dir / "flood_levels.csv").is_file()
    cut = replace(run, output_dir=str(tmp_path / "cut"))
    with pytest.raises(_Stop):  # after epoch 2's checkpoint, as a kill would
        train_frdl(cut, config, progress=False, log=_stop_after_epoch(2))
    resumed = train_frdl(cut, config, existing="resume", **QUIET)
    a, b = (load_checkpoint(Path(r.output_dir) / "last.pt") for r in (whole, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # h_ft
    assert all(torch.equal(a["bank"][k], b["bank"][k]) for k in a["bank"])
    assert whole.test.summary() == resumed.test.summary()


def test_goat_restores_stage1_weights_exactly_every_period():
    torch.manual_seed(0)
    stage1 = build_model("test_resnet", 5, head="attribute").eval()
    before = {k: v.clone() for k, v in stage1.state_dict().items()}
    goat = GOAT(stage1, torch.full((5,), 0.3), torch.full((5,), 0.2), period=3, lr=1e-2, reset_optimizer=True)
    x, y = torch.randn(8, 3, 64, 32), (torch.rand(8, 5) < 0.4).float()

    def moved() -> bool:
        state = goat.module.state_dict()
        return any(not torch.equal(state[k], goat.reference[k]) for k in state)

    f, loss = goat.step(x, y)
    assert f.shape == (8, 5, stage1.head.expand.in_features) and not f.requires_grad and np.isfinite(loss)
    assert moved()
    goat.step(x, y)
    assert moved()
    goat.step(x, y)  # the third step ends the excursion
    assert not moved() and not goat.optimizer.state
    # The frozen classifiers never move, and stage 1 itself is untouched.
    assert torch.equal(goat.module.head.classifiers.weight, stage1.head.classifiers.weight)
    assert all(torch.equal(v, before[k]) for k, v in stage1.state_dict().items())


def test_flood_levels_and_flooded_loss_on_hand_made_values():
    logits = np.array([[2.0, 0.0], [-1.0, 1.0], [0.5, -3.0]])
    labels = np.array([[1, 0], [0, -1], [1, 0]])
    b_pos, b_neg = flood_levels(logits, labels)
    bce = lambda z, y: float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(float(y))))  # noqa: E731
    assert b_pos[0] == pytest.approx((bce(2.0, 1) + bce(0.5, 1)) / 2)
    assert b_neg[0] == pytest.approx(bce(-1.0, 0))
    assert b_pos[1] == 0.0  # no positives: no flooding
    assert b_neg[1] == pytest.approx((bce(0.0, 0) + bce(-3.0, 0)) / 2)
    # An element easier than its flood level is pushed towards it (the gradient changes sign).
    z = torch.tensor([[3.0, -3.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0]])
    loss = flooded_bce(z, y, torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.1]))
    loss.backward()
    assert loss.item() == pytest.approx(abs(bce(3.0, 1) - 0.5) + 0.5 + bce(-3.0, 1))
    assert z.grad[0, 0] > 0 and z.grad[0, 1] < 0  # the easy positive goes down, the hard one up


def test_attribute_with_one_label_keeps_it_in_balanced_batches():
    labels = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1]])
    config = FRDLConfig(positive_prior=0.5, balance_start=4)
    with pytest.warns(UserWarning, match="b \\(no positives\\)"):
        prior = _positive_prior(config, 5, labels, ["a", "b", "c"])
    assert prior.tolist() == [0.5, 0.0, 0.5]
    with warnings.catch_warnings():  # a run that never balances has nothing to warn about
        warnings.simplefilter("error")
        assert _positive_prior(config, 4, labels, ["a", "b", "c"]).tolist() == [0.5, 0.0, 0.5]
    assert frdl_defaults("synthpa") == {"run": {}, "method": {}}


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="feature_cache needs a fixed backbone"):
        FRDLConfig(goat=True, feature_cache=2)
    late = FRDLConfig(balance_start=5)  # checked against the run's epochs, when the task is built
    message = r"config field 'balance_start' must be in \[0, epochs=3\], got 5"
    with pytest.raises(ValueError, match=message):
        late.check_schedule(3)
    with pytest.raises(ValueError, match=message):
        FRDLTask(RunFields(epochs=3), DataConfig(), late)
    with pytest.raises(ValueError, match=r"'goat_start' must be in \[0, epochs=3\], got 4"):
        FRDLTask(RunFields(epochs=3), DataConfig(), FRDLConfig(goat=True, goat_start=4, balance_start=3))
    late.check_schedule(5)  # allowed
    FRDLConfig(goat=True, goat_modules="attribute_features", feature_cache=2)  # allowed


@pytest.mark.slow
def test_torchrun_two_processes_gather_before_pushing(stage1, synthpa_root, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # One natural epoch, a bank larger than the split: every pushed entry stays.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "parlab", "frdl", "--stage1", str(stage1), "--epochs", "1",
           "--balance-start", "1", "--batch-size", "16", "--bank-size", "1024", "--device", "cpu", "--no-progress",
           "--output-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    ann = load_dataset("synthpa", synthpa_root)
    train_labels = ann.labels[ann.split("train")]
    assert len(train_labels) % 32 == 0  # two ranks of 16: no padding, no dropped image
    expected = np.stack([(train_labels == 0).sum(0), (train_labels == 1).sum(0)], axis=1)
    # Rank 0's bank holds the features of both ranks' images.
    assert load_checkpoint(out / "last.pt")["bank"]["count"].numpy().tolist() == expected.tolist()
    distributed = json.loads((out / "metrics.json").read_text())["test"]
    assert parlab.evaluate(out / "best.pt").summary() == pytest.approx(distributed, abs=1e-6)


def test_goat_keeps_its_adam_moments_over_a_reset_by_default_and_its_weight_decay_moves_it():
    torch.manual_seed(0)
    stage1 = build_model("test_resnet", 5, head="attribute").eval()
    x, y = torch.randn(8, 3, 64, 32), (torch.rand(8, 5) < 0.4).float()
    kept = GOAT(stage1, torch.full((5,), 0.3), torch.full((5,), 0.2), period=1, lr=1e-2)
    kept.step(x, y)  # the period ends: back to stage 1, moments kept (the public code's Adam is never reset)
    assert kept.optimizer.state and all(torch.equal(v, kept.reference[k]) for k, v in kept.module.state_dict().items())
    # Zero flood levels make the flooded loss the plain BCE; only the decay differs between the two copies.
    copies = {wd: GOAT(stage1, torch.zeros(5), torch.zeros(5), period=10, lr=1e-2, weight_decay=wd)
              for wd in (0.0, 5.0)}
    for goat in copies.values():
        goat.step(x, y)
    w0, w5 = (dict(g.module.named_parameters())["head.expand.weight"] for g in copies.values())
    assert not torch.equal(w0, w5)


def test_stage2_lr_follows_the_milestones_and_natural_epochs_equal_balance_start(stage1, tmp_path):
    run = train_frdl(*stage2(stage1, tmp_path / "steps", epochs=3, balance_start=2, milestones=(1, 2), gamma=0.5,
                             feature_cache=1), **QUIET)
    assert run.history["lr"].tolist() == pytest.approx([1e-3, 5e-4, 2.5e-4])
    prior = pd.read_csv(run.output_dir / "label_prior.csv", index_col="epoch")
    assert prior["balanced"].tolist() == [False, False, True] and (~prior["balanced"]).sum() == 2
    assert run.history["balanced"].tolist() == [False, False, True]


def test_flood_levels_come_from_training_images_augmented_as_epoch_0_draws_them(stage1, synthpa_root, tmp_path):
    from parlab.data.images import PARImageDataset, build_transform
    from parlab.methods.frdl_training import _epoch_view, load_stage1
    from parlab.training.distributed import DistContext
    from parlab.training.evaluation import eval_loader, forward_split

    config, method = stage2(stage1, tmp_path / "goat", epochs=1, goat=True)
    run = train_frdl(config, method, **QUIET)
    written = pd.read_csv(run.output_dir / "flood_levels.csv", index_col="attribute")
    model = load_stage1(stage1).model
    ann = load_dataset("synthpa", synthpa_root)
    rows = ann.split("train")
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    data = SimpleNamespace(annotations=ann, plan=SimpleNamespace(train=rows), images=None)
    logits, order = _epoch_view(model, data, build_transform((64, 32), train=True), 0, config, ctx, False, "")
    b_pos, b_neg = flood_levels(logits.numpy(), ann.labels[order])
    assert written["b_pos"].to_numpy() == pytest.approx(b_pos, abs=1e-5)
    assert written["b_neg"].to_numpy() == pytest.approx(b_neg, abs=1e-5)
    plain = PARImageDataset(ann, rows, build_transform((64, 32), train=False))
    logits, order = forward_split(model, eval_loader(plain, 64, 0, ctx), ctx)
    e_pos, _ = flood_levels(logits.numpy(), ann.labels[order])
    assert np.abs(written["b_pos"].to_numpy() - e_pos).max() > 1e-3  # not the evaluation transform's levels


def test_public_code_schedules_per_dataset():
    assert frdl_defaults("PA100k") == {
        "run": {"epochs": 20, "batch_size": 64},
        "method": {"balance_start": 4, "milestones": (1,), "lr": 1e-4, "weight_decay": 5e-4, "gamma": 0.1,
                   "grad_clip": 10.0}}
    peta, rapv1 = frdl_defaults("peta"), frdl_defaults("rapv1")
    assert (peta["method"]["balance_start"], peta["method"]["milestones"], peta["run"]["epochs"]) == (21, (30,), 35)
    assert (rapv1["method"]["balance_start"], rapv1["method"]["milestones"], rapv1["run"]["epochs"]) == (6, (10,), 18)
    config = FRDLConfig(stage1="x", **peta["method"])
    assert config.milestones == (30,) and RunFields(**peta["run"]).epochs == 35
    config.check_schedule(RunFields(**peta["run"]).epochs)  # balances within the public schedule
    assert FRDLConfig(milestones=[2, 5], gamma=0.5).milestones == (2, 5)
    assert BaselineConfig().head == "linear"
    with pytest.raises(ValueError, match="milestones"):
        FRDLConfig(milestones=(3, 1))
