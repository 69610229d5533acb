"""``docs/results.md``: the results of a reproduction, written from its own tables, never typed by hand.

The runner (:mod:`parlab.reproduce`) calls :func:`write_results_page` after the last notebook: every
number on the page is read from the run's ``figures/*.csv`` and ``timings.csv``, rounded to two decimals;
the header says which profile, commit, machine (CPU model, cores, torch) and date produced them, so a
rerun rewrites the page and an old page says what it was.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from parlab.files import write_atomic

DIGITS = 2
# The columns the page shows of the standard-setting rows of results_all.csv and clip_comparison.csv.
RESULTS_COLUMNS = ("mA", "F1", "instance F1", "runs", "head")
CLIP_COLUMNS = ("trained parameters", "mA", "F1", "runs", "head")


def cpu_model() -> str:
    """The processor's name as the system reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit(repo: Path) -> str:
    """The repository's commit (with "+ changes" when its tracked files differ), or "unknown"."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + changes" if dirty else head


def _number(value) -> str:
    """A CSV cell as the page writes it: counts whole (with thousands separators), measurements to DIGITS."""
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{DIGITS}f}"


def _mean_std(table: pd.DataFrame, column: str) -> list[str]:
    std = table.get(f"{column} std")
    return [_number(m) if std is None or pd.isna(s) else f"{_number(m)} ± {_number(s)}"
            for m, s in zip(table[column], std if std is not None else [None] * len(table), strict=True)]


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` (index: first column) as a GitHub markdown table of its values as :func:`_number` writes them."""
    header = [str(table.index.name or "")] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index)] + [_number(v) for v in row]) + " |")
    return "\n".join(lines)


def _standard(path: Path, columns: tuple[str, ...], differences: bool = True) -> pd.DataFrame | None:
    """A settings CSV's standard rows: ``columns`` (mean ± std where the CSV has a std), then each
    "mA - REFERENCE" difference as "d [low, high] verdict"."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    frame = frame[frame["setting"] == "standard"].set_index("method")
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        if column in frame:
            out[column] = _mean_std(frame, column) if f"{column} std" in frame else list(frame[column])
    for column in frame.columns if differences else ():
        if column.startswith("mA - ") and not column.endswith((" low", " high", " verdict")):
            out[column] = [f"{_number(d)} [{_number(lo)}, {_number(hi)}] {v}" if not pd.isna(d) else ""
                           for d, lo, hi, v in zip(frame[column], frame[f"{column} low"], frame[f"{column} high"],
                                                   frame[f"{column} verdict"], strict=True)]
    return out


def results_page(figures: Path, dataset: str, profile: str, timings: Path | None, repo: Path) -> str:
    """The page's markdown from the tables in ``figures`` of a run on ``dataset``."""
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Results: profile `{profile}`, {dataset}", "",
             "Written by `python -m parlab.reproduce` from the run's tables (`figures/*.csv`); a rerun rewrites it.",
             "", "| | |", "|---|---|", f"| profile | {profile} |", f"| commit | {commit(repo)} |", f"| date | {now} |",
             f"| machine | {cpu_model()}, {os.cpu_count()} cores |",
             f"| software | Python {platform.python_version()}, torch {torch.__version__} |", ""]
    sections = [
        ("Every method", f"{dataset}_results_all.csv", RESULTS_COLUMNS,
         "Test split, percent; mean ± std over seeds where a method was repeated; the differences are in mA "
         "points with their 95% interval."),
        ("PromptPAR beside the CLIP it tunes", f"{dataset}_clip_comparison.csv", CLIP_COLUMNS,
         "The frozen CLIP's zero-shot and linear probe, PromptPAR and the CLIP fine-tuned end to end (notebook 05)."),
    ]
    for title, name, columns, about in sections:
        table = _standard(figures / name, columns)
        if table is not None:
            lines += [f"## {title}", "", about, "", markdown_table(table), ""]
    ablation = figures / f"{dataset}_promptpar_ablation_differences.csv"
    if ablation.is_file():
        frame = pd.read_csv(ablation).set_index("method")
        lines += ["## PromptPAR ablation", "", "mA of each variant minus the full model's, 95% interval.", "",
                  markdown_table(frame[["mA difference", "low", "high", "interval", "verdict"]]), ""]
    if timings is not None and timings.is_file():
        frame = pd.read_csv(timings).set_index("notebook")
        frame.loc["total"] = frame["seconds"].sum()
        lines += ["## Wall time", "", "Seconds per notebook on the machine above.", "", markdown_table(frame), ""]
    return "\n".join(lines)


def write_results_page(path: Path, figures: Path, dataset: str, profile: str, timings: Path | None,
                       repo: Path) -> Path:
    """Write :func:`results_page` to ``path`` (atomically)."""
    text = results_page(figures, dataset, profile, timings, repo)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
