"""The Rethinking_of_PAR strong baseline as a registered method (``parlab train``).

Its task is :class:`parlab.training.task.SupervisedTask`, trained by the
engine itself; this module only registers it, without importing torch.
"""

from parlab.methods.registry import MethodSpec, OptionGroup, register_method
from parlab.training.config import BaselineConfig, DataConfig, RunFields

BASELINE = register_method(MethodSpec(
    command="train",
    task="parlab.training.task:SupervisedTask",
    labels=("baseline",),
    groups=(OptionGroup("run", RunFields, "run fields"),
            OptionGroup("data", DataConfig, "data fields"),
            OptionGroup("method", BaselineConfig, "model and optimisation fields (defaults: the Rethinking_of_PAR "
                                                  "baseline)")),
    help="train a model (one process, or every process under torchrun)",
    description="Train, select on validation, evaluate test once; writes --output-dir.",
))
