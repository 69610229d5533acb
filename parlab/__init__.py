"""parlab: a research workbench for pedestrian attribute recognition (PAR).

The public surface, imported on first use::

    parlab.load_dataset(name, root)          # a dataset's annotations (parlab.data)
    parlab.train(run, data, method)          # one baseline run (parlab.training)
    parlab.open_run(folder)                  # a finished run of any method (parlab.runs)
    parlab.predict(checkpoint, images)       # probabilities and labels (parlab.inference)
    parlab.evaluate(checkpoint, split=...)   # metrics of a checkpoint on a split

The package is what the ordered notebooks call into: dataset readers and the
embedded synthetic dataset (:mod:`parlab.data`), the PAR metrics
(:mod:`parlab.metrics`), label statistics (:mod:`parlab.labelstats`), models
(:mod:`parlab.models`), the training engine (:mod:`parlab.training`), the
methods (:mod:`parlab.methods`), results tables (:mod:`parlab.results`) and the
statistics of their intervals (:mod:`parlab.stats`), the notebooks' figures
(:mod:`parlab.plots`), looking inside models and the two ipywidgets
(:mod:`parlab.visualisation`), atomic writes of files, figures and tables
(:mod:`parlab.files`), the run folder (:mod:`parlab.runs`), prediction and
evaluation of checkpoints (:mod:`parlab.inference`) and the papermill runner
(:mod:`parlab.reproduce`). Importing it has no side effects and does not
import torch; ``parlab.predict`` loads it on first use.
"""

from parlab._version import __version__

_PUBLIC = {"load_dataset": "parlab.data", "train": "parlab.training", "open_run": "parlab.runs",
           "predict": "parlab.inference", "evaluate": "parlab.inference", "load_model": "parlab.inference"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'parlab' has no attribute {name!r}")
