"""The papers' numbers as data: every row parses and names its source; a reproduction is held beside them."""

from __future__ import annotations

import pandas as pd
import pytest

from parlab.papers import FIELDS, paper_comparison, paper_results
from parlab.results import COLUMNS


def test_every_reported_number_parses_and_names_where_it_was_read():
    table = paper_results()
    assert tuple(table.columns) == FIELDS and len(table) > 0
    assert table["source"].str.len().min() > 10 and table["value"].between(0, 100).all()
    assert set(table["metric"]) <= set(COLUMNS)
    rethinking = table[(table["dataset"] == "pa100k") & (table["backbone"] == "resnet50 + EMA")]
    assert rethinking.set_index("metric")["value"]["mA"] == 81.97
    assert rethinking["source"].str.contains("Rethinking_of_PAR README.md line 46").all()
    promptpar = table[table["method"] == "PromptPAR"]
    assert "F1" not in set(promptpar["metric"]) and "instance F1" in set(promptpar["metric"])  # its code's F1


def _settings(methods: dict[str, float]) -> pd.DataFrame:
    rows = [{"method": m, "setting": s, **{c: ma + i for i, c in enumerate(COLUMNS)}}
            for m, ma in methods.items() for s in ("standard", "balanced (first)")]
    return pd.DataFrame(rows).set_index(["method", "setting"])


def test_a_reproduction_is_held_beside_the_papers_numbers():
    settings = _settings({"baseline weighted BCE": 80.0, "FRDL": 70.0})
    table = paper_comparison(settings, "PA100k")
    row = table.loc[("baseline weighted BCE", "resnet50 + EMA", "mA")]
    assert row["paper"] == 81.97 and row["reproduced"] == 80.0 and row["difference"] == pytest.approx(-1.97)
    assert table.loc[("baseline weighted BCE", "resnet50", "F1")]["reproduced"] == 84.0
    assert (table.loc["FRDL"]["paper"] == "–").all()  # nothing reported for it (yet)
    on_synthpa = paper_comparison(settings, "synthpa")
    assert (on_synthpa["paper"] == "–").all() and len(on_synthpa) == 2 * 6


def test_promptpars_reported_maxima_are_per_metric_maxima_over_epochs_on_test():
    from types import SimpleNamespace

    from parlab.results import epoch_maxima

    history = pd.DataFrame({"test_ma": [70.0, 75.0, 74.0], "test_acc": [60.0, 58.0, 61.0],
                            "test_instance_f1": [80.0, 79.0, 78.0]})
    run = SimpleNamespace(run=SimpleNamespace(protocol="reference"), history=history, output_dir="r")
    table = epoch_maxima({"PromptPAR": [run, run]})
    assert table.loc["PromptPAR", ["mA", "Acc", "instance F1"]].tolist() == [75.0, 61.0, 80.0]  # three epochs
    honest = SimpleNamespace(run=SimpleNamespace(protocol="honest"), history=history, output_dir="h")
    with pytest.raises(ValueError, match="reference protocol only"):
        epoch_maxima({"PromptPAR": [honest]})
