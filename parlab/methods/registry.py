"""The method registry: which methods parlab can train, re-open and load, filled by :func:`register_method`.

Like :func:`parlab.data.register_reader` and timm's ``register_model``, a
method is registered once, by name, and every part of parlab finds it there:
the command line (one subcommand per method, its options from the method's
config dataclasses), :func:`parlab.inference.load_model` and
:func:`parlab.runs.open_run` (by the method a run recorded). A spec is
plain data and names its :class:`~parlab.training.task.Task` class as
``"module:Class"``, imported on first use, so that reading the registry (and
``parlab --help``) imports no torch.

Adding a method: write its config dataclass (fields made with
:func:`~parlab.training.config.option`) and its Task subclass, then register::

    register_method(MethodSpec(command="mymethod", task="mypackage.task:MyTask", labels=("MyMethod",),
                               groups=(OptionGroup("run", RunFields, "run fields"),
                                       OptionGroup("data", DataConfig, "data fields"),
                                       OptionGroup("method", MyConfig, "MyMethod fields")),
                               help="one line for parlab --help"))

The task's ``method_class`` is ``MyConfig``; its files keep the three configs under
``run``, ``data`` and ``method`` (:mod:`parlab.training.record`). A package outside parlab makes its
methods known by naming the module that registers them as an entry point of the group
:data:`ENTRY_POINTS` (``[project.entry-points."parlab.methods"]`` in its ``pyproject.toml``): the command
line, ``load_model`` and ``open_run`` then find them as they find parlab's own (``docs/adding-a-method.md``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass, field

from parlab.errors import ParlabError


@dataclass(frozen=True)
class OptionGroup:
    """One config dataclass of a method, as a group of command-line options."""

    key: str  # the config Task.from_options receives its values as: "run", "data" or "method"
    config: type  # the frozen config dataclass
    title: str  # the group's heading in --help
    skip: tuple[str, ...] = ()  # fields that are not options
    defaults: dict = field(default_factory=dict)  # defaults that differ from the dataclass's


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    command: str  # the parlab subcommand (train, frdl, promptpar)
    task: str  # "module:Class" of its Task, with from_options() and from_record()
    labels: tuple[str, ...]  # the method names its runs record (FRDL and FRDL+GOAT share one task)
    groups: tuple[OptionGroup, ...]
    help: str = ""
    description: str = ""

    def task_class(self) -> type:
        module, name = self.task.split(":")
        return getattr(importlib.import_module(module), name)


METHODS: dict[str, MethodSpec] = {}
# Modules that register the built-in methods; they import no torch.
_BUILTIN = ("parlab.methods.baseline", "parlab.methods.frdl_config", "parlab.methods.promptpar.config")
# The entry-point group through which installed packages name their modules that register methods.
ENTRY_POINTS = "parlab.methods"


class UnknownMethod(ParlabError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a later spec with the same command replaces it)."""
    METHODS[spec.command] = spec
    return spec


def available_methods() -> dict[str, MethodSpec]:
    """Every registered method, by command: parlab's own, then those of installed packages' entry points."""
    for module in _BUILTIN:
        importlib.import_module(module)
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            point.load()  # the module registers its methods when imported (once: Python caches modules)
        except Exception as exc:  # a broken plugin: one line naming it, not a traceback from deep inside
            raise ParlabError(f"the parlab method plugin {point.name!r} ({point.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
    return dict(METHODS)


def method_for(label: str) -> MethodSpec:
    """The method whose runs record ``label`` ("baseline", "FRDL", "FRDL+GOAT", "PromptPAR" ...)."""
    for spec in available_methods().values():
        if label in spec.labels:
            return spec
    known = sorted(name for spec in METHODS.values() for name in spec.labels)
    close = difflib.get_close_matches(label, known, n=2)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownMethod(f"unknown method {label!r}{hint}; known methods: {', '.join(known)}")
