"""docs/adding-a-method.md's example, run as written: a method defined outside parlab, found through the
``parlab.methods`` entry point, trained and evaluated by the ``parlab`` command and read back by open_run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from parlab.training.losses import multilabel_bce

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "adding-a-method.md"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """A folder holding the page's module and the metadata of an installed package naming it as an entry point."""
    folder = tmp_path_factory.mktemp("plugin")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    source = next(b for b in blocks if b.startswith("# focal.py"))
    (folder / "focal.py").write_text(source)
    # The page's pyproject.toml table, as pip writes it into the installed package's entry_points.txt.
    toml = re.search(r"```toml\n(.*?)```", PAGE.read_text(), flags=re.DOTALL).group(1)
    points = tomllib.loads(toml)["project"]["entry-points"]["parlab.methods"]
    info = folder / "focal_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: focal-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[parlab.methods]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return folder


def _parlab(plugin: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "parlab", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_focal_loss_of_the_example_is_bce_weighted_towards_hard_labels(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    from parlab.methods import registry

    before = dict(registry.METHODS)
    try:
        import focal
    finally:  # importing registered it here; leave the registry as the other tests know it
        registry.METHODS.clear()
        registry.METHODS.update(before)
    logits = torch.tensor([[4.0, -4.0, 0.0], [4.0, 0.5, 2.0]])
    targets = torch.tensor([[1, 0, -1], [0, 1, 1]])
    assert torch.allclose(focal.FocalLoss(0.0)(logits, targets), multilabel_bce(logits, targets))
    # gamma 2: the confident right answers (4 for a positive, -4 for a negative) count almost nothing, the
    # confident wrong one (4 for a negative) keeps nearly all of its BCE.
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[4.0]])
    assert focal.FocalLoss(2.0)(easy, torch.tensor([[1]])) < 1e-3 * multilabel_bce(easy, torch.tensor([[1]]))
    assert focal.FocalLoss(2.0)(hard, torch.tensor([[0]])) > 0.9 * multilabel_bce(hard, torch.tensor([[0]]))


def test_a_method_of_another_package_trains_and_evaluates_through_the_parlab_command(plugin, synthpa_root, tmp_path):
    help_text = _parlab(plugin, "--help")
    assert help_text.returncode == 0 and "focal" in help_text.stdout, help_text.stderr
    assert "--focal-gamma" in _parlab(plugin, "focal", "--help").stdout
    out = tmp_path / "focal"
    trained = _parlab(plugin, "focal", "--dataset", "synthpa", "--root", str(synthpa_root), "--backbone", "test_resnet",
                      "--image-size", "64", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                      "--focal-gamma", "1.5", "--no-progress", "--output-dir", str(out))
    assert trained.returncode == 0, trained.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["method_name"] == "Focal" and config["method"]["focal_gamma"] == 1.5
    evaluated = _parlab(plugin, "evaluate", str(out), "--split", "test", "--json", str(tmp_path / "m.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["ma"] > 0
    # Without the entry point the command does not know the method: the run names it and what is known.
    alone = subprocess.run([sys.executable, "-m", "parlab", "evaluate", str(out)], capture_output=True, text=True,
                           timeout=600)
    assert alone.returncode == 1 and "unknown method 'Focal'" in alone.stderr


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(plugin, tmp_path):
    broken = tmp_path / "broken"
    info = broken / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[parlab.methods]\nbroken = not_a_module_anywhere\n")
    result = _parlab(broken, "--help")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the parlab method plugin 'broken' (not_a_module_anywhere) failed to load: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"]
