"""The Rethinking_of_PAR pickle writer and the pure pieces of ``benchmarks/reference_parity.py``.

Nothing here needs the network or the public code; the end-to-end check runs only where
``PARLAB_RETHINKING_DIR`` names a Rethinking_of_PAR checkout (with easydict and yacs installed).
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from formats import pickle_as_easydict, rethinking_dict
from parlab.data import load_dataset
from parlab.data.rethinking import write_dataset_pkl

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_parity.py"


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reference_parity", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_parity"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("reference_parity", None)


# --- the writer ------------------------------------------------------------------------------------------

def _plain(value) -> bool:
    """Only what parlab's restricted unpickler rebuilds without easydict: dicts, lists, strings, numbers, arrays."""
    if isinstance(value, dict):
        return type(value) is dict and all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, np.ndarray))


def test_synthpa_round_trips_through_the_rethinking_reader(synthpa_root, tmp_path):
    ann = load_dataset("synthpa", synthpa_root)
    (tmp_path / "crops").symlink_to(ann.image_root, target_is_directory=True)  # a folder of any name, linked
    path = write_dataset_pkl(ann, tmp_path / "dataset_all.pkl", tmp_path / "crops")
    back = load_dataset("rethinking", path)
    assert back.name == "synthpa"
    assert back.image_root == tmp_path / "crops" and back.image_path(0).is_file()
    assert back.image_names.tolist() == ann.image_names.tolist()
    assert back.attributes == ann.attributes
    assert back.raw_attributes == ann.raw_attributes
    assert np.array_equal(back.labels, ann.labels)
    assert np.array_equal(back.raw_labels, ann.raw_labels)
    assert np.array_equal(back.eval_columns, ann.eval_columns)
    assert set(back.splits()) == {"train", "val", "trainval", "test"}
    for split in ann.splits():
        assert np.array_equal(back.split(split), ann.split(split)), split
    assert np.array_equal(back.split("trainval"), np.concatenate([ann.split("train"), ann.split("val")]))


def test_the_pickle_is_plain_and_has_their_layout(synthpa_root, tmp_path):
    ann = load_dataset("synthpa", synthpa_root)
    path = write_dataset_pkl(ann, tmp_path / "dataset_all.pkl")
    with open(path, "rb") as f:
        info = pickle.load(f)
    assert _plain(info)
    assert set(info) >= {"description", "root", "image_name", "label", "attr_name", "label_idx", "partition",
                         "weight_train", "weight_trainval"}
    assert Path(info["root"]).is_absolute() and Path(info["root"], info["image_name"][0]).is_file()
    # Their loader takes the first element of a list as partition 0: one partition must be an array.
    assert all(isinstance(rows, np.ndarray) and rows.dtype == np.int64 for rows in info["partition"].values())
    assert info["label"].shape == (len(ann.image_names), len(ann.raw_attributes))
    assert info["label_idx"]["eval"] == ann.eval_columns.tolist()
    trainval = info["partition"]["trainval"]
    assert np.allclose(info["weight_trainval"], info["label"][trainval].mean(0))


def test_several_partitions_and_groups_round_trip(tmp_path):
    d = rethinking_dict(n=12, partitions=3) | {"dataset_ids": np.arange(12) % 4}
    pickle_as_easydict(d, tmp_path / "in" / "dataset_all.pkl")
    ann = load_dataset("rethinking", tmp_path / "in")
    back = load_dataset("rethinking", write_dataset_pkl(ann, tmp_path / "out" / "dataset_all.pkl"))
    assert len(back.partitions) == 3
    for mine, theirs in zip(back.partitions, ann.partitions):
        assert mine.keys() == theirs.keys()
        assert all(np.array_equal(mine[s], theirs[s]) for s in mine)
    assert np.array_equal(back.groups, ann.groups)
    assert np.array_equal(back.labels, ann.labels)


