"""Finished runs of every method, opened from their folders for comparison.

A run folder records which method trained it (``config.json``); :func:`open_run`
re-opens a finished run through that method's own ``existing="resume"`` path,
which only re-evaluates the selected model, and returns its
:class:`~parlab.training.RunResult`. The results notebooks use it to compare
runs trained by earlier notebooks.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from parlab.methods.frdl_config import FRDLConfig
from parlab.methods.frdl_training import train_frdl
from parlab.methods.promptpar import PromptPARConfig, train_promptpar
from parlab.training import RunResult, TrainConfig, train


def run_finished(folder: str | Path) -> bool:
    """True when ``folder`` holds a run that wrote its final results."""
    return (Path(folder) / "metrics.json").is_file() and (Path(folder) / "config.json").is_file()


def open_run(folder: str | Path, device: str = "auto", progress: bool = False) -> RunResult:
    """The :class:`RunResult` of the finished run in ``folder`` (re-evaluated, nothing retrained)."""
    folder = Path(folder)
    if not run_finished(folder):
        raise FileNotFoundError(f"{folder}: no finished run here (metrics.json is written when a run ends); "
                                "train it, or resume it with existing='resume'")
    record = json.loads((folder / "config.json").read_text())
    quiet = lambda *_: None  # noqa: E731
    method = record.get("method", "baseline")
    if method in ("FRDL", "FRDL+GOAT"):
        config = FRDLConfig.from_dict(record["frdl_config"], source=str(folder / "config.json"))
        return train_frdl(_here(config, folder, device), existing="resume", progress=progress, log=quiet)
    config = TrainConfig.from_dict(record["config"], source=str(folder / "config.json"))
    if method == "PromptPAR":
        model_config = PromptPARConfig.from_dict(record["method_config"], source=str(folder / "config.json"))
        return train_promptpar(_here(config, folder, device), model_config, existing="resume", progress=progress,
                               log=quiet)
    return train(_here(config, folder, device), existing="resume", progress=progress, log=quiet)


def _here(config, folder: Path, device: str):
    """The config with the folder it was found in (runs may be moved) and the device asked for."""
    return replace(config, output_dir=str(folder), device=device)


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
