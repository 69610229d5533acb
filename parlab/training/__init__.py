"""Training engine shared by every method: config, tasks, losses, optimisation, checkpoints, DDP.

``train(RunFields(...), DataConfig(...), BaselineConfig(...))`` runs one baseline experiment and writes its folder;
``fit(task)`` runs any method's :class:`~parlab.training.task.Task` on the same
loop (:mod:`parlab.training.engine`). The names below are imported on first
use, so that reading a config (``parlab --help``) does not import torch.
"""

import importlib

from parlab.training.config import BaselineConfig, DataConfig, RunFields, SupervisedConfig

_LAZY = {
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
    "RunResult": "engine", "TrainingDiverged": "engine", "fit": "engine", "train": "engine",
    "PARLoss": "losses", "multilabel_bce": "losses", "ratio_weights": "losses",
    "SupervisedTask": "task", "Task": "task",
    "tune_thresholds": "thresholds",
}

__all__ = ["BaselineConfig", "DataConfig", "RunFields", "SupervisedConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"parlab.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'parlab.training' has no attribute {name!r}")
