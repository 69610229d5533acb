"""Results tables of training runs, in the PAR convention (percent, mA / Acc / Prec / Rec / F1).

What the notebooks display and save after training: results, settings and per-attribute tables,
differences between methods and their sentences, mean ± std text and LaTeX. The statistics behind
the intervals are in :mod:`parlab.stats`.

Every table says how the epoch was selected: numbers selected on test
(the reference practice) are not comparable with numbers selected on
validation, and the ``selection`` column keeps them apart. Every table names
the head the run's model used (``linear`` is the reference baseline's).

Differences between methods come with a 95% interval (:func:`differences`):
over seeds (paired t on the same seeds, else Welch's t) when both sides were
repeated, else a hierarchical bootstrap over runs and then test images; a
difference is called a gain or a loss only when its interval excludes zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from parlab.data import load_dataset
from parlab.errors import ConfigError
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.models.weights import RANDOM
from parlab.files import write_atomic
from parlab.runs import RunResult, saved_test_predictions
from parlab.stats import (bootstrap_weights, hierarchical_interval, paired_interval, prediction_half_width,
                          weighted_ma, welch_interval)

# Test settings of docs/methods.md section 1: the standard one and the label-balanced one of the FRDL
# paper, keeping the first m_j entries (reference) or a seeded random choice.
SETTINGS = {
    "standard": {},
    "balanced (first)": {"balanced": True, "selection": "first"},
    "balanced (random)": {"balanced": True, "selection": "random"},
}

# "F1" is the F1 of the mean precision and recall (Rethinking_of_PAR's and FRDL's code); "instance F1" the mean
# per-image F1 (PromptPAR's code, and so its paper's F1).
COLUMNS = ["mA", "Acc", "Prec", "Rec", "F1", "instance F1"]
TUNED = " (tuned thr.)"  # suffix of rows scored at per-attribute thresholds tuned on validation


def _percent(summary: dict) -> dict:
    return {"mA": summary["ma"], "Acc": summary["acc"], "Prec": summary["prec"], "Rec": summary["rec"],
            "F1": summary["f1"], "instance F1": summary["instance_f1"]}


def results_table(runs: dict[str, RunResult], dataset: str = "") -> pd.DataFrame:
    """One row per run: test metrics at the fixed threshold, tuned-threshold mA/F1 when available.

    ``loss`` is the loss of the run's model config (for FRDL, the stage-1 loss).
    """
    rows = []
    for name, run in runs.items():
        model = run.model_config
        row = {"method": name, "dataset": dataset or run.data.dataset, "training": run.method_name,
               "backbone": getattr(model, "clip_model", None) or model.backbone, "weights": weights_of(run),
               "head": head_of(run), "loss": model.loss, "protocol": run.run.protocol, **_percent(run.test.summary())}
        if run.test_tuned is not None:
            tuned = run.test_tuned.summary()
            row |= {"mA (tuned thr.)": tuned["ma"], "F1 (tuned thr.)": tuned["f1"]}
        row |= {"epochs": len(run.history), "best epoch": run.best_epoch, "selection": run.selection}
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def run_annotations(run: RunResult):
    """The dataset a run was trained on, read once per (dataset, root, partition) however many tables ask."""
    return _annotations(run.data.dataset, str(run.data.root), run.data.partition, run.data.links_outside)


@functools.lru_cache(maxsize=8)
def _annotations(dataset: str, root: str, partition: int, links_outside: bool):
    return load_dataset(dataset, root, partition, links_outside=links_outside)


def weights_of(run: RunResult) -> str:
    """The weights a run's network started from, as tables name them ("none (random)" when it had none)."""
    weights = str(getattr(run.model_config, "weights", "") or "")
    if weights in ("", RANDOM):
        return "none (random)"
    return Path(weights).name if Path(weights).suffix else weights


def head_of(run: RunResult) -> str:
    """The head of a run's model, as tables name it (PromptPAR has its own)."""
    return "PromptPAR" if run.method_name == "PromptPAR" else run.model_config.head


def per_attribute_table(runs: dict[str, RunResult], train_ratio: pd.Series) -> pd.DataFrame:
    """Per attribute: training positive ratio, then TPR / TNR / mA of each run on test (percent)."""
    table = pd.DataFrame({"train positive ratio": 100 * train_ratio})
    for name, run in runs.items():
        pa = run.test.per_attribute.reindex(train_ratio.index)
        table[f"{name} TPR"] = 100 * pa["tpr"]
        table[f"{name} TNR"] = 100 * pa["tnr"]
        table[f"{name} mA"] = 100 * pa["ma"]
    return table.sort_values("train positive ratio")


