"""Differences between methods with 95% intervals: over seeds when both sides were repeated (paired on the same
seeds), else a bootstrap over runs and then images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from parlab.data import load_dataset
from parlab.results import differences, differences_text, repeated_settings_table, with_differences
from parlab.training import BaselineConfig, RunResult
from parlab.training.config import split_config


def _fake_run(folder: Path, root: Path, probs: np.ndarray, rows: np.ndarray, name: str, seed: int = 0) -> RunResult:
    out = folder / name
    out.mkdir(parents=True)
    logits = np.log(probs / (1 - probs)).astype(np.float32)
    np.savez(out / "test_predictions.npz", logits=logits, rows=rows)
    run, data, method = split_config(BaselineConfig, root=str(root), head="linear", seed=seed)
    return RunResult(out, run, data, method, pd.DataFrame(), 1, "val", None, None, None,
                     np.full(probs.shape[1], 0.5), 0.0, model_config=method)


@pytest.fixture(scope="module")
def runs(synthpa_root, tmp_path_factory):
    ann = load_dataset("synthpa", synthpa_root)
    rows = ann.split("test")
    gt = ann.labels[rows]
    folder = tmp_path_factory.mktemp("comparisons")
    rng = np.random.default_rng(1)

    def noisy(flip: float, seed: int) -> np.ndarray:
        # Right with probability 1 - flip per entry.
        wrong = np.random.default_rng(seed).random(gt.shape) < flip
        right = np.where(gt == 1, 0.8, 0.2)
        return np.where(wrong, 1 - right, right) + rng.uniform(-0.01, 0.01, gt.shape)

    return {"good": [_fake_run(folder, synthpa_root, noisy(0.05, s), rows, f"good{s}", s) for s in range(3)],
            "bad": [_fake_run(folder, synthpa_root, noisy(0.45, 10 + s), rows, f"bad{s}", s) for s in range(3)],
            "other seeds": [_fake_run(folder, synthpa_root, noisy(0.45, 30 + s), rows, f"other{s}", 5 + s)
                            for s in range(3)],
            "spread": [_fake_run(folder, synthpa_root, noisy(flip, 40), rows, f"spread{flip}", s)
                       for s, flip in enumerate((0.05, 0.25, 0.45))],
            "single": [_fake_run(folder, synthpa_root, noisy(0.45, 20), rows, "single")],
            "same": [_fake_run(folder, synthpa_root, noisy(0.05, 0), rows, "same")]}


def test_a_clear_gain_is_called_one_and_no_difference_is_not(runs):
    table = differences(runs, references=["bad", "single"], draws=500)
    good_vs_bad = table.loc[("good", "bad")]
    assert good_vs_bad["verdict"] == "gain" and good_vs_bad["low"] > 0 and good_vs_bad["interval"] == "seeds (3, paired t)"
    assert table.loc[("other seeds", "bad"), "interval"] == "seeds (3 vs 3, Welch t)"
    assert table.loc[("bad", "single"), "interval"].startswith("runs (3 vs 1) then 20 test images")
    assert table.loc[("same", "single"), "interval"].startswith("bootstrap over 20 test images")
    # The same decisions as seed 0 of "good": a difference of zero, whose interval is over images.
    same = differences({"same": runs["same"], "good0": runs["good"][:1]}, references=["good0"], draws=500)
    row = same.loc[("same", "good0")]
    assert row["mA difference"] == 0 and row["low"] == row["high"] == 0 and row["verdict"] == "no difference"
    assert table.loc[("single", "bad"), "verdict"] in ("no difference", "loss", "gain")  # defined, not NaN


def test_differences_sit_on_the_standard_rows_and_read_as_text(runs):
    settings = repeated_settings_table({"good": runs["good"], "bad": runs["bad"]}, tuned=("good",))
    assert ("good (tuned thr.)", "standard") in settings.index and settings["head"].eq("linear").all()
    diffs = differences({"good": runs["good"], "bad": runs["bad"]}, references=["bad"], tuned=("good",), draws=200)
    merged = with_differences(settings, diffs)
    assert merged.loc[("good", "standard"), "mA - bad verdict"] == "gain"
    assert np.isnan(merged.loc[("good", "balanced (first)"), "mA - bad"])
    assert differences_text(diffs).loc["good", "bad"].endswith("gain")


def test_unknown_references_are_named(runs):
    from parlab.errors import ConfigError

    with pytest.raises(ConfigError, match="stage 2: not among the methods good, bad"):
        differences({"good": runs["good"], "bad": runs["bad"]}, references=["stage 2"])


def test_a_method_at_tuned_thresholds_can_be_the_reference(runs):
    table = differences({"good": runs["good"], "bad": runs["bad"]}, references=["bad (tuned thr.)"],
                        tuned=("bad",), draws=200)
    assert ("good", "bad (tuned thr.)") in table.index and ("bad", "bad (tuned thr.)") in table.index


def test_ablation_sentences_say_help_only_beyond_the_spread(runs):
    from scipy import stats

    from parlab.results import component_sentences

    def sentences_of(groups):
        diffs = differences(groups, references=["full"], draws=300)
        return component_sentences(diffs, repeated_settings_table(groups), "full"), diffs

    # Three seeds on both sides, the same ones: the paired t interval decides.
    sentences, _ = sentences_of({"full": runs["good"], "without prompts": runs["bad"]})
    assert sentences["prompts"].endswith(": it helps.") and "paired t" in sentences["prompts"]
    sentences, _ = sentences_of({"full": runs["bad"], "without prompts": runs["good"]})
    assert sentences["prompts"].endswith(": it hurts.")
    # One run against three seeds: also held against the full model's seed spread.
    groups = {"full": runs["good"], "without prompts": runs["bad"][:1], "without mask": runs["same"]}
    sentences, diffs = sentences_of(groups)
    std = repeated_settings_table(groups).loc[("full", "standard"), "mA std"]
    half = stats.t.ppf(0.975, 2) * std * np.sqrt(1 + 1 / 3)
    assert f"may differ by ±{half:.2f} by chance" in sentences["mask"]
    mask = diffs.loc[("without mask", "full")]
    expected = "it hurts" if mask["verdict"] == "gain" and abs(mask["mA difference"]) > half else \
        "it helps" if mask["verdict"] == "loss" and abs(mask["mA difference"]) > half else "within the spread"
    assert expected in sentences["mask"]
    assert diffs.loc[("without prompts", "full"), "mA difference"] < -half  # far beyond the spread
    assert sentences["prompts"].endswith(": it helps.")
    # One run each: the spread is unknown and said so.
    sentences, _ = sentences_of({"full": runs["good"][:1], "without mask": runs["same"]})
    assert sentences["mask"] == ("removing it changes mA by +0.00 [+0.00, +0.00] (bootstrap over 20 test images "
                                 "(300 draws)); the seed spread is not measured (one run): within the spread: "
                                 "not shown to help.")


def test_ablation_sentences_at_each_operating_point_and_for_a_change_that_removes_nothing(runs):
    from parlab.results import TUNED, component_sentences

    groups = {"full": runs["good"], "without prompts": runs["good"], "twice the epochs": runs["bad"]}
    settings = repeated_settings_table(groups, tuned=tuple(groups))
    diffs = differences(groups, references=["full", "full" + TUNED], tuned=tuple(groups), draws=200)
    for reference in ("full", "full" + TUNED):
        sentences = component_sentences(diffs, settings, reference)
        assert list(sentences.index) == ["prompts", "twice the epochs"]  # one operating point: no "(tuned thr.)" keys
        assert sentences["twice the epochs"].startswith("it changes mA by -")
        assert sentences["twice the epochs"].endswith(": a loss.")
        assert sentences["prompts"].startswith("removing it changes mA by +0.00")
        assert sentences["prompts"].endswith("within the spread: not shown to help.")


def test_ranking_table_orders_methods_by_their_scores_whatever_the_threshold(runs):
    from parlab.results import FixedModel, ranking_table
    from parlab.runs import saved_test_predictions

    preds = saved_test_predictions(runs["good"][0])
    fixed = {"copy of good seed 0": FixedModel(rows=preds.rows, probs=preds.probs)}
    table = ranking_table({"good": runs["good"], "bad": runs["bad"]}, fixed=fixed)
    assert list(table.index) == ["copy of good seed 0", "good", "bad"]
    assert table.loc["good", "AUC"] > table.loc["bad", "AUC"] + 20 and table.loc["good", "runs"] == 3
    assert table.loc["good", "mA at best test thresholds"] >= table.loc["bad", "mA at best test thresholds"]
    assert np.isnan(table.loc["copy of good seed 0", "AUC std"]) and table.loc["good", "AUC std"] > 0
    # The same scores, as logits or as probabilities: the same order, the same AUC.
    single = ranking_table({"good0": runs["good"][:1]})
    assert single.loc["good0", "AUC"] == pytest.approx(table.loc["copy of good seed 0", "AUC"])


def test_paired_and_hierarchical_intervals():
    from parlab.stats import hierarchical_interval, paired_interval

    assert paired_interval(np.array([1.0, 2, 3]), np.array([0.0, 1, 2])) == (1.0, 1.0)  # the same gain every seed
    low, high = paired_interval(np.array([1.0, 2, 3]), np.zeros(3))  # 2 +- t(2) * 1 / sqrt(3)
    assert (low, high) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-5)
    # No image noise: the interval is the runs' spread alone; a side of one run adds none.
    runs_only = np.tile([0.0, 10.0], (4000, 1))
    low, high = hierarchical_interval(runs_only, np.full((4000, 1), 5.0))
    assert (low, high) == (-5.0, 5.0)
    assert hierarchical_interval(np.full((100, 3), 7.0), np.full((100, 1), 5.0)) == (2.0, 2.0)


def test_a_single_run_against_repeated_seeds_holds_their_spread(runs):
    table = differences({"spread": runs["spread"], "single": runs["single"], "same": runs["same"]},
                        references=["single"], draws=1000)
    spread, same = table.loc[("spread", "single")], table.loc[("same", "single")]
    # Seeds scoring far apart widen the interval well beyond what resampling 20 images alone gives.
    assert spread["high"] - spread["low"] > 1.5 * (same["high"] - same["low"])


def test_a_fixed_model_enters_as_a_method_and_as_a_reference(runs):
    from parlab.errors import ConfigError
    from parlab.results import FixedModel
    from parlab.runs import saved_test_predictions

    preds = saved_test_predictions(runs["good"][0])
    fixed = {"probe": FixedModel(preds.rows[::-1], preds.probs[::-1])}  # order does not matter
    table = differences({"good": runs["good"][:1], "bad": runs["bad"]}, references=["probe"], draws=300,
                        fixed=fixed)
    row = table.loc[("good", "probe")]
    assert row["mA difference"] == 0 and row["low"] == row["high"] == 0
    assert table.loc[("bad", "probe"), "verdict"] == "loss"
    assert differences({"good": runs["good"]}, references=["good"], draws=100, fixed=fixed).loc[
        ("probe", "good"), "interval"].startswith("runs (1 vs 3)")
    with pytest.raises(ConfigError, match="probe: its test images are not those of the runs compared"):
        differences({"good": runs["good"]}, references=["good"], fixed={"probe": FixedModel(preds.rows[:5],
                                                                                             preds.probs[:5])})


def test_fixed_models_round_trip_and_sit_in_the_settings_table(runs, synthpa_root, tmp_path):
    from parlab.results import FixedModel, fixed_settings_table, load_fixed_models, save_fixed_models
    from parlab.runs import saved_test_predictions

    preds = saved_test_predictions(runs["good"][0])
    models = {"probe": FixedModel(preds.rows, preds.probs, 0.4, parameters=27, head="linear probe"),
              "zero-shot": FixedModel(preds.rows, 1 - preds.probs, head="sentence vs negation")}
    back = load_fixed_models(save_fixed_models(tmp_path / "baselines.npz", models))
    assert list(back) == ["probe", "zero-shot"] and load_fixed_models(tmp_path / "absent.npz") == {}
    for name, model in models.items():
        got = back[name]
        assert np.array_equal(got.rows, model.rows) and np.array_equal(got.probs, model.probs)
        assert (got.threshold, got.parameters, got.head) == (model.threshold, model.parameters, model.head)
    table = fixed_settings_table(back, load_dataset("synthpa", synthpa_root))
    run_table = repeated_settings_table({"good0": runs["good"][:1]})
    # The same probabilities at the same threshold score what the run scores.
    same = fixed_settings_table({"p": FixedModel(preds.rows, preds.probs)}, load_dataset("synthpa", synthpa_root))
    assert same.loc[("p", "standard"), "mA"] == pytest.approx(run_table.loc[("good0", "standard"), "mA"])
    assert table.loc[("probe", "standard"), "head"] == "linear probe" and np.isnan(table.loc[("probe", "standard"),
                                                                                              "mA std"])
    assert table.loc[("zero-shot", "standard"), "mA"] < 50  # the inverted probabilities
    assert fixed_settings_table({}, load_dataset("synthpa", synthpa_root)).empty  # a run without them
