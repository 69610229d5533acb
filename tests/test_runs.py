"""The run folder as one contract: earlier layouts open, a run reruns from its own config.json, one metric unit,
an overwrite removes what the run wrote and nothing else, and the notebooks' run names."""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from parlab.cli import main
from parlab.inference import evaluate, load_model
from parlab.runs import RUNS, collect_runs, open_run, read_record, run_dir, written_files
from parlab.training import load_checkpoint
from parlab.training.checkpoint import state_digest
from parlab.training.config import BaselineConfig, DataConfig, RunFields

REPO = Path(__file__).resolve().parents[1]
# Run folders written by parlab before the configs were split into run, data and method (one flat "config",
# the method's name under "method", its config under "method_config"), with their dataset named "synthpa"
# relative to the folder that holds them: the session's small SynthPA (200 images, seed 3).
LAYOUT1 = Path(__file__).parent / "fixtures" / "layout1"
QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture
def layout1(synthpa_root, tmp_path, monkeypatch) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(LAYOUT1, runs)
    (runs / "synthpa").symlink_to(synthpa_root)
    monkeypatch.chdir(runs)
    return runs


@pytest.mark.parametrize("folder,method_name", [("baseline", "baseline"), ("frdl", "FRDL"),
                                                 ("promptpar", "PromptPAR")])
def test_a_run_of_the_first_layout_opens_with_the_results_it_recorded(layout1, folder, method_name):
    recorded = json.loads((layout1 / folder / "metrics.json").read_text())
    run = open_run(folder, device="cpu")
    assert run.method_name == method_name and run.run.seed == 0 and run.data.root == "synthpa"
    assert run.test.summary() == pytest.approx(recorded["test"], abs=1e-9)
    assert run.test_tuned.summary() == pytest.approx(recorded["test_tuned_thresholds"], abs=1e-9)
    assert run.run.output_dir == folder  # where it is now


def test_a_runs_select_on_of_earlier_versions_is_its_protocol():
    from parlab.training.record import upgrade_record

    for select_on, protocol in (("val", "honest"), ("test", "reference")):
        layout1 = {"config": {"select_on": select_on, "epochs": 2, "root": "x"}, "method": "baseline"}
        layout2 = {"method_name": "baseline", "run": {"select_on": select_on, "epochs": 2}, "data": {}, "method": {}}
        for record in (layout1, layout2):
            run = upgrade_record(record, BaselineConfig)["run"]
            assert run == {"protocol": protocol, "epochs": 2} and RunFields.from_dict(run).protocol == protocol


def test_first_layout_records_upgrade_to_three_configs(layout1):
    from parlab.methods.frdl_training import FRDLTask

    old = read_record("frdl")
    assert "config" in old and old["method"] == "FRDL"
    task = FRDLTask.from_record(old, "frdl/config.json")
    # The flat config was stage 1's: it gives the data and the stage-1 network.
    assert task.data == DataConfig.from_dict({k: v for k, v in old["config"].items() if k in task.data.to_dict()})
    assert task.model_config.backbone == "test_resnet" and task.model_config.head == "attribute"
    assert task.method.bank_size == old["method_config"]["bank_size"] == 16
    assert task.run.output_dir == "frdl" and task.run.epochs == 1


@pytest.mark.parametrize("folder", ["baseline", "frdl"])
def test_a_first_layout_best_pt_loads_and_scores_what_its_run_recorded(layout1, folder):
    loaded = load_model(f"{folder}/best.pt")
    recorded = json.loads((layout1 / folder / "metrics.json").read_text())["test"]
    assert loaded.data.image_size == (64, 32) and loaded.model_config.backbone == "test_resnet"
    # Those runs decoded SynthPA's 128x64 JPEGs at half scale for their 64x32 input; every image is now decoded
    # in full (the pixels an ONNX user feeds), so the scores agree to within a point, not to the last digit.
    assert evaluate(loaded).summary() == pytest.approx(recorded, abs=1.0)


