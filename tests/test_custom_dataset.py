"""A person's own dataset as labels.csv: it trains, evaluates and predicts like any other; bad tables say where."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from formats import write_table

import parlab
from parlab.data import DatasetError, load_dataset
from parlab.training import BaselineConfig, DataConfig, train
from parlab.training.config import split_config

REPO = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "log": lambda _: None}


def test_the_table_reads_as_a_dataset(custom_root):
    ann = load_dataset("custom", custom_root)
    assert ann.attributes[0].startswith("my_") and ann.labels[0, 0] == -1
    assert {"train", "val", "test"} <= set(ann.splits()) and ann.image_path(0).is_file()
    assert ann.sentences[0] == "a person who is my first attribute"
    assert ann.sentences[1] != ann.sentences[0] and ann.sentences[1]  # made from the column name


def test_it_trains_evaluates_and_predicts_under_its_own_attribute_names(custom_root, tmp_path):
    run = train(*split_config(BaselineConfig, dataset="custom", root=str(custom_root), backbone="test_resnet",
                              image_size=(64, 32), epochs=1, batch_size=16, device="cpu",
                              output_dir=str(tmp_path / "run")), **QUIET)
    assert parlab.evaluate(run.output_dir / "best.pt").summary() == pytest.approx(run.test.summary(), abs=1e-6)
    out = tmp_path / "pred.csv"
    done = subprocess.run([sys.executable, "-m", "parlab", "predict", str(run.output_dir / "best.pt"),
                           str(custom_root / "photos"), "--output", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out, index_col="image")
    first = load_dataset("custom", custom_root).attributes[0]
    assert f"prob.{first}" in table.columns and f"label.{first}" in table.columns and len(table) == 200


def test_without_a_val_split_one_is_carved_from_train(tmp_path):
    rows = [[f"p{i}.jpg", "trainval" if i < 16 else "test", i % 2, (i + 1) % 2] for i in range(20)]
    ann = load_dataset("custom", write_table(tmp_path / "tv", ["image", "split", "a", "b"], rows))
    assert set(ann.splits()) == {"train", "test"} and len(ann.split("train")) == 16
    from parlab.training.splits import resolve_splits

    plan = resolve_splits(ann, DataConfig(dataset="custom", root=str(tmp_path / "tv")))
    assert len(plan.val) == 2 and "carved" in plan.note


@pytest.mark.parametrize("rows, message", [
    ([["a.jpg", "train", "1", "2"]], r"line 2, column b: '2' is not 1, 0 or -1"),
    ([["a.jpg", "training", "1", "0"]], r"line 2, column split: unknown split 'training'"),
    ([["a.jpg", "train", "1", "1"], ["a.jpg", "test", "0", "1"]], r"line 3, column image: 'a.jpg' is also on line 2"),
    ([["a.jpg", "train", "1", "0"], ["b.jpg", "test", "0", "1"]], r"column b: no positive in the training split"),
    ([["../outside.jpg", "train", "1", "1"]], r"'\.\./outside\.jpg' at row 0 has a '\.\.' component"),
    ([["a.jpg", "train", "1"]], r"line 2: 3 values for 4 columns"),
])
def test_bad_tables_are_one_line_errors_naming_line_and_column(tmp_path, rows, message):
    root = write_table(tmp_path / "bad", ["image", "split", "a", "b"], rows)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset("custom", root)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content, message", [
    ("image,split,a\nb\xe9b\xe9.jpg,train,1\n".encode("latin-1"),
     r"labels.csv, line 2: byte 0xe9 is not UTF-8; save the file as UTF-8"),
    ("image,split,a\nx.jpg,train,1\n".encode("utf-16"), r"labels.csv: the file is UTF-16; save it as UTF-8"),
    (b"image,split,a\nx.jpg,train,1\n\"" + b"y" * (1 << 18) + b"\",train,1\n",
     r"labels.csv, line 3: not a readable CSV line \(field larger than field limit"),
])
def test_a_table_in_another_encoding_or_with_a_huge_field_is_one_line(tmp_path, content, message):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset("custom", tmp_path)
    assert "\n" not in str(caught.value)


def test_a_bom_and_the_sentences_table_read_as_before(tmp_path):
    (tmp_path / "labels.csv").write_bytes("image,split,Hat\nx.jpg,train,1\ny.jpg,test,0\n".encode("utf-8-sig"))
    (tmp_path / "sentences.csv").write_text("attribute,sentence\n Hat , A person in a hat \n", encoding="utf-8")
    ann = load_dataset("custom", tmp_path)
    assert ann.attributes == ("Hat",) and ann.sentences == ("A person in a hat",)
    (tmp_path / "sentences.csv").write_bytes("attribute,sentence\nHat,Un chapeau\xe0\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"sentences.csv, line 2: byte 0xe0 is not UTF-8"):
        load_dataset("custom", tmp_path)


def test_a_missing_image_is_found_before_training_and_names_it(custom_root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(custom_root, broken)
    victim = sorted((broken / "photos").iterdir())[5]
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.name):
        train(*split_config(BaselineConfig, dataset="custom", root=str(broken), backbone="test_resnet",
                            image_size=(64, 32), epochs=1, batch_size=16, device="cpu",
                            output_dir=str(tmp_path / "run")), **QUIET)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_notebook_02_runs_on_the_labels_alone(custom_root, tmp_path):
    import papermill as pm

    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    shutil.copy(custom_root / "labels.csv", labels_only / "labels.csv")  # no images at all
    pm.execute_notebook(str(REPO / "notebooks" / "02_label_imbalance.ipynb"), str(tmp_path / "02.ipynb"),
                        parameters={"dataset": "custom", "root": str(labels_only), "figures_dir": str(tmp_path / "f"),
                                    "interactive": False}, cwd=str(REPO / "notebooks"), progress_bar=False,
                        kernel_name="python3")
    summary = pd.read_csv(tmp_path / "f" / "custom_label_summary.csv")
    assert summary["attribute"].iloc[0].startswith("my_")
    assert json.loads((tmp_path / "02.ipynb").read_text())["cells"]
    assert np.isfinite(summary.select_dtypes("number").to_numpy()).any()
