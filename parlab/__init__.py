"""parlab: a research workbench for pedestrian attribute recognition (PAR).

The package is what the ordered notebooks call into: dataset readers and the
embedded synthetic dataset (:mod:`parlab.data`), the PAR metrics
(:mod:`parlab.metrics`), label statistics (:mod:`parlab.labelstats`), figure
output (:mod:`parlab.outputs`), models (:mod:`parlab.models`), the training
engine (:mod:`parlab.training`), prediction and evaluation of checkpoints
(:func:`parlab.predict`, :func:`parlab.evaluate`) and the papermill runner
(:mod:`parlab.reproduce`). Importing it has no side effects and does not
import torch; ``parlab.predict`` loads it on first use.
"""

from parlab._version import __version__

__all__ = ["__version__", "evaluate", "load_model", "predict"]


def __getattr__(name: str):
    if name in ("predict", "evaluate", "load_model"):
        from parlab import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'parlab' has no attribute {name!r}")