def test_a_first_layout_config_json_reruns_the_same_run(layout1):
    assert main(["train", "--config", "baseline/config.json", "--output-dir", "again", "--no-progress"]) == 0
    # The same settings spelled as options today (images decode in full now, so not the recorded weights).
    assert main(["train", "--root", "synthpa", "--backbone", "test_resnet", "--lr", "1e-3", "--epochs", "1",
                 "--batch-size", "16", "--eval-batch-size", "64", "--device", "cpu", "--image-size", "64", "32",
                 "--tune-thresholds", "--output-dir", "spelled", "--no-progress"]) == 0
    new, spelled = (load_checkpoint(f"{f}/best.pt") for f in ("again", "spelled"))
    assert state_digest(new["model"]) == state_digest(spelled["model"])
    assert new["method"] == spelled["method"] == BaselineConfig(backbone="test_resnet", lr=1e-3).to_dict()
    assert new["run"] == spelled["run"] | {"output_dir": "again"} and new["data"] == spelled["data"]


@pytest.fixture(scope="module")
def baseline(synthpa_root, tmp_path_factory):
    from parlab.training import train

    out = tmp_path_factory.mktemp("runs") / "baseline_bce"
    return train(RunFields(epochs=1, batch_size=16, device="cpu", tune_thresholds=True, output_dir=str(out)),
                 DataConfig(root=str(synthpa_root), image_size=(64, 32)),
                 BaselineConfig(backbone="test_resnet", lr=1e-3), **QUIET)


def test_a_runs_config_json_reruns_it_and_varies_it(baseline, tmp_path):
    source = baseline.output_dir / "config.json"
    assert main(["train", "--config", str(source), "--output-dir", str(tmp_path / "same"), "--no-progress"]) == 0
    first, again = (load_checkpoint(f / "best.pt") for f in (baseline.output_dir, tmp_path / "same"))
    assert state_digest(again["model"]) == state_digest(first["model"])
    assert json.loads((tmp_path / "same" / "metrics.json").read_text())["test"] == \
        json.loads((baseline.output_dir / "metrics.json").read_text())["test"]
    # Options on the command line win over the file's.
    assert main(["train", "--config", str(source), "--output-dir", str(tmp_path / "varied"), "--lr", "0.01",
                 "--no-progress"]) == 0
    varied = read_record(tmp_path / "varied")
    assert varied["method"]["lr"] == 0.01 and varied["run"] == again["run"] | {"output_dir": str(tmp_path / "varied")}


def test_a_config_json_of_another_method_is_refused(baseline, capsys):
    assert main(["frdl", "--config", str(baseline.output_dir / "config.json")]) == 1
    assert "a run of baseline, which parlab frdl does not train" in capsys.readouterr().err


def test_every_metric_a_run_writes_is_in_percent(baseline):
    out = baseline.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "test_per_attribute.csv", index_col="attribute")
    assert metrics["unit"] == "percent"
    assert metrics["test"]["ma"] == pytest.approx(100 * baseline.test.ma)
    fractions = baseline.test.per_attribute
    for column in ("ma", "tpr", "tnr", "precision", "recall", "f1", "positive_ratio"):
        np.testing.assert_allclose(table[f"{column} (%)"], 100 * fractions[column])
    np.testing.assert_allclose(table["threshold"], 0.5)  # a probability, not a metric
    log = pd.read_csv(out / "log.csv")
    assert log["val_ma"].iloc[-1] == pytest.approx(baseline.history["val_ma"].iloc[-1])
    assert 1 < log["val_ma"].iloc[-1] <= 100


def test_config_json_lists_the_files_the_run_wrote(baseline):
    record = read_record(baseline.output_dir)
    on_disk = {p.name for p in baseline.output_dir.iterdir()} - {".lock"}
    assert on_disk <= set(record["files"])
    assert set(written_files(baseline.output_dir)) == set(record["files"])


