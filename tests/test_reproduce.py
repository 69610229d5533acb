import json

import nbformat
import pytest

from parlab.reproduce import NOTEBOOKS, NotebookFailed, PROFILES, REPO, main, run_notebooks


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook(tmp_path):
    runs = run_notebooks("smoke", output_dir=tmp_path)
    assert [r.notebook for r in runs] == list(NOTEBOOKS)
    for r in runs:
        nb = json.loads(r.output.read_text())
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    figures = REPO / PROFILES["smoke"].figures_dir
    for name in ("synthpa_samples", "synthpa_phi", "synthpa_balancing", "synthpa_positive_ratios"):
        assert (figures / f"{name}.pdf").stat().st_size > 0 and (figures / f"{name}.png").stat().st_size > 0
    assert b"FontFile2" in (figures / "synthpa_phi.pdf").read_bytes()  # TrueType embedded
    assert (figures / "synthpa_label_summary.csv").read_text().startswith("attribute,positives")


def test_failing_notebook_names_notebook_and_cell(tmp_path):
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("dataset = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(nb, tmp_path / "notebooks" / "01_data_exploration.ipynb")
    with pytest.raises(NotebookFailed, match=r"01_data_exploration.ipynb failed in cell \d+.*ValueError: boom"):
        run_notebooks("smoke", only=["01"], output_dir=tmp_path / "out", repo=tmp_path)


def test_unknown_notebook_selection_is_an_error(capsys):
    with pytest.raises(ValueError, match="no notebook matches"):
        run_notebooks("smoke", only=["99"])
    assert main(["--profile", "smoke", "--only", "99"]) == 2
    assert "no notebook matches ['99']" in capsys.readouterr().err
