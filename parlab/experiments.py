"""Finished runs of every method, opened from their folders for comparison.

A run folder records which method trained it (``config.json``); :func:`open_run`
returns a finished run's :class:`~parlab.training.RunResult` from the
predictions it saved when it finished, or, for runs of earlier versions,
re-opens it through that method's own ``existing="resume"`` path, which only
re-evaluates the selected model. The results notebooks use it to compare runs
trained by earlier notebooks.
"""

from __future__ import annotations

import json
from pathlib import Path

from parlab.errors import MissingFileError
from parlab.methods.registry import method_for
from parlab.training.engine import RunResult, fit, saved_result


def run_finished(folder: str | Path) -> bool:
    """True when ``folder`` holds a run that wrote its final results."""
    return (Path(folder) / "metrics.json").is_file() and (Path(folder) / "config.json").is_file()


def open_run(folder: str | Path, device: str = "auto", progress: bool = False, reevaluate: bool = False) -> RunResult:
    """The :class:`RunResult` of the finished run in ``folder``; nothing is retrained.

    Read from the validation and test predictions the run saved; a run without them (written by an earlier
    parlab), or any run with ``reevaluate``, is re-evaluated from its ``best.pt`` on ``device`` instead (which
    also saves them).
    """
    folder = Path(folder)
    if not run_finished(folder):
        raise MissingFileError(f"{folder}: no finished run here (metrics.json is written when a run ends); "
                               "train it, or resume it with existing='resume'")
    source = str(folder / "config.json")
    record = json.loads((folder / "config.json").read_text())
    task_class = method_for(record.get("method") or "baseline").task_class()
    record = task_class.upgrade_checkpoint(record)
    # The folder it was found in (runs may be moved) and the device asked for (FRDL also keeps its stage-1
    # data config under "config").
    record[task_class.run_key] = record[task_class.run_key] | {"output_dir": str(folder), "device": device}
    record["config"] = record["config"] | {"device": device}
    task = task_class.from_record(record, source)
    saved = None if reevaluate else saved_result(task, folder, record["attributes"])
    return saved or fit(task, existing="resume", progress=progress, log=lambda *_: None)


def collect_runs(runs_dir: str | Path, groups: dict[str, str], device: str = "auto") -> dict[str, list[RunResult]]:
    """The finished runs of ``runs_dir`` per method: label -> runs whose folder matches a glob pattern.

    ``groups``: e.g. ``{"FRDL": "frdl_seed*", "PromptPAR": "promptpar"}``; repeated runs (seeds) share
    a label. Labels with no finished run are left out.
    """
    found = {}
    for label, pattern in groups.items():
        folders = sorted(f for f in Path(runs_dir).glob(pattern) if f.is_dir() and run_finished(f))
        if folders:
            found[label] = [open_run(f, device=device) for f in folders]
    return found