def test_an_overwrite_removes_what_the_run_wrote_and_nothing_else(synthpa_root, tmp_path):
    from parlab.training import train

    out = tmp_path / "run"
    configs = (RunFields(epochs=1, batch_size=16, device="cpu", output_dir=str(out)),
               DataConfig(root=str(synthpa_root), image_size=(64, 32)), BaselineConfig(backbone="test_resnet"))
    train(*configs, **QUIET)
    (out / "notes.txt").write_text("mine")
    (out / "label_prior.csv").write_text("of an FRDL run that lived here")
    record = read_record(out)
    record["files"] += ["label_prior.csv", "../outside.txt", "/etc/hostname"]
    (out / "config.json").write_text(json.dumps(record))
    (tmp_path / "outside.txt").write_text("not the run's")
    train(replace(configs[0], epochs=1), *configs[1:], existing="overwrite", **QUIET)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "label_prior.csv").exists()  # listed by the run that wrote it
    assert (tmp_path / "outside.txt").exists()  # a record names files in its folder only


def test_a_folder_of_the_first_layout_is_cleared_of_its_methods_files(layout1):
    names = written_files(layout1 / "frdl")
    assert "label_prior.csv" in names and "best.pt" in names and "config.json" in names


def test_the_notebooks_name_runs_through_runs(layout1):
    assert run_dir("runs", "FRDL", seed=2) == Path("runs/frdl_seed2")
    assert run_dir("runs", "baseline BCE") == Path("runs/baseline_bce")
    with pytest.raises(Exception, match="a seed is needed"):
        run_dir("runs", "PromptPAR")
    for name in ("promptpar_seed0", "promptpar_seed1", "promptpar_use_div_seed0"):
        shutil.copytree(layout1 / "promptpar", layout1 / "train" / name)
    found = collect_runs(layout1 / "train", ["PromptPAR", "PromptPAR without use_div", "FRDL"], device="cpu")
    assert {k: len(v) for k, v in found.items()} == {"PromptPAR": 2, "PromptPAR without use_div": 1}
    # No notebook types a run folder: they name runs by their label in RUNS.
    for notebook in sorted((REPO / "notebooks").glob("0[3-7]_*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                         if c["cell_type"] == "code")
        typed = [pattern.split("{")[0] for pattern in RUNS.values() if f'"{pattern.split("{")[0]}' in code
                 or f"/{pattern.split('{')[0]}" in code]
        assert not typed, f"{notebook.name} types run folders {typed}"


def test_no_training_module_imports_a_method():
    """Imports run one way: methods build on the engine, never the engine on a method."""
    for path in (REPO / "parlab" / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("parlab.methods") for n in names), f"{path.name} imports {names}"


def test_the_public_surface_is_at_the_top_of_the_package():
    import parlab
    from parlab.data import load_dataset
    from parlab.training.engine import train

    assert (parlab.load_dataset, parlab.train, parlab.open_run) == (load_dataset, train, open_run)
    assert parlab.evaluate is evaluate and {"predict", "evaluate", "open_run"} <= set(parlab.__all__)


def test_results_tables_name_each_runs_protocol_and_starting_weights(baseline):
    from parlab.results import repeated_settings_table, results_table

    row = results_table({"baseline": baseline}).loc["baseline"]
    assert (row["weights"], row["protocol"], row["backbone"]) == ("none (random)", "honest", "test_resnet")
    assert "instance F1" in row and row["instance F1"] == pytest.approx(100 * baseline.test.instance_f1)
    repeated = repeated_settings_table({"baseline": [baseline]})
    assert (repeated["protocol"] == "honest").all() and "instance F1" in repeated.columns


@pytest.mark.parametrize("threshold", [float("nan"), 5.0, 0.0, -0.2])
def test_predict_and_evaluate_refuse_a_threshold_outside_0_1_in_one_line(baseline, threshold, capsys):
    from parlab.inference import predict

    best = baseline.output_dir / "best.pt"
    for call in (lambda: predict(best, baseline.data.root, threshold=threshold),
                 lambda: evaluate(best, threshold=threshold)):
        with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
            call()
    assert main(["evaluate", str(best), "--threshold", str(threshold)]) == 1
    assert capsys.readouterr().err.strip() == f"error: threshold must be a number in (0, 1), got {threshold}"
