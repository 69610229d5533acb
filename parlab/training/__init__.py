"""Training engine shared by every method: config, losses, optimisation, checkpoints, DDP.

``train(TrainConfig(...))`` runs one experiment and writes its folder; see
:mod:`parlab.training.engine`.
"""

from parlab.training.checkpoint import CheckpointError, load_checkpoint
from parlab.training.config import TrainConfig
from parlab.training.engine import RunResult, TrainingDiverged, train
from parlab.training.losses import PARLoss, multilabel_bce, ratio_weights
from parlab.training.thresholds import tune_thresholds

__all__ = [
    "CheckpointError",
    "PARLoss",
    "RunResult",
    "TrainConfig",
    "TrainingDiverged",
    "load_checkpoint",
    "multilabel_bce",
    "ratio_weights",
    "train",
    "tune_thresholds",
]
