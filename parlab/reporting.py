"""Results tables of training runs, in the PAR convention (percent, mA / Acc / Prec / Rec / F1).

Every table says how the epoch was selected: numbers selected on test
(the reference practice) are not comparable with numbers selected on
validation, and the ``selection`` column keeps them apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from parlab.data import load_dataset
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.training.engine import RunResult
from parlab.training.evaluation import Predictions

# Test settings of methods.md section 1: the standard one and the label-balanced one of the FRDL
# paper, keeping the first m_j entries (reference) or a seeded random choice.
SETTINGS = {
    "standard": {},
    "balanced (first)": {"balanced": True, "selection": "first"},
    "balanced (random)": {"balanced": True, "selection": "random"},
}

COLUMNS = ["mA", "Acc", "Prec", "Rec", "F1"]


def _percent(summary: dict) -> dict:
    return {"mA": summary["ma"], "Acc": summary["acc"], "Prec": summary["prec"], "Rec": summary["rec"],
            "F1": summary["f1"], "instance F1": summary["instance_f1"]}


def results_table(runs: dict[str, RunResult], dataset: str = "") -> pd.DataFrame:
    """One row per run: test metrics at the fixed threshold, tuned-threshold mA/F1 when available."""
    rows = []
    for name, run in runs.items():
        row = {"method": name, "dataset": dataset or run.config.dataset, "backbone": run.config.backbone,
               "loss": run.config.loss, **_percent(run.test.summary())}
        if run.test_tuned is not None:
            tuned = run.test_tuned.summary()
            row |= {"mA (tuned thr.)": tuned["ma"], "F1 (tuned thr.)": tuned["f1"]}
        row |= {"epochs": run.config.epochs, "best epoch": run.best_epoch, "selection": run.selection}
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def per_attribute_table(runs: dict[str, RunResult], train_ratio: pd.Series) -> pd.DataFrame:
    """Per attribute: training positive ratio, then TPR / TNR / mA of each run on test (percent)."""
    table = pd.DataFrame({"train positive ratio": 100 * train_ratio})
    for name, run in runs.items():
        pa = run.test.per_attribute.reindex(train_ratio.index)
        table[f"{name} TPR"] = 100 * pa["tpr"]
        table[f"{name} TNR"] = 100 * pa["tnr"]
        table[f"{name} mA"] = 100 * pa["ma"]
    return table.sort_values("train positive ratio")


def test_metrics(run: RunResult, setting: str = "standard", seed: int = 0, annotations=None) -> PARMetrics:
    """Metrics of a run's saved test predictions in one of :data:`SETTINGS`, at its fixed threshold.

    ``annotations``: the run's dataset, when the caller has it already (read from the run otherwise).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    saved = np.load(Path(run.output_dir) / "test_predictions.npz")
    preds = Predictions(saved["logits"], saved["rows"])
    if annotations is None:
        annotations = load_dataset(run.config.dataset, run.config.root, run.config.partition)
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=run.config.threshold,
                              attributes=annotations.attributes, seed=seed, **SETTINGS[setting])


def settings_table(runs: dict[str, RunResult], seed: int = 0) -> pd.DataFrame:
    """Test metrics of every run in every setting (rows: run x setting, percent)."""
    rows = []
    for name, run in runs.items():
        annotations = load_dataset(run.config.dataset, run.config.root, run.config.partition)
        for setting in SETTINGS:
            m = test_metrics(run, setting, seed, annotations)
            rows.append({"method": name, "setting": setting, **_percent(m.summary()), "images": m.num_images})
    return pd.DataFrame(rows).set_index(["method", "setting"])
