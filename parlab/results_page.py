"""``docs/results.md``: the results of a reproduction, written from its own tables, never typed by hand.

The runner (:mod:`parlab.reproduce`) calls :func:`write_results_page` after the last notebook: every
number on the page is read from the run's ``figures/*.csv`` and ``timings.csv``, rounded to two decimals;
the header says which profile, commit, machine (CPU model, cores, torch) and date produced them, so a
rerun rewrites the page and an old page says what it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from parlab.files import write_atomic
from parlab.provenance import provenance_rows
from parlab.results import TUNED

DIGITS = 2
# The columns the page shows of the standard-setting rows of results_all.csv and clip_comparison.csv.
RESULTS_COLUMNS = ("mA", "F1", "instance F1", "runs", "head")
CLIP_COLUMNS = ("trained parameters", "mA", "F1", "runs", "head")
# The README's headline table sits between these lines; the runner rewrites what is between them.
HEADLINE_START = "<!-- headline results: written by python -m parlab.reproduce, not by hand -->"
HEADLINE_END = "<!-- end of headline results -->"
# The README's figure: notebook 01's sample images with their attributes, at a width a page shows whole.
OVERVIEW_FIGURE = "{dataset}_samples.png"
OVERVIEW_WIDTH = 1200


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
    lines = [f"# Results: profile `{profile}`, {dataset}", "",
             "Written by `python -m parlab.reproduce` from the run's tables (`figures/*.csv`); a rerun rewrites it.",
             "", "| | |", "|---|---|", f"| profile | {profile} |",
             *(f"| {key} | {value} |" for key, value in provenance_rows(repo)), ""]
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
    ranking = figures / f"{dataset}_clip_ranking.csv"
    if ranking.is_file():
        frame = pd.read_csv(ranking).set_index("method")
        table = pd.DataFrame({column: _mean_std(frame, column) for column in ("AUC", "mA at best test thresholds")},
                             index=frame.index).assign(runs=frame["runs"])
        lines += ["## Operating point or scores", "", "How well the scores order the test images of each attribute, "
                  "whatever the threshold: mean AUC, and the mA at each attribute's best threshold on the test split "
                  "itself (an oracle, not a score) (notebook 05).", "", markdown_table(table), ""]
    ablation = figures / f"{dataset}_promptpar_ablation_differences.csv"
    if ablation.is_file():
        frame = pd.read_csv(ablation).set_index("method")
        lines += ["## PromptPAR ablation", "", "mA of each variant minus the full model's at the same threshold "
                  "(0.5, or tuned on validation), 95% interval (notebook 05).", "",
                  markdown_table(frame[["reference", "mA difference", "low", "high", "interval", "verdict"]]), ""]
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


def headline_table(figures: Path, dataset: str) -> str | None:
    """The README's short table: each method's test mA at the fixed threshold and at thresholds tuned on
    validation, its F1 and its runs, from the run's ``{dataset}_results_all.csv`` (None without it)."""
    path = figures / f"{dataset}_results_all.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    frame = frame[frame["setting"] == "standard"].set_index("method")
    mean_std = dict(zip(frame.index, _mean_std(frame, "mA"), strict=True))
    f1 = dict(zip(frame.index, _mean_std(frame, "F1"), strict=True))
    methods = [m for m in frame.index if not m.endswith(TUNED)]
    table = pd.DataFrame({"mA": [mean_std[m] for m in methods],
                          "mA, tuned thresholds": [mean_std.get(m + TUNED, "") for m in methods],
                          "F1": [f1[m] for m in methods],
                          "runs": [int(frame.loc[m, "runs"]) for m in methods]},
                         index=pd.Index(methods, name="method"))
    return markdown_table(table)


def page_provenance(page: str) -> dict[str, str]:
    """The header rows (profile, commit, date, machine, software) of a page :func:`results_page` wrote."""
    header = page.split("\n## ", 1)[0]
    rows = (line.strip("|").split("|") for line in header.splitlines() if line.startswith("| ") and line.count("|") == 3)
    return {key.strip(): value.strip() for key, value in rows}


def write_readme_headline(readme: Path, figures: Path, dataset: str, page: Path) -> bool:
    """Rewrite the block between :data:`HEADLINE_START` and :data:`HEADLINE_END` of ``readme`` with
    :func:`headline_table` of ``figures`` and the provenance of ``page``, the results page written from the
    same tables (linked below the table). False (the file untouched) when the file has no such block or the
    run no results table."""
    text = readme.read_text(encoding="utf-8")
    table = headline_table(figures, dataset)
    if table is None or HEADLINE_START not in text or HEADLINE_END not in text:
        return False
    rows = page_provenance(page.read_text(encoding="utf-8"))
    link = page.relative_to(readme.parent).as_posix() if page.is_relative_to(readme.parent) else str(page)
    about = (f"Profile `{rows.get('profile', '?')}` on {dataset}, test split, percent; mean ± std over seeds "
             f"(commit {rows.get('commit', '?')}, {rows.get('date', '?')}, {rows.get('machine', '?')}). "
             f"Every table, difference and interval: [{link}]({link}).")
    head, rest = text.split(HEADLINE_START, 1)
    tail = rest.split(HEADLINE_END, 1)[1]
    block = f"{HEADLINE_START}\n{about}\n\n{table}\n{HEADLINE_END}"
    write_atomic(readme, lambda tmp: Path(tmp).write_text(head + block + tail, encoding="utf-8"))
    return True


def write_overview_figure(figures: Path, dataset: str, target: Path) -> bool:
    """``target``: notebook 01's samples figure of the run, scaled to :data:`OVERVIEW_WIDTH` pixels wide (the
    README shows it). False when the run drew none."""
    from PIL import Image

    source = figures / OVERVIEW_FIGURE.format(dataset=dataset)
    if not source.is_file():
        return False
    with Image.open(source) as image:
        image = image.convert("RGB")
        height = round(image.height * OVERVIEW_WIDTH / image.width)
        small = image.resize((OVERVIEW_WIDTH, height), Image.Resampling.LANCZOS)
    write_atomic(target, lambda tmp: small.save(tmp, format="PNG", optimize=True))
    return True
