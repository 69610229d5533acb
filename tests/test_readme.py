"""The README as a newcomer reads it: short, its quickstart runs as written, its results table is the run's."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parlab.results_page import (
    HEADLINE_END,
    HEADLINE_START,
    page_provenance,
    write_readme_headline,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NUMBER = re.compile(r"-?\d+\.\d+")


def test_the_readme_is_at_most_300_lines_and_every_page_it_links_exists():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, missing


def test_every_link_between_the_docs_pages_resolves():
    for page in (REPO / "docs").glob("*.md"):
        links = re.findall(r"\]\(([^)#]+)\)", page.read_text(encoding="utf-8"))
        missing = [link for link in links if "://" not in link and not (page.parent / link).exists()]
        assert not missing, f"{page.name}: {missing}"


def _headline(text: str) -> str:
    return text.split(HEADLINE_START, 1)[1].split(HEADLINE_END, 1)[0]


def test_the_readmes_results_are_the_results_page_s_of_the_same_run():
    block = _headline(README.read_text(encoding="utf-8"))
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    numbers = set(NUMBER.findall(block.split("\n\n", 1)[1]))  # the table, after the provenance line
    assert len(numbers) >= 10, "no headline table: run make reproduce"
    unknown = numbers - set(NUMBER.findall(page.split("\n## ", 1)[1]))
    assert not unknown, f"README numbers that docs/results.md does not hold: {sorted(unknown)}"
    rows = page_provenance(page)
    assert f"commit {rows['commit']}, {rows['date']}" in block  # both written by one run


def test_the_headline_block_is_rewritten_and_nothing_else(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "synthpa_results_all.csv").write_text(
        "method,setting,mA,mA std,F1,F1 std,runs\n"
        "baseline BCE,standard,61.8123,,76.06,,1\n"
        "baseline BCE (tuned thr.),standard,70.781,,62.59,,1\n"
        "FRDL,standard,72.04,0.6,56.47,3.1,3\n"
        "FRDL,balanced (first),99.99,0.1,1.0,0.0,3\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("# Results\n\n| | |\n|---|---|\n| profile | default |\n| commit | abc1234 |\n"
                    "| date | 2026-01-02 03:04 UTC |\n| machine | a CPU, 2 cores |\n\n## Every method\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{HEADLINE_START}\nold table 12.34\n{HEADLINE_END}\n\nafter\n")
    assert write_readme_headline(readme, figures, "synthpa", page)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(f"{HEADLINE_END}\n\nafter\n")
    assert "12.34" not in text and "99.99" not in text  # the old block went; the standard setting only
    assert "| baseline BCE | 61.81 | 70.78 | 76.06 | 1 |" in text
    assert "| FRDL | 72.04 ± 0.60 |  | 56.47 ± 3.10 | 3 |" in text
    assert "commit abc1234, 2026-01-02 03:04 UTC, a CPU, 2 cores" in text and "(docs/results.md)" in text
    again = text
    assert write_readme_headline(readme, figures, "synthpa", page) and readme.read_text() == again
    plain = tmp_path / "plain.md"
    plain.write_text("no block here\n")
    assert not write_readme_headline(plain, figures, "synthpa", page) and plain.read_text() == "no block here\n"


def quickstart_commands() -> list[str]:
    """The commands of the README's quickstart block, in order (comments left out)."""
    section = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture
def newcomer(synthpa_root, tmp_path, monkeypatch):
    """A working folder as the quickstart expects it: my_people/ (a labels.csv dataset), photos/ (a few images,
    one photo.jpg), timm's resnet50.tv_in1k in an offline Hugging Face cache, and a PA100k-format folder."""
    import timm
    import torch
    from formats import write_table

    from parlab.data import load_dataset

    ann = load_dataset("synthpa", synthpa_root)
    people = tmp_path / "my_people"
    (people / "cam1").mkdir(parents=True)
    split_of = {int(r): s for s in ("train", "val", "test") for r in ann.split(s)}
    # The attributes with a positive in train (a 200-image SynthPA lacks the rarest ones; a table must not).
    keep = [j for j in range(ann.num_attributes) if (ann.labels[ann.split("train"), j] == 1).any()]
    assert "Hat" in [ann.attributes[j] for j in keep]
    rows = []
    for i, name in enumerate(ann.image_names):
        shutil.copy(ann.image_path(i), people / "cam1" / Path(str(name)).name)
        rows.append([f"cam1/{Path(str(name)).name}", split_of[i], *ann.labels[i, keep].tolist()])
    write_table(people, ["image", "split", *(ann.attributes[j] for j in keep)], rows)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("photo.jpg", "a.jpg", "b.jpg")):
        shutil.copy(ann.image_path(int(ann.split("test")[i])), photos / name)
    # The weights (a) names, where timm's loader looks for them: random, but through the real loading path.
    torch.manual_seed(0)
    export = tmp_path / "export"
    timm.models.save_for_hf(timm.create_model("resnet50", num_classes=1000), export, safe_serialization=True)
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet50.tv_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(export / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return tmp_path, env, synthpa_root


# What the test adds to a command, or puts in place of a path: small sizes for a CPU, and no GPU.
SMALL = ["--epochs", "1", "--image-size", "64", "32", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def test_the_quickstart_runs_as_written(newcomer):
    folder, env, pa100k_format = newcomer
    commands = quickstart_commands()
    assert [shlex.split(c)[:2] for c in commands] == [["parlab", "train"], ["parlab", "predict"], ["parlab", "cam"],
                                                      ["python", "-m"]]
    train, predict, cam, paper = (shlex.split(c) for c in commands)
    paper = [sys.executable, *paper[1:]]
    paper[paper.index("/data/PA100k")] = str(pa100k_format)
    steps = [train + SMALL, predict, cam, paper + ["--dry-run"]]
    for argv in steps:
        result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr[-2000:]}"
        if argv is steps[-1]:
            printed = result.stdout
    import pandas as pd

    predictions = pd.read_csv(folder / "predictions.csv")
    assert len(predictions) == 3 and {"prob.Hat", "label.Hat"} <= set(predictions.columns)
    assert (folder / "cams" / "photo_Hat.png").stat().st_size > 0
    config = (folder / "runs" / "mine" / "config.json").read_text()
    assert "resnet50.tv_in1k" in config and str(folder / "hf") in config  # the weights came through timm's cache
    assert '"protocol": "reference"' in printed and "resnet50.tv_in1k" in printed