def _thresholds(run: RunResult, tuned: bool):
    """The run's fixed threshold, or its (A,) thresholds tuned on validation."""
    if not tuned:
        return run.data.threshold
    if run.thresholds is None:
        raise ConfigError(f"{run.output_dir}: no tuned thresholds (train with tune_thresholds=True)")
    return run.thresholds


def test_metrics(run: RunResult, setting: str = "standard", seed: int = 0, annotations=None,
                 tuned: bool = False) -> PARMetrics:
    """Metrics of a run's saved test predictions in one of :data:`SETTINGS`.

    At the run's fixed threshold, or with ``tuned`` at its per-attribute thresholds tuned on validation.
    ``annotations``: the run's dataset, when the caller has it already (read from the run otherwise).
    """
    if setting not in SETTINGS:
        raise ConfigError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    preds = saved_test_predictions(run)
    if annotations is None:
        annotations = run_annotations(run)
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=_thresholds(run, tuned),
                              attributes=annotations.attributes, seed=seed, **SETTINGS[setting])


def settings_table(runs: dict[str, RunResult], seed: int = 0, tuned: bool = False) -> pd.DataFrame:
    """Test metrics of every run in every setting (rows: run x setting, percent)."""
    rows = []
    for name, run in runs.items():
        annotations = run_annotations(run)
        for setting in SETTINGS:
            m = test_metrics(run, setting, seed, annotations, tuned)
            rows.append({"method": name, "setting": setting, **_percent(m.summary()), "images": m.num_images})
    return pd.DataFrame(rows).set_index(["method", "setting"])


def repeated_settings_table(runs: dict[str, list[RunResult]], seed: int = 0,
                            tuned: tuple[str, ...] = ()) -> pd.DataFrame:
    """Test metrics of repeated runs (e.g. seeds) per method and setting: mean, sample std and count.

    Rows: (method, setting); columns: each of mA/Acc/Prec/Rec/F1, then its "std", then "runs"
    (std is NaN for a single run), then "head". Percent. Each method named in ``tuned`` gets a
    second set of rows, "<method> (tuned thr.)", at its runs' thresholds tuned on validation.
    """
    _known(runs, list(tuned))
    rows = []
    scored = [(method, group, False) for method, group in runs.items()]
    scored += [(method + TUNED, runs[method], True) for method in tuned]
    for method, group, at_tuned in scored:
        per_run = settings_table({str(i): run for i, run in enumerate(group)}, seed, at_tuned)
        for setting in SETTINGS:
            values = per_run.xs(setting, level="setting")
            row = {"method": method, "setting": setting}
            for column in COLUMNS:
                row[column] = values[column].mean()
                row[f"{column} std"] = values[column].std(ddof=1) if len(group) > 1 else np.nan
            rows.append(row | {"runs": len(group), "head": head_of(group[0]), "protocol": group[0].run.protocol})
    return pd.DataFrame(rows).set_index(["method", "setting"])


def _known(runs: dict, names: list[str]) -> None:
    """Refuse names that are not methods of ``runs`` (and an empty ``runs``), listing the known ones."""
    unknown = [n for n in dict.fromkeys(names) if n not in runs] if runs else ["(no runs)"]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not among the methods {', '.join(runs) or '(none)'}")


def _decisions(name: str, scored_rows: np.ndarray, probs: np.ndarray, thresholds, rows: np.ndarray) -> np.ndarray:
    """(N, A) 0/1 decisions on the test images ``rows`` (sorted annotation rows) of probabilities ``probs``
    scored on ``scored_rows`` (in any order), refused when those are other images."""
    order = np.argsort(scored_rows)
    if not np.array_equal(np.asarray(scored_rows)[order], rows):
        raise ConfigError(f"{name}: its test images are not those of the runs compared")
    return (np.asarray(probs)[order] > np.asarray(thresholds)).astype(np.float64)


def _run_decisions(run: RunResult, tuned: bool, rows: np.ndarray) -> np.ndarray:
    """:func:`_decisions` of a run's saved test predictions at its fixed or tuned thresholds."""
    preds = saved_test_predictions(run)
    return _decisions(str(run.output_dir), preds.rows, preds.probs, _thresholds(run, tuned), rows)


