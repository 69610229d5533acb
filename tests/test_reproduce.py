import json
import re
import time

import nbformat
import pytest
from test_results_page import check_page

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
    "05_promptpar": {"figures": ["promptpar_learning_curves", "promptpar_batchnorm_statistics"],
                     "tables": ["clip_zero_shot", "promptpar_results", "promptpar_parameters", "promptpar_ablation",
                                "promptpar_ablation_differences", "clip_comparison", "clip_ranking",
                                "promptpar_batchnorm_epoch1"]},
    "06_visualisation": {"figures": ["cams_Hat", "cams_Female", "cams_Backpack", "cams_SkirtandDress",
                                     "promptpar_attention_0", "feature_maps", "frdl_embedding_Hat",
                                     "worst_mistakes_Hat"],
                         "tables": []},
    "07_results": {"figures": ["methods_ma_f1", "per_attribute_ma"],
                   "tables": ["results_all", "per_attribute_ma", "paper_comparison"]},
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
    # The results page, written by the runner after the last notebook from this run's tables.
    page = (tmp_path / "results.md").read_text()
    assert page.startswith("# Results: profile `smoke`, synthpa") and "## PromptPAR beside the CLIP it tunes" in page
    check_page(page, figures, tmp_path / "timings.csv")


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


@pytest.mark.parametrize("dataset, balance_start, milestones", [
    ("pa100k", 4, [1]), ("peta", 21, [30]), ("rapv1", 6, [10]), ("rapv2", None, None), ("petazs", None, None),
    ("rapzs", None, None), ("wider", None, None)])
def test_paper_profile_dry_run_prints_the_public_codes_settings(dataset, balance_start, milestones, capsys, tmp_path):
    assert main(["--profile", "paper", "--dataset", dataset, "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    lines = dict(line.split(": ", 1) for line in out if not line.startswith(" "))
    assert list(lines) == list(NOTEBOOKS)
    params = {name: json.loads(text) for name, text in lines.items()}
    assert all(p["dataset"] == dataset and p["root"] == str(tmp_path) for p in params.values())
    baseline = params["03_baseline"]
    assert (baseline["backbone"], baseline["weights"], baseline["image_size"], baseline["epochs"], baseline["lr"]) == \
        ("resnet50.tv_in1k", "pretrained", [256, 192], 30, 1e-4)  # torchvision's ImageNet ResNet-50, through timm
    assert (baseline["protocol"], baseline["train_split"]) == ("reference", "trainval")
    assert baseline["ema"] == (dataset == "pa100k")
    frdl = params["04_frdl_goat"]
    assert (frdl["backbone"], frdl["weights"], frdl["protocol"]) == ("resnet50.tv_in1k", "pretrained", "reference")
    if balance_start is not None:  # the public stage-2 schedule of the datasets its configs cover
        assert (frdl["balance_start"], frdl["frdl_milestones"], frdl["feature_cache"]) == \
            (balance_start, milestones, 0)
    assert frdl["logit_bn_ablation"] is True  # the paper profile trains what the full profile does
    promptpar = params["05_promptpar"]
    assert (promptpar["clip_model"], promptpar["clip_weights"], promptpar["image_size"], promptpar["vis_prompt"]) == \
        ("ViT-L-14-quickgelu", "openai", [224, 224], 50)
    assert (promptpar["transform"], promptpar["threshold"], promptpar["fusion"], promptpar["fusion_weights"]) == \
        ("promptpar", 0.45, "vit_b16", "pretrained")
    assert (promptpar["optimizer"], promptpar["lr"], promptpar["prompt_lr"], promptpar["weight_decay"]) == \
        ("sgd", 8e-3, 4e-3, 1e-4)  # the paper's optimisation, not the small CLIP's AdamW
    assert (promptpar["epochs"], promptpar["protocol"], promptpar["precise_bn"], promptpar["logit_bn"]) == \
        (100, "reference", 0, True)
    assert '    epochs = 100  # OpenPAR PromptPAR/config.py line 11 (--epoch, default 100)' in out
    assert any(line.startswith("    threshold = 0.45  # ") for line in out)


def test_paper_profile_starts_from_imagenet_weights_unless_told_otherwise(tmp_path, capsys):
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(tmp_path), "--weights", "",
                 "--dry-run"]) == 2
    assert "--set weights=none trains from random weights" in capsys.readouterr().err
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(tmp_path), "--dry-run", "--only", "03",
                 "--set", "weights=none"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0].split(": ", 1)[1])["weights"] == "none"


def test_paper_profile_checks_its_inputs_before_any_notebook(tmp_path, capsys, synthpa_root):
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'absent'}: no such dataset folder (--root)"
    # SynthPA is written in PA100k's format: it stands in for the real dataset here.
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(synthpa_root), "--only", "03",
                 "--weights", str(tmp_path / "resnet50.safetensors"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'resnet50.safetensors'}: weights file not found"
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(synthpa_root), "--only", "05",
                 "--clip-weights", "", "--output", str(tmp_path / "out")]) == 2
    assert "05_promptpar: PromptPAR needs CLIP weights on pa100k" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_paper_profile_runs_end_to_end_on_a_small_stand_in(tmp_path, synthpa_root, capsys):
    small = ["backbone=test_resnet", "weights=none", "epochs=1", "image_size=[64,32]", "batch_size=32", "frdl_epochs=2",
             "balance_start=1", "frdl_milestones=[1]", "seeds=[0]", "device=cpu", "num_workers=0", "amp=none"]
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(synthpa_root), "--device", "cpu",
                 "--only", "01,02,03,04,07", "--output", str(tmp_path / "out"), "--set", *small]) == 0
    timings = (tmp_path / "out" / "timings.csv").read_text().splitlines()
    assert timings[0] == "notebook,seconds" and [t.split(",")[0] for t in timings[1:]] == [
        "01_data_exploration", "02_label_imbalance", "03_baseline", "04_frdl_goat", "07_results"]
    results = REPO / "runs" / "paper-pa100k" / "figures" / "pa100k_results_all.csv"
    assert results.is_file() and "FRDL" in results.read_text()


