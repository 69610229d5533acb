"""Project rules: dependency lists agree, notebooks are clean and parameterised."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(d): d for d in deps} == {_name(d): d for d in pip if not d.startswith("-e")}


SEVEN = ["01_data_exploration", "02_label_imbalance", "03_baseline", "04_frdl_goat", "05_promptpar",
         "06_visualisation", "07_results"]


def test_the_seven_notebooks_exist_in_order_and_reproduce_runs_them_all():
    assert [p.stem for p in NOTEBOOKS] == SEVEN
    from parlab.reproduce import NOTEBOOKS as RUN

    assert [Path(n).stem for n in RUN] == SEVEN


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for cell in code:
        src = "".join(cell["source"])
        assert not cell.get("outputs") and cell.get("execution_count") is None, "committed with outputs"
        assert not re.search(r"^\s*(def|class)\s", src, re.M), "defines a function or class"
