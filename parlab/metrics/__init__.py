"""PAR evaluation: label-based mA, instance-based Acc/Prec/Rec/F1, balanced test setting."""

from parlab.metrics.balanced import balanced_labels
from parlab.metrics.pedestrian import PARMetrics, pedestrian_metrics

__all__ = ["PARMetrics", "balanced_labels", "pedestrian_metrics"]