@dataclass(frozen=True)
class FixedModel:
    """Test probabilities of a model with no training seed to repeat (a CLIP's zero-shot, its linear probe),
    compared with runs by :func:`differences` and tabled by :func:`fixed_settings_table`."""

    rows: np.ndarray  # (n,) annotation rows of the test images
    probs: np.ndarray  # (n, A)
    threshold: float = 0.5
    parameters: int = 0  # how many it trained
    head: str = ""  # what decides, as the tables' "head" column says it

    def metrics(self, annotations, setting: str = "standard", seed: int = 0) -> PARMetrics:
        """Its test metrics in one of :data:`SETTINGS`."""
        return pedestrian_metrics(annotations.labels[self.rows], self.probs, threshold=self.threshold,
                                  attributes=annotations.attributes, seed=seed, **SETTINGS[setting])


def save_fixed_models(path: str | Path, models: dict[str, FixedModel]) -> Path:
    """Write ``models`` to one ``.npz`` (atomically), for :func:`load_fixed_models`."""
    arrays = {"names": np.array(list(models))}
    for i, model in enumerate(models.values()):
        arrays |= {f"rows{i}": model.rows, f"probs{i}": model.probs, f"threshold{i}": model.threshold,
                   f"parameters{i}": model.parameters, f"head{i}": np.array(model.head)}
    return write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def load_fixed_models(path: str | Path) -> dict[str, FixedModel]:
    """The models :func:`save_fixed_models` wrote to ``path``; none when it is missing."""
    if not Path(path).is_file():
        return {}
    with np.load(path, allow_pickle=False) as f:
        return {str(name): FixedModel(f[f"rows{i}"], f[f"probs{i}"], float(f[f"threshold{i}"]),
                                      int(f[f"parameters{i}"]), str(f[f"head{i}"])) for i, name in enumerate(f["names"])}


def fixed_settings_table(models: dict[str, FixedModel], annotations, seed: int = 0) -> pd.DataFrame:
    """:func:`repeated_settings_table`'s rows for :class:`FixedModel` entries (one "run" each, no std)."""
    rows = []
    for name, model in models.items():
        for setting in SETTINGS:
            row = {"method": name, "setting": setting}
            for column, value in _percent(model.metrics(annotations, setting, seed).summary()).items():
                row |= {column: value, f"{column} std": np.nan}
            rows.append(row | {"runs": 1, "head": model.head, "protocol": ""})
    if not rows:  # no such model in the run (notebook 05 skipped): no row
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["method", "setting"]))
    return pd.DataFrame(rows).set_index(["method", "setting"])


def ranking_table(runs: dict[str, list[RunResult]], fixed: dict[str, FixedModel] | None = None) -> pd.DataFrame:
    """How well each method's test scores order the images, whatever the threshold (percent, mean over
    attributes; mean and sample std over a method's runs): "AUC", and "mA at best test thresholds", the mA
    each attribute's best threshold on the test split itself would give (an oracle, for telling a worse
    operating point from worse scores, never a score to report). Rows: ``fixed`` models, then ``runs``."""
    from parlab.metrics.ranking import attribute_auc, best_threshold_ma

    _known(runs, [])  # at least one run: the dataset is read from it
    annotations = run_annotations(next(iter(runs.values()))[0])
    # Logits where a run saved them: their order survives where probabilities round to 1.0.
    entries = {name: [(model.rows, model.probs)] for name, model in (fixed or {}).items()}
    entries |= {name: [(p.rows, p.logits) for p in map(saved_test_predictions, group)] for name, group in runs.items()}
    rows = []
    for name, scored in entries.items():
        auc = [100 * np.nanmean(attribute_auc(annotations.labels[r], s)) for r, s in scored]
        best = [100 * np.nanmean(best_threshold_ma(annotations.labels[r], s)) for r, s in scored]
        rows.append({"method": name, "AUC": np.mean(auc), "AUC std": np.std(auc, ddof=1) if len(auc) > 1 else np.nan,
                     "mA at best test thresholds": np.mean(best),
                     "mA at best test thresholds std": np.std(best, ddof=1) if len(best) > 1 else np.nan,
                     "runs": len(scored)})
    return pd.DataFrame(rows).set_index("method")