def test_their_loader_reads_it_as_an_easydict(synthpa_root, tmp_path):
    easydict = pytest.importorskip("easydict", reason="easydict (the public code's dependency) not installed")
    ann = load_dataset("synthpa", synthpa_root)
    with open(write_dataset_pkl(ann, tmp_path / "dataset_all.pkl"), "rb") as f:
        info = easydict.EasyDict(pickle.load(f))
    # What Rethinking_of_PAR's PedesAttr reads.
    labels = info.label[:, info.label_idx.eval]
    assert [info.attr_name[i] for i in info.label_idx.eval] == list(ann.attributes)
    assert np.array_equal(labels[info.partition.trainval], ann.labels[ann.split("trainval")])
    assert info.partition.test.shape[0] == len(ann.split("test"))


# --- the harness's pure pieces ----------------------------------------------------------------------------

def test_difference_and_interval_on_hand_made_numbers(rp):
    c = rp.Comparison((60.0, 61.0, 62.0), (59.0, 61.0, 63.0))
    assert c.difference == pytest.approx(0.0)
    low, high = c.interval
    assert low < 0 < high
    assert low == pytest.approx(-high)  # equal means: symmetric about 0
    assert c.holds()


@pytest.mark.parametrize("ours, theirs, holds", [
    ((60.0, 60.5, 61.0), (60.2, 60.4, 60.9), True),  # within noise
    ((62.0, 62.1, 62.2), (60.0, 60.1, 60.2), False),  # interval excludes 0 and |diff| = 2
    ((60.9, 61.0, 61.1), (60.2, 60.3, 60.4), False),  # |diff| 0.7 <= 1, but the interval excludes 0
    ((58.0, 63.0, 64.0), (59.0, 60.0, 61.0), False),  # the interval holds 0, |diff| 1.67 > 1
])
def test_the_pass_rule(rp, ours, theirs, holds):
    assert rp.Comparison(ours, theirs).holds() is holds


def test_one_seed_uses_only_the_difference_rule(rp):
    close, far = rp.Comparison((60.0,), (60.9,)), rp.Comparison((60.0,), (61.2,))
    assert all(math.isnan(v) for v in close.interval)
    assert close.holds() and not far.holds()


def test_parity_line_format(rp):
    baseline = rp.Comparison((61.0, 62.0, 63.0), (60.0, 61.0, 62.0))
    low, high = baseline.interval
    line = rp.parity_line(baseline, None, 3.2e-6)
    assert line == f"parity: baseline +1.00 [{low:+.2f}, {high:+.2f}]; frdl skipped; promptpar forward 3.20e-06"
    assert rp.parity_line(rp.Comparison((60.0,), (60.5,)), rp.FAILED, None) == \
        "parity: baseline -0.50 [nan, nan]; frdl failed; promptpar forward skipped"


def test_all_hold_counts_only_parts_that_ran(rp):
    good, bad = rp.Comparison((60.0, 60.4), (60.2, 60.3)), rp.Comparison((70.0, 70.1), (60.0, 60.1))
    assert rp.all_hold(good, None, None)
    assert rp.all_hold(None, good, 1e-5)
    assert not rp.all_hold(good, bad, None)
    assert not rp.all_hold(good, rp.FAILED, None)
    assert not rp.all_hold(None, None, 2e-4)
    assert not rp.all_hold(None, None, rp.FAILED)


def test_select_epoch_takes_the_first_best_and_skips_nan(rp):
    assert rp.select_epoch([50.0, 55.0, 55.0, 54.0]) == 1
    assert rp.select_epoch([float("nan"), 51.0, 50.0]) == 1


def test_mean_std(rp):
    assert rp.mean_std((60.0, 62.0)) == "61.00 ± 1.41"
    assert rp.mean_std((60.0,)) == "60.00"


