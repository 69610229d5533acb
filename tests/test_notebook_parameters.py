"""Notebook parameters: relative paths from the repository wherever papermill runs, lists given as text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from parlab.data import load_dataset
from parlab.errors import ConfigError
from parlab.parameters import as_lists, attributes_in, in_repository, repository

REPO = Path(__file__).resolve().parents[1]


def test_relative_paths_are_read_from_the_repository_wherever_the_process_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repository() == REPO
    assert in_repository("figures") == str(REPO / "figures")
    assert in_repository("runs/train", "/abs/data", "") == (str(REPO / "runs" / "train"), "/abs/data", "")
    assert in_repository("~/data") == str(Path.home() / "data")


def test_lists_given_as_text_are_read_as_lists():
    assert as_lists(seeds="[0, 1]") == [0, 1]
    assert as_lists(image_size=[64, 32], seeds=(0,), methods='["FRDL", "PromptPAR"]') == \
        ([64, 32], [0], ["FRDL", "PromptPAR"])
    for wrong in ("0, 1", "3", 3):
        with pytest.raises(ConfigError, match=r"parameter 'seeds' must be a list such as \[0, 1\]"):
            as_lists(seeds=wrong)


def test_attributes_the_dataset_lacks_are_named_and_skipped(synthpa_root):
    ann = load_dataset("synthpa", synthpa_root)
    said = []
    assert attributes_in(ann, ["Hat", "Wings", "Female"], log=said.append) == ["Hat", "Female"]
    assert said == ["synthpa has no attribute Wings: skipped"]
    assert attributes_in(ann, ["Wings"], n=2, log=said.append) == list(ann.attributes[:2])
    assert said[-1] == f"using synthpa's first 2 attributes instead: {', '.join(ann.attributes[:2])}"


def _papermill(notebook: str, cwd: Path, output: Path, *parameters: str) -> None:
    done = subprocess.run([sys.executable, "-m", "papermill", notebook, str(output), "--no-progress-bar",
                           *[item for pair in zip(["-p"] * len(parameters[::2]), parameters[::2], parameters[1::2])
                             for item in pair]], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture()
def scratch():
    """A folder under the repository's (git-ignored) runs/, given to the notebooks as a relative path."""
    relative = f"runs/test-parameters-{uuid.uuid4().hex[:8]}"
    yield relative
    shutil.rmtree(REPO / relative, ignore_errors=True)


@pytest.mark.slow
def test_papermill_from_the_repository_root_and_from_notebooks_writes_to_the_same_place(synthpa_root, scratch,
                                                                                        tmp_path):
    for cwd, notebook in ((REPO, "notebooks/02_label_imbalance.ipynb"),
                          (REPO / "notebooks", "02_label_imbalance.ipynb")):
        figures = f"{scratch}/{cwd.name}"
        # SynthPA is written in PA100k's format: read as such, the notebook leaves the session's folder alone
        # (as "synthpa" it would regenerate it at its own default size).
        _papermill(notebook, cwd, tmp_path / "out.ipynb", "dataset", "pa100k", "root", str(synthpa_root),
                   "figures_dir", figures, "interactive", "False")
        assert (REPO / figures / "pa100k_label_summary.csv").is_file()
    assert not (REPO / "notebooks" / scratch).exists()  # nothing under the working directory
    assert not (REPO.parent / "figures" / "pa100k_label_summary.csv").exists()
    assert len(load_dataset("synthpa", synthpa_root).image_names) == 200  # the session's folder, untouched


@pytest.mark.slow
def test_papermill_list_parameters_given_as_text_train(synthpa_root, scratch, tmp_path):
    _papermill("notebooks/03_baseline.ipynb", REPO, tmp_path / "out.ipynb", "dataset", "pa100k", "root",
               str(synthpa_root), "backbone", "test_resnet", "image_size", "[32, 16]", "epochs", "1", "warmup_epochs", "0",
               "image_cache", "", "runs_dir", f"{scratch}/train", "figures_dir", f"{scratch}/figures",
               "progress", "False", "device", "cpu")
    config = json.loads((REPO / scratch / "train" / "baseline_bce" / "config.json").read_text())
    assert config["data"]["image_size"] == [32, 16]