def differences(runs: dict[str, list[RunResult]], references: list[str], tuned: tuple[str, ...] = (),
                draws: int = 2000, seed: int = 0, fixed: dict[str, FixedModel] | None = None) -> pd.DataFrame:
    """Test mA of every method minus each reference's, with a 95% interval and a verdict (percent points).

    Both sides repeated over the same seeds: the paired t interval of the seed-matched differences; over
    other seeds: Welch's t. A side of one run (or a :class:`FixedModel` of ``fixed``, which enters as a
    method too): a hierarchical bootstrap, runs and then test images resampled (the same images for both
    sides), so the repeated side's seed spread is in the interval. Methods named in ``tuned`` also enter at
    their tuned thresholds ("<method> (tuned thr.)"), as methods and as references.
    Rows: (method, reference); columns: difference, low, high, interval, verdict.
    """
    fixed = fixed or {}
    _known(runs, list(tuned))
    entries = {method: (group, False) for method, group in runs.items()}
    entries |= {method + TUNED: (runs[method], True) for method in tuned}
    _known(entries | fixed, references)
    first = next(iter(runs.values()))[0]
    annotations = run_annotations(first)
    rows = np.sort(saved_test_predictions(first).rows)
    gt = annotations.labels[rows]
    decided = {name: [_run_decisions(run, at_tuned, rows) for run in group]
               for name, (group, at_tuned) in entries.items()}
    decided |= {name: [_decisions(name, model.rows, model.probs, model.threshold, rows)] for name, model in fixed.items()}
    seeds = {name: [run.run.seed for run in group] for name, (group, _) in entries.items()}
    resamples = bootstrap_weights(len(gt), draws, seed)  # the same image resamples for every method
    boot = {name: 100 * weighted_ma(d, gt, resamples) for name, d in decided.items()}
    per_run = {name: 100 * weighted_ma(d, gt, np.ones((1, len(gt))))[0] for name, d in decided.items()}
    table = []
    for reference in references:
        for method in decided:
            if method == reference:
                continue
            a, b = per_run[method], per_run[reference]
            diff = a.mean() - b.mean()
            paired = method in seeds and reference in seeds and seeds[method] == seeds[reference]
            if len(a) > 1 and len(b) > 1 and paired:
                low, high = paired_interval(a, b)
                how = f"seeds ({len(a)}, paired t)"
            elif len(a) > 1 and len(b) > 1:
                low, high = welch_interval(a, b)
                how = f"seeds ({len(a)} vs {len(b)}, Welch t)"
            elif len(a) == 1 and len(b) == 1:
                low, high = np.percentile(boot[method][:, 0] - boot[reference][:, 0], [2.5, 97.5])
                how = f"bootstrap over {len(gt)} test images ({draws} draws)"
            else:
                low, high = hierarchical_interval(boot[method], boot[reference], seed)
                how = f"runs ({len(a)} vs {len(b)}) then {len(gt)} test images (hierarchical bootstrap, {draws} draws)"
            verdict = "gain" if low > 0 else "loss" if high < 0 else "no difference"
            table.append({"method": method, "reference": reference, "mA difference": diff, "low": low, "high": high,
                          "interval": how, "verdict": verdict})
    return pd.DataFrame(table).set_index(["method", "reference"])


def with_differences(table: pd.DataFrame, diffs: pd.DataFrame, setting: str = "standard") -> pd.DataFrame:
    """A :func:`repeated_settings_table` with, on its ``setting`` rows, each :func:`differences` column per
    reference."""
    out = table.copy()
    for reference in dict.fromkeys(diffs.index.get_level_values("reference")):
        part = diffs.xs(reference, level="reference")
        for column, name in (("mA difference", ""), ("low", " low"), ("high", " high"), ("verdict", " verdict")):
            values = {(method, setting): part.loc[method, column] for method in part.index}
            out[f"mA - {reference}{name}"] = pd.Series(values, dtype=object if column == "verdict" else float)
    return out


