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

# Test settings of docs/methods.md section 1: the standard one and the label-balanced one of the FRDL
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
    """One row per run: test metrics at the fixed threshold, tuned-threshold mA/F1 when available.

    ``loss`` is the loss of the run's model config (for FRDL, the stage-1 loss).
    """
    rows = []
    for name, run in runs.items():
        row = {"method": name, "dataset": dataset or run.config.dataset, "training": run.method,
               "backbone": getattr(run.method_config, "clip_model", run.config.backbone), "loss": run.config.loss, **_percent(run.test.summary())}
        if run.test_tuned is not None:
            tuned = run.test_tuned.summary()
            row |= {"mA (tuned thr.)": tuned["ma"], "F1 (tuned thr.)": tuned["f1"]}
        row |= {"epochs": len(run.history), "best epoch": run.best_epoch, "selection": run.selection}
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


def repeated_settings_table(runs: dict[str, list[RunResult]], seed: int = 0) -> pd.DataFrame:
    """Test metrics of repeated runs (e.g. seeds) per method and setting: mean, sample std and count.

    Rows: (method, setting); columns: each of mA/Acc/Prec/Rec/F1, then its "std", then "runs"
    (std is NaN for a single run). Percent.
    """
    rows = []
    for method, group in runs.items():
        per_run = settings_table({str(i): run for i, run in enumerate(group)}, seed)
        for setting in SETTINGS:
            values = per_run.xs(setting, level="setting")
            row = {"method": method, "setting": setting}
            for column in COLUMNS:
                row[column] = values[column].mean()
                row[f"{column} std"] = values[column].std(ddof=1) if len(group) > 1 else np.nan
            rows.append(row | {"runs": len(group)})
    return pd.DataFrame(rows).set_index(["method", "setting"])


def mean_std_text(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A :func:`repeated_settings_table` as "mean ± std" strings, for display and LaTeX."""
    text = pd.DataFrame(index=table.index)
    for column in COLUMNS:
        mean, std = table[column], table[f"{column} std"]
        text[column] = [f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
                        for m, s in zip(mean, std)]
    text["runs"] = table["runs"]
    return text


def latex_table(table: pd.DataFrame, caption: str = "", label: str = "tab:results", digits: int = 2) -> str:
    """A :func:`repeated_settings_table` as a paper-style LaTeX table (booktabs), best mean per column bold.

    Rows are methods; the standard and each label-balanced setting are column groups of mA and F1
    (the other metrics in the standard setting only, as papers print them).
    """
    text = mean_std_text(table, digits)
    settings = list(dict.fromkeys(table.index.get_level_values("setting")))
    columns = [("standard", c) for c in COLUMNS] + [(s, c) for s in settings if s != "standard" for c in ("mA", "F1")]
    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    values = pd.DataFrame({col: [table.loc[(m, col[0]), col[1]] for m in methods] for col in columns}, index=methods)
    shown = pd.DataFrame({col: [text.loc[(m, col[0]), col[1]] for m in methods] for col in columns}, index=methods)
    shown = shown.apply(lambda column: column.str.replace("±", r"$\pm$", regex=False))
    best = values.eq(values.max())
    shown = shown.where(~best, "\\textbf{" + shown + "}")
    shown.columns = pd.MultiIndex.from_tuples(columns, names=["setting", "metric"])
    shown.index.name = "method"
    styler = shown.style.format(escape=None).format_index(escape="latex", axis=0)
    return styler.to_latex(caption=caption or None, label=label, hrules=True, multicol_align="c",
                           column_format="l" + "c" * len(columns), position="t")


def per_attribute_ma(runs: dict[str, list[RunResult]]) -> pd.DataFrame:
    """Test mA (percent) per attribute (rows) and method (columns), averaged over each method's runs."""
    return pd.DataFrame({method: 100 * pd.concat([run.test.per_attribute["ma"] for run in group], axis=1).mean(axis=1)
                         for method, group in runs.items()})


def label_prior(run: RunResult) -> pd.DataFrame:
    """Positive fraction of the labels an FRDL run's heads trained on, per epoch (rows) and attribute.

    The first column, ``balanced``, says whether the epoch drew balanced batches from the bank.
    """
    path = Path(run.output_dir) / "label_prior.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; only FRDL runs record the label prior of their heads")
    return pd.read_csv(path, index_col="epoch")
