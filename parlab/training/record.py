"""What a run records of itself: its three configs, under ``run``, ``data`` and ``method``.

``config.json`` and every checkpoint of a run (``best.pt``, ``last.pt``) hold
``method_name`` (what trained it: "baseline", "FRDL", "FRDL+GOAT",
"PromptPAR"...) and the run's configs by the names a task gives them:

- ``run``: :class:`~parlab.training.config.RunFields`;
- ``data``: :class:`~parlab.training.config.DataConfig`;
- ``method``: the method's own config dataclass.

Files written before this layout kept one flat ``config`` (the baseline's
every field; for FRDL stage 1's, with its root), the method's name under
``method`` and its own config under ``method_config`` (``frdl_config`` before
that). :func:`upgrade_record` reads them into today's layout, once, where a
record is read (:meth:`parlab.training.task.Task.upgrade_checkpoint`).
"""

from __future__ import annotations

from dataclasses import fields

from parlab.training.config import DataConfig, RunFields

CONFIG_KEYS = ("run", "data", "method")
EARLIER_LAYOUT_KEYS = ("config", "method_config", "frdl_config")  # where records kept their configs before


def pick_fields(config_class: type, *sources: dict) -> dict:
    """The fields of ``config_class`` found in ``sources``, each from the first source that has it."""
    picked = {}
    for f in fields(config_class):
        source = next((s for s in sources if f.name in s), None)
        if source is not None:
            picked[f.name] = source[f.name]
    return picked


def method_name_of(record: dict) -> str:
    """The method a ``config.json`` or checkpoint of any layout records ("baseline" when it names none)."""
    name = record.get("method_name", record.get("method"))
    return name if isinstance(name, str) else "baseline"


def is_current(record: dict) -> bool:
    """True when ``record`` keeps its configs under run, data and method."""
    return all(isinstance(record.get(key), dict) for key in CONFIG_KEYS)


def upgrade_record(record: dict, method_class: type) -> dict:
    """A ``config.json`` or checkpoint of an earlier layout, in today's (a current one is returned as it is).

    ``method_class``: the method's config dataclass, whose fields come from the method's own config first,
    then from the flat one (the baseline's model, PromptPAR's loss and optimiser). Fields added since are
    left out: they take their defaults, or the values the method's own upgrade gives them.
    """
    if is_current(record):
        return _protocol_named(record)
    record = dict(record)
    flat = record.pop("config", None) or {}
    own = record.pop("method_config", None) or {}
    record["method_name"] = record.pop("method", None) or "baseline"
    record["run"] = pick_fields(RunFields, own, flat)
    if "select_on" in own or "select_on" in flat:
        record["run"]["select_on"] = own.get("select_on", flat.get("select_on"))
    record.setdefault("data", pick_fields(DataConfig, own, flat))  # FRDL's own upgrade sets it from stage 1's
    record["method"] = pick_fields(method_class, own, flat)
    record.pop("seed", None)  # run.seed
    return _protocol_named(record)


# Before the protocol was named, the run's selection split was its select_on; selecting on test is the
# reference protocol, exactly (the training split stays what the run recorded).
SELECT_ON_PROTOCOL = {"val": "honest", "test": "reference"}


def _protocol_named(record: dict) -> dict:
    """``record`` with a run's ``select_on`` of earlier versions as its ``protocol``."""
    if "select_on" not in record["run"]:
        return record
    run = dict(record["run"])
    run.setdefault("protocol", SELECT_ON_PROTOCOL.get(run.pop("select_on"), "honest"))
    return record | {"run": run}
