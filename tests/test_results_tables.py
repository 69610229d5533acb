"""The paper-style LaTeX table of repeated runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from parlab.results import COLUMNS, latex_table


def _table() -> pd.DataFrame:
    index = pd.MultiIndex.from_product([["baseline", "FRDL+GOAT & co"], ["standard", "balanced (first)"]],
                                       names=["method", "setting"])
    values = {c: [70.0, 71.0, 75.0, 69.0] for c in COLUMNS}
    stds = {f"{c} std": [np.nan, np.nan, 0.5, 0.25] for c in COLUMNS}
    return pd.DataFrame(values | stds | {"runs": [1, 1, 3, 3]}, index=index)


def test_latex_table_bolds_the_best_mean_per_column_and_escapes_names():
    tex = latex_table(_table(), caption="SynthPA")
    assert "\\toprule" in tex and "\\caption{SynthPA}" in tex
    lines = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    frdl = lines["FRDL+GOAT \\& co"]
    assert "\\textbf{75.00 $\\pm$ 0.50}" in frdl  # standard setting: FRDL best
    assert "69.00 $\\pm$ 0.25" in frdl and "\\textbf{69.00" not in frdl  # balanced: baseline best
    assert "\\textbf{71.00}" in lines["baseline"]
    assert tex.count("\\textbf{") == len(COLUMNS) + 2  # one best per column