def test_paper_only_options_and_unknown_overrides_are_refused(tmp_path, capsys):
    assert main(["--profile", "smoke", "--weights", "x.pt", "--clip-weights", "", "--dry-run"]) == 2
    assert "--weights, --clip-weights: only for --profile paper" in capsys.readouterr().err
    assert main(["--profile", "smoke", "--dataset", "pa100k", "--dry-run"]) == 2
    assert "--dataset and --root go together" in capsys.readouterr().err
    assert main(["--profile", "smoke", "--dataset", "pa1000k", "--root", str(tmp_path), "--dry-run"]) == 2
    assert "unknown dataset 'pa1000k'" in capsys.readouterr().err
    assert main(["--profile", "paper", "--dataset", "pa100k", "--root", str(tmp_path), "--dry-run",
                 "--set", "epochz=3"]) == 2
    assert "--set epochz: not a parameter of the selected notebooks" in capsys.readouterr().err


def test_hub_weights_pass_the_input_check(synthpa_root, tmp_path):
    from parlab.reproduce import check_inputs, paper_profile

    profile = paper_profile("pa100k", str(synthpa_root), weights="hf-hub:timm/resnet50.a1_in1k",
                            clip_weights="openai")
    check_inputs(profile, ["03_baseline", "05_promptpar"])  # the libraries fetch these, not parlab


def test_full_profile_is_the_default_with_longer_schedules_and_every_ablation_over_three_seeds():
    from parlab.reproduce import notebook_parameters

    default, full = (notebook_parameters(PROFILES[name], ["03", "04", "05"]) for name in ("default", "full"))
    assert full["05_promptpar"]["ablation"] is True  # over the notebook's own ablation_seeds
    assert "ablation" not in default["05_promptpar"]  # the notebook's own False
    assert full["04_frdl_goat"]["logit_bn_ablation"] is True and "logit_bn_ablation" not in default["04_frdl_goat"]
    longer = {"epochs": 5, "frdl_epochs": 5, "balance_start": 2, "logit_bn_ablation": True, "ablation": True}
    for notebook in default:
        assert "epochs" not in default[notebook]  # the notebooks' own (3)
        assert full[notebook]["epochs"] == 5
        assert full[notebook]["runs_dir"] != default[notebook]["runs_dir"]
        assert full[notebook]["figures_dir"] != default[notebook]["figures_dir"]
        assert full[notebook]["image_cache"] != default[notebook]["image_cache"]
        # Everything else is the default's.
        assert {k: v for k, v in full[notebook].items() if not k.endswith(("_dir", "_cache")) and k not in longer} == \
            {k: v for k, v in default[notebook].items() if not k.endswith(("_dir", "_cache"))}


def test_every_profile_runs_on_another_dataset_and_says_what_it_skips(custom_root, capsys):
    assert main(["--profile", "default", "--dataset", "custom", "--root", str(custom_root), "--dry-run",
                 "--set", "epochs=1"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines.pop("05_promptpar").startswith("skipped: PromptPAR needs CLIP weights on custom")
    params = {name: json.loads(text) for name, text in lines.items()}
    assert list(params) == [n for n in NOTEBOOKS if n != "05_promptpar"]
    assert all(p["dataset"] == "custom" and p["root"] == str(custom_root) for p in params.values())
    assert all(p["figures_dir"] == str(REPO / "runs" / "default-custom" / "figures") for p in params.values())
    assert params["03_baseline"]["epochs"] == 1 and params["03_baseline"]["runs_dir"].endswith("default-custom/train")
    assert main(["--profile", "smoke", "--dataset", "custom", "--root", str(custom_root), "--only", "05",
                 "--dry-run"]) == 0  # a dry run lists; a run refuses a notebook asked for by name that cannot run
    assert main(["--profile", "smoke", "--dataset", "custom", "--root", str(custom_root), "--only", "05"]) == 2
    assert "05_promptpar: PromptPAR needs CLIP weights on custom" in capsys.readouterr().err


@pytest.mark.slow
def test_the_runner_talks_and_runs_a_persons_own_data(custom_root, tmp_path):
    from parlab.reproduce import on_dataset

    lines = []
    profile = on_dataset(PROFILES["smoke"], "custom", str(custom_root))
    runs = run_notebooks(profile, only=["02", "03", "06", "07"], output_dir=tmp_path, log=lines.append)
    assert [r.notebook for r in runs] == ["02_label_imbalance", "03_baseline", "06_visualisation", "07_results"]
    cells = len(json.loads((REPO / "notebooks" / "03_baseline.ipynb").read_text())["cells"]) + 1  # + the injected
    progress = [line for line in lines if line.startswith("[smoke] 03_baseline cell ")]
    assert progress[0].startswith(f"[smoke] 03_baseline cell 1/{cells} (") and len(progress) == cells
    assert any(re.match(r"    epoch +2/2  loss ", line) for line in lines)  # the training's own lines
    assert not any("without encryption" in line for line in lines)
    figures = REPO / "runs" / "smoke-custom" / "figures"
    assert (figures / "custom_baseline_results.csv").is_file() and (figures / "custom_results_all.csv").is_file()
    assert any(line == "    custom has no attribute Hat, Backpack, Skirt&Dress, Female: skipped" for line in lines)