def test_parlab_states_map_onto_their_keys(rp):
    a, c = 3, 4
    baseline = {"backbone.conv1.weight": torch.zeros(2), "head.fc.weight": torch.ones(a, c),
                "head.fc.bias": torch.zeros(a)}
    assert set(rp.rethinking_keys(baseline)) == {"backbone.conv1.weight", "classifier.logits.0.weight",
                                                  "classifier.logits.0.bias"}
    weight = torch.arange(a * c, dtype=torch.float32).reshape(a, c)
    stage1 = {"backbone.bn1.running_mean": torch.zeros(2), "head.expand.weight": torch.zeros(a * c, c),
              "head.bn.weight": torch.ones(a * c), "head.classifiers.weight": weight,
              "head.classifiers.bias": torch.arange(a, dtype=torch.float32)}
    mapped = rp.frdl_keys(stage1)
    assert "module.classifier.separte.0.weight" in mapped and "module.classifier.separte.1.weight" in mapped
    assert torch.equal(mapped["module.classifier.logits.2.weight"], weight[2:3])
    assert mapped["module.classifier.logits.1.bias"].tolist() == [1.0]
    heads = rp.heads_keys(weight, torch.arange(a, dtype=torch.float32))
    assert heads["0.weight"].shape == (1, c) and heads["2.bias"].tolist() == [2.0]
    with pytest.raises(KeyError, match="head.logit_bn"):
        rp.frdl_keys({"head.logit_bn.weight": torch.ones(a)})


def test_frdl_number_leaves_balanced_epochs(rp):
    assert [rp.frdl_number(e) for e in (1, 2, 5, 20)] == [0, 0, 1, 9]


def test_promptpar_switches_are_parlab_config_fields(rp):
    from dataclasses import fields

    from parlab.methods.promptpar import PromptPARConfig

    names = {f.name: f.default for f in fields(PromptPARConfig)}
    assert set(rp.PROMPTPAR_SWITCHES) <= set(names)
    # Each one is a departure from parlab's default (the paper's model as parlab builds it).
    assert all(names[k] != v for k, v in rp.PROMPTPAR_SWITCHES.items())


def test_the_command_line_needs_a_checkout(tmp_path):
    done = subprocess.run([sys.executable, str(HARNESS), "--work", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "nothing to compare" in done.stderr
    done = subprocess.run([sys.executable, str(HARNESS), "--rethinking", str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "not a checkout" in done.stderr


# --- end to end, only with the checkouts ------------------------------------------------------------------

def _checkout(variable: str, code: str) -> str:
    checkout = os.environ.get(variable)
    if not checkout:
        pytest.skip(f"set {variable} to a checkout of {code} to run its code")
    return checkout


def _harness(tmp_path, *options) -> list[str]:
    """The harness at a toy size (one seed, one epoch, 80 images of 32x16, random weights): its output lines."""
    done = subprocess.run([sys.executable, str(HARNESS), *options, "--seeds", "0", "--epochs", "1", "--images", "80",
                           "--image-size", "32", "16", "--batch-size", "16", "--pretrain-epochs", "0",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=900)
    lines = done.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("parity: "), done.stdout + done.stderr
    return lines


def _initial_diffs(lines: list[str]) -> list[float]:
    return [float(line.rsplit("initial forward max|diff| ", 1)[1]) for line in lines if "initial forward" in line]


def test_baseline_part_runs_their_code(tmp_path):
    lines = _harness(tmp_path, "--rethinking", _checkout("PARLAB_RETHINKING_DIR", "Rethinking_of_PAR"))
    assert lines[-1].startswith("parity: baseline ") and "frdl skipped" in lines[-1]
    assert _initial_diffs(lines) and max(_initial_diffs(lines)) < 1e-5  # both start as the same function


def test_frdl_part_runs_their_code(tmp_path):
    lines = _harness(tmp_path, "--rethinking", _checkout("PARLAB_RETHINKING_DIR", "Rethinking_of_PAR"),
                     "--frdl", _checkout("PARLAB_FRDL_DIR", "the FRDL repository"))
    assert "frdl failed" not in lines[-1] and "frdl skipped" not in lines[-1]
    assert max(_initial_diffs(lines)) < 1e-5


def test_promptpar_forward_matches_openpar(tmp_path):
    lines = _harness(tmp_path, "--openpar", _checkout("PARLAB_OPENPAR_DIR", "OpenPAR"))
    forward = lines[-1].rsplit("promptpar forward ", 1)[1]
    assert float(forward) <= 1e-4, "\n".join(lines)
