"""The numbers the papers report, as data, and a reproduction held beside them.

``parlab/paper_results.csv`` holds one row per reported number: ``paper``, ``table``, ``dataset`` (a
parlab dataset name), ``method`` (a results-table method), ``backbone``, ``metric`` (a column of
:data:`parlab.results.COLUMNS`), ``value`` (percent) and ``source`` (where it was read). Only numbers
read from a paper or its official repository go in, each with its source.

The two F1s are kept apart: "F1" is the F1 of the mean precision and recall, which Rethinking_of_PAR's
and FRDL's code compute (``metrics/pedestrian_metrics.py``), and "instance F1" the mean per-image F1,
which PromptPAR's code computes (``PromptPAR/tools/function.py``), so a PromptPAR paper number is an
"instance F1" row.

Rows so far: Rethinking_of_PAR's results table (its README) and PromptPAR's main results (as the
method specification gives them from the paper). The FRDL/GOAT and PromptPAR repositories list no
results (their READMEs link the papers); FRDL's paper tables are still to be added, row by row.
"""

from __future__ import annotations

from importlib.resources import files

import pandas as pd

from parlab.errors import ConfigError

RESULTS_FILE = "paper_results.csv"
FIELDS = ("paper", "table", "dataset", "method", "backbone", "metric", "value", "source")
# Which run of the notebooks reproduces which method of the papers: the reference baseline trains with the
# weighted BCE (every public config sets SAMPLE_WEIGHT: weight).
PAPER_METHODS = {"baseline weighted BCE": "baseline", "FRDL": "FRDL", "FRDL+GOAT": "FRDL+GOAT",
                 "PromptPAR": "PromptPAR"}


def paper_results() -> pd.DataFrame:
    """Every reported number (see the module docstring); a malformed row is an error naming it."""
    from parlab.results import COLUMNS

    path = files("parlab") / RESULTS_FILE
    with path.open() as fh:
        table = pd.read_csv(fh, dtype={"value": float})
    if tuple(table.columns) != FIELDS:
        raise ConfigError(f"{path}: columns {list(table.columns)}, expected {list(FIELDS)}")
    for i, row in table.iterrows():
        where = f"{path} row {i + 2}"
        if row.isna().any() or not str(row["source"]).strip():
            raise ConfigError(f"{where}: every field, the source included, must be given")
        if row["metric"] not in COLUMNS:
            raise ConfigError(f"{where}: metric {row['metric']!r} is not one of {', '.join(COLUMNS)}")
    return table


def paper_comparison(settings: pd.DataFrame, dataset: str,
                     methods: dict[str, str] | None = None) -> pd.DataFrame:
    """"paper | reproduced | difference" for every reported number of ``dataset``, in the papers' layout.

    ``settings``: :func:`parlab.results.repeated_settings_table` of the reproduction (its "standard"
    rows are used); ``methods``: its method labels -> the papers' methods (:data:`PAPER_METHODS`).
    Rows: (method, paper backbone, metric); a method the papers report nothing for on ``dataset`` (any
    method on SynthPA) keeps its reproduced numbers with a dash for the paper's.
    """
    methods = PAPER_METHODS if methods is None else methods
    reported = paper_results()
    reported = reported[reported["dataset"] == dataset.lower()]
    standard = settings.xs("standard", level="setting")
    rows = []
    for label, paper_method in methods.items():
        if label not in standard.index:
            continue
        mine = reported[reported["method"] == paper_method]
        for (backbone, metric), value in (mine.set_index(["backbone", "metric"])["value"].items()
                                          if len(mine) else []):
            ours = float(standard.loc[label, metric])
            rows.append({"method": label, "paper backbone": backbone, "metric": metric, "paper": value,
                         "reproduced": ours, "difference": ours - value})
        if not len(mine):
            rows += [{"method": label, "paper backbone": "–", "metric": metric, "paper": "–",
                      "reproduced": float(standard.loc[label, metric]), "difference": "–"}
                     for metric in ("mA", "Acc", "Prec", "Rec", "F1", "instance F1")]
    columns = ["method", "paper backbone", "metric", "paper", "reproduced", "difference"]
    return pd.DataFrame(rows, columns=columns).set_index(["method", "paper backbone", "metric"])
