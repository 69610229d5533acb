"""parlab: a research workbench for pedestrian attribute recognition (PAR).

The package is what the ordered notebooks call into: dataset readers and the
embedded synthetic dataset (:mod:`parlab.data`), the PAR metrics
(:mod:`parlab.metrics`), label statistics (:mod:`parlab.labelstats`), figure
output (:mod:`parlab.figures`) and the papermill runner
(:mod:`parlab.reproduce`). Importing it has no side effects.
"""

__version__ = "0.1.0"
