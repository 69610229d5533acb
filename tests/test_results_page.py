"""docs/results.md is written from a run's tables: every number on it is one of theirs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from parlab.results_page import results_page

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers_of_tables(text: str) -> set[str]:
    """The numbers in the page's table rows after its header (the metadata table: commit, date, machine)."""
    body = text.split("\n## ", 1)[1]
    return {n.replace(",", "") for line in body.splitlines() if line.startswith("|") for n in NUMBER.findall(line)}


def numbers_of_csvs(folder: Path, extra: list[Path] = ()) -> set[str]:
    """Every number a CSV of ``folder`` holds, as the page may write it: whole, or to two decimals."""
    found: set[str] = set()
    for path in [*folder.glob("*.csv"), *extra]:
        frame = pd.read_csv(path)
        cells = [*frame.columns, *frame.to_numpy().ravel()]
        for cell in cells:
            if isinstance(cell, str):
                found |= {n.replace(",", "") for n in NUMBER.findall(cell)}
            elif isinstance(cell, (int, float, np.integer, np.floating)) and not pd.isna(cell):
                found |= {f"{cell:.2f}", str(int(cell)) if float(cell).is_integer() else f"{cell:.2f}"}
        if "seconds" in frame:
            found.add(f"{frame['seconds'].sum():.2f}")  # the total row
    return found


def check_page(text: str, figures: Path, timings: Path | None = None) -> None:
    written = numbers_of_tables(text)
    assert written, "no table on the page"
    unknown = written - numbers_of_csvs(figures, [timings] if timings else [])
    assert not unknown, f"numbers on the page that no table of the run holds: {sorted(unknown)[:10]}"


def test_every_number_on_the_page_comes_from_the_runs_tables(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    rows = [{"method": "baseline BCE", "setting": "standard", "mA": 61.8123, "mA std": np.nan, "F1": 76.06,
             "F1 std": np.nan, "instance F1": 75.1, "instance F1 std": np.nan, "runs": 1, "head": "linear",
             "mA - FRDL": -10.23, "mA - FRDL low": -11.5, "mA - FRDL high": -9.01, "mA - FRDL verdict": "loss"},
            {"method": "FRDL", "setting": "standard", "mA": 72.04, "mA std": 0.6, "F1": 56.47, "F1 std": 3.1,
             "instance F1": 55.0, "instance F1 std": 2.0, "runs": 3, "head": "attribute", "mA - FRDL": np.nan,
             "mA - FRDL low": np.nan, "mA - FRDL high": np.nan, "mA - FRDL verdict": np.nan},
            {"method": "FRDL", "setting": "balanced (first)", "mA": 99.99, "mA std": 0.1, "F1": 1.0, "F1 std": 0.0,
             "instance F1": 1.0, "instance F1 std": 0.0, "runs": 3, "head": "attribute"}]
    pd.DataFrame(rows).to_csv(figures / "synthpa_results_all.csv", index=False)
    timings = tmp_path / "timings.csv"
    timings.write_text("notebook,seconds\n01_data_exploration,16.2\n07_results,11.0\n")
    text = results_page(figures, "synthpa", "default", timings, tmp_path)
    check_page(text, figures, timings)
    assert "| FRDL | 72.04 ± 0.60 | 56.47 ± 3.10 |" in text
    assert "| baseline BCE | 61.81 |" in text and "-10.23 [-11.50, -9.01] loss" in text
    assert "99.99" not in text  # the standard setting only
    assert "| total | 27.20 |" in text
    for key in ("| profile | default |", "| machine | ", "| software | Python ", "| commit | ", "| date | "):
        assert key in text
    # A number the tables do not hold is caught.
    forged = text.replace("61.81", "62.81")
    try:
        check_page(forged, figures, timings)
    except AssertionError as exc:
        assert "62.81" in str(exc)
    else:
        raise AssertionError("a forged number passed")
