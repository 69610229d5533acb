import json
import time

import nbformat
import pytest

from parlab.reproduce import NOTEBOOKS, NotebookFailed, PROFILES, REPO, main, run_notebooks


# What each notebook writes in the smoke profile: figures (PDF + PNG) and tables (CSV).
OUTPUTS = {
    "01_data_exploration": {"figures": ["samples", "attribute_examples", "split_sizes", "image_sizes"],
                            "tables": ["split_sizes", "image_sizes"]},
    "02_label_imbalance": {"figures": ["positive_ratios", "imbalance_ratios", "label_cardinality", "phi",
                                       "conditional", "prior_shift", "balancing"],
                           "tables": ["label_summary", "cooccurrence", "phi", "conditional", "prior_shift",
                                      "balancing"]},
    "03_baseline": {"figures": ["baseline_learning_curves", "baseline_tpr_tnr_vs_ratio"],
                    "tables": ["baseline_results", "baseline_settings", "baseline_per_attribute"]},
    "04_frdl_goat": {"figures": ["frdl_gain_vs_ratio", "frdl_label_prior", "frdl_learning_curves"],
                     "tables": ["frdl_results", "frdl_settings", "frdl_per_attribute"]},
    "05_promptpar": {"figures": ["promptpar_learning_curves"],
                     "tables": ["clip_zero_shot", "promptpar_results", "promptpar_parameters", "promptpar_ablation"]},
    "06_visualisation": {"figures": ["cams_Hat", "cams_Female", "cams_Backpack", "cams_SkirtandDress",
                                     "promptpar_attention_0", "feature_maps", "frdl_embedding_Hat"],
                         "tables": []},
    "07_results": {"figures": ["methods_ma_f1", "per_attribute_ma"], "tables": ["results_all", "per_attribute_ma"]},
}


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook_and_each_writes_its_figures_and_tables(tmp_path):
    started = time.time()
    runs = run_notebooks("smoke", output_dir=tmp_path)
    assert [r.notebook for r in runs] == list(NOTEBOOKS) == list(OUTPUTS)
    for r in runs:
        nb = json.loads(r.output.read_text())
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    figures = REPO / PROFILES["smoke"].figures_dir
    for notebook, written in OUTPUTS.items():
        paths = [figures / f"synthpa_{name}.{ext}" for name in written["figures"] for ext in ("pdf", "png")]
        paths += [figures / f"synthpa_{name}.csv" for name in written["tables"]]
        for path in paths:  # written by this run, not left from an earlier one
            assert path.is_file() and path.stat().st_size > 0 and path.stat().st_mtime >= started, \
                f"{notebook}: {path.name}"
    assert (figures / "synthpa_results.tex").stat().st_mtime >= started
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