def differences_text(diffs: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """:func:`differences` as "+1.23 [0.45, 2.01]" strings with the verdict, for display."""
    text = [f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {v}"
            for d, lo, hi, v in zip(diffs["mA difference"], diffs["low"], diffs["high"], diffs["verdict"], strict=True)]
    return pd.Series(text, index=diffs.index, name="mA difference [95% interval]").unstack("reference")


def difference_sentences(diffs: pd.DataFrame, pairs: list[tuple[str, str]], digits: int = 2) -> list[str]:
    """One sentence per (method, reference) of :func:`differences`: the mA difference, its interval and what
    the interval allows one to say."""
    meaning = {"gain": "higher beyond the interval", "loss": "lower beyond the interval",
               "no difference": "not told apart by this run"}
    sentences = []
    for method, reference in pairs:
        row = diffs.loc[(method, reference)]
        sentences.append(f"{method} against {reference}: mA {row['mA difference']:+.{digits}f} "
                         f"[{row['low']:+.{digits}f}, {row['high']:+.{digits}f}] ({row['interval']}): "
                         f"{meaning[row['verdict']]}.")
    return sentences


def component_sentences(diffs: pd.DataFrame, settings: pd.DataFrame, reference: str, digits: int = 2) -> pd.Series:
    """One sentence per ablation: what removing a component (or another change) does to mA, and whether that
    exceeds the seed spread.

    ``diffs``: :func:`differences` with the full model as ``reference`` and one method per ablation (named
    "without <component>", or for a change that removes nothing, e.g. a longer schedule, by that change);
    ``settings``: their :func:`repeated_settings_table`. Over seeds on both sides the t interval decides (paired
    on the same seeds). An ablation of one run against a repeated full model is also held against the seed
    spread: the 95% prediction interval of one run's difference from the mean of n,
    ``t(n-1) * std * sqrt(1 + 1/n)`` with the full model's std; the bootstrap over test images alone ignores
    that spread. A component is said to help only when removing it loses mA beyond every interval that
    applies, to hurt only when removing it gains beyond them; otherwise its effect is within the spread.
    With ``reference`` at tuned thresholds ("full (tuned thr.)"), only the variants at tuned thresholds are
    read, and the other way round.
    """
    part = diffs.xs(reference, level="reference")
    part = part[[m.endswith(TUNED) == reference.endswith(TUNED) for m in part.index]]
    std, n = settings.loc[(reference, "standard"), "mA std"], int(settings.loc[(reference, "standard"), "runs"])
    sentences = {}
    for method, row in part.iterrows():
        diff, verdict = row["mA difference"], row["verdict"]
        name = method.removesuffix(TUNED)
        removed = name.startswith("without ")
        text = (f"{'removing it' if removed else 'it'} changes mA by {diff:+.{digits}f} "
                f"[{row['low']:+.{digits}f}, {row['high']:+.{digits}f}] ({row['interval']})")
        runs = int(settings.loc[(method, "standard"), "runs"])
        if runs == 1 and n >= 2:
            half = prediction_half_width(std, n)
            text += (f"; one run against {n} seeds of the {reference} model (std {std:.{digits}f}) may differ by "
                     f"±{half:.{digits}f} by chance")
            if abs(diff) <= half:
                verdict = "no difference"
        elif runs == 1 or n == 1:
            text += "; the seed spread is not measured (one run)"
        meaning = ({"loss": "it helps", "gain": "it hurts", "no difference": "within the spread: not shown to help"}
                   if removed else
                   {"loss": "a loss", "gain": "a gain", "no difference": "within the spread: not shown to matter"})
        sentences[name.removeprefix("without ")] = f"{text}: {meaning[verdict]}."
    return pd.Series(sentences, name=f"against {reference}")


def mean_std_text(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A :func:`repeated_settings_table` as "mean ± std" strings, for display and LaTeX (a "trained parameters"
    column is kept in front)."""
    text = pd.DataFrame(index=table.index)
    if "trained parameters" in table:
        text["trained parameters"] = [f"{n:,}" for n in table["trained parameters"]]
    for column in COLUMNS:
        mean, std = table[column], table[f"{column} std"]
        text[column] = [f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
                        for m, s in zip(mean, std)]
    text["runs"] = table["runs"]
    if "head" in table:
        text["head"] = table["head"]
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


# log.csv's test columns of each metric of COLUMNS (under the reference protocol, test is scored every epoch)
EPOCH_COLUMNS = {"mA": "test_ma", "Acc": "test_acc", "Prec": "test_prec", "Rec": "test_rec", "F1": "test_f1",
                 "instance F1": "test_instance_f1"}


def epoch_maxima(runs: dict[str, list[RunResult]]) -> pd.DataFrame:
    """Each metric's own maximum over the epochs on test, mean over a method's runs (percent).

    What PromptPAR's public code reports (``train.py`` keeps ``max_ma``, ``max_acc`` and ``max_f1`` apart,
    each the best of any epoch on test), so only runs of the reference protocol, which score test every
    epoch, have them. Optimistic twice over: every number picks its own epoch, on test.
    """
    rows = []
    for method, group in runs.items():
        late = [run for run in group if run.run.protocol != "reference"]
        if late:
            raise ConfigError(f"{method}: per-epoch test metrics exist under the reference protocol only "
                              f"({late[0].output_dir} ran {late[0].run.protocol!r})")
        maxima = pd.DataFrame([{c: run.history[k].max() for c, k in EPOCH_COLUMNS.items() if k in run.history}
                               for run in group])
        rows.append({"method": method, **maxima.mean().to_dict(), "runs": len(group)})
    return pd.DataFrame(rows).set_index("method")
