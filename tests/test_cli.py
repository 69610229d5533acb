"""The command line and the method registry: help from field metadata, light start-up, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from parlab.cli import _parser, main, option_values
from parlab.errors import ParlabError
from parlab.methods.promptpar.config import PAPER_DATA, PAPER_RUN, PromptPARConfig
from parlab.methods.registry import MethodSpec, OptionGroup, available_methods, method_for, register_method
from parlab.training.config import BaselineConfig, DataConfig, RunFields, help_of

REPO = Path(__file__).resolve().parents[1]


def test_every_config_field_of_every_method_has_help():
    configs = {group.config for spec in available_methods().values() for group in spec.groups}
    from parlab.methods.promptpar.pretrain import CLIPPretrainConfig

    assert len(configs) == 5  # RunFields, DataConfig, BaselineConfig, FRDLConfig, PromptPARConfig
    for cls in configs | {CLIPPretrainConfig}:
        missing = [f.name for f in fields(cls) if not help_of(f).strip()]
        assert not missing, f"{cls.__name__}: fields without help: {missing}"


def test_help_of_an_option_is_its_field_help_including_awkward_ones(capsys):
    with pytest.raises(SystemExit):
        main(["frdl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # A shared run field, a group default that differs from the dataclass's, and help or defaults holding quotes
    # keep their help.
    assert "training batch, per process (default: 64; must be >= 1)" in text  # the range the config checks
    assert "training epochs (default: 20; must be >= 1)" in text  # FRDL's run default, not RunFields' 30
    assert 'trained with head "attribute" (default: \'\')' in text
    assert '"auto" picks cuda when available, else cpu (default: \'auto\')' in text
    assert "dataset folder (default: '')" in text  # FRDL's data group default, not DataConfig's


def test_run_fields_are_defined_once_and_shared():
    shared = {f.name for f in fields(RunFields)}
    assert {"device", "amp", "num_workers", "seed", "output_dir", "protocol", "tensorboard"} <= shared
    for spec in available_methods().values():
        groups = {group.key: group.config for group in spec.groups}
        assert list(groups) == ["run", "data", "method"], spec.command
        assert groups["run"] is RunFields and groups["data"] is DataConfig, spec.command
        # Each option names one field of one group.
        names = [f.name for group in spec.groups for f in fields(group.config) if f.name not in group.skip]
        assert len(names) == len(set(names)), (spec.command, sorted(n for n in names if names.count(n) > 1))


def test_parser_builds_without_source_for_a_registered_method_defined_at_run_time():
    # A config class made at run time has no source file: help comes from metadata only.
    from dataclasses import make_dataclass

    from parlab.training.config import ConfigFile, option

    Made = make_dataclass("Made", [("steps", int, option(3, "how many # steps"))], bases=(ConfigFile,), frozen=True)
    spec = MethodSpec(command="made", task="parlab.training.task:SupervisedTask", labels=("Made",),
                      groups=(OptionGroup("run", RunFields, "run fields"), OptionGroup("data", DataConfig, "data"),
                              OptionGroup("method", Made, "made fields")), help="a method made here")
    before = dict(available_methods())
    register_method(spec)
    try:
        text = _parser(available_methods()).format_help()
        assert "made" in text
        sub = _parser(available_methods())._subparsers._group_actions[0].choices["made"].format_help()
        assert "how many # steps (default: 3)" in " ".join(sub.split())
    finally:
        from parlab.methods import registry

        registry.METHODS.clear()
        registry.METHODS.update(before)


def test_methods_are_found_by_what_their_runs_record():
    assert method_for("baseline").command == "train"
    assert method_for("FRDL").command == method_for("FRDL+GOAT").command == "frdl"
    assert method_for("PromptPAR").command == "promptpar"
    with pytest.raises(ParlabError, match="unknown method 'FRDl'.*did you mean FRDL"):
        method_for("FRDl")


def test_config_file_values_go_to_the_group_that_offers_them(tmp_path):
    spec = available_methods()["promptpar"]
    (tmp_path / "run.yaml").write_text("epochs: 3\nweights: clip.pt\nuse_div: false\n")
    args = _parser(available_methods()).parse_args(["promptpar", "--config", str(tmp_path / "run.yaml"),
                                                    "--epochs", "4", "--vis-prompt", "8"])
    values = option_values(spec, args)
    assert values["run"] == PAPER_RUN | {"epochs": 4}  # the paper's settings, then the command line
    assert values["data"] == PAPER_DATA
    assert PAPER_RUN["batch_size"] == 16 and PAPER_DATA["image_size"] == (224, 224)  # docs/methods.md section 5
    assert values["method"] == {"weights": "clip.pt", "use_div": False, "vis_prompt": 8}
    # The paper's optimisation is the method config's own defaults.
    method = PromptPARConfig()
    assert (method.optimizer, method.lr, method.momentum, method.weight_decay, method.scheduler, method.warmup_epochs,
            method.grad_clip, method.loss) == ("sgd", 8e-3, 0.9, 1e-4, "cosine", 5, 10.0, "weighted")


def test_help_answers_without_importing_torch():
    code = ("import sys, parlab.cli; from parlab.methods.registry import available_methods; available_methods(); "
            "parlab.cli._parser(available_methods()).format_help(); "
            "print(sorted(m for m in ('torch', 'timm', 'open_clip', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_version_has_its_own_module_and_nothing_reads_it_from_the_package_face():
    from parlab import __version__
    from parlab._version import __version__ as version

    assert __version__ == version
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "parlab").rglob("*.py")
                 if "from parlab import __version__" in p.read_text() or "parlab.__version__" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "config field 'epochs' must be >= 1"),
    (["train", "--dataset", "pa1000k", "--root", "/nonexistent"], "unknown dataset 'pa1000k'"),
    (["frdl", "--stage1", ""], "FRDL needs a stage-1 run"),
    (["evaluate", "/nonexistent/best.pt"], "/nonexistent/best.pt"),
])
def test_user_mistakes_are_one_error_line_and_exit_status_1(argv, message, capsys, tmp_path):
    argv = [*argv, "--output-dir", str(tmp_path / "run")] if argv[0] in ("train", "frdl") else argv
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_an_image_that_fails_in_a_dataloader_worker_is_one_line_naming_it(synthpa_root, tmp_path, capsys):
    import shutil

    from parlab.data import load_dataset

    root = Path(shutil.copytree(synthpa_root, tmp_path / "ds"))
    ann = load_dataset("synthpa", root)
    broken = ann.image_path(int(ann.split("train")[0]))
    broken.write_bytes(broken.read_bytes()[:200])
    argv = ["train", "--root", str(root), "--backbone", "test_resnet", "--image-size", "64", "32", "--epochs", "1",
            "--batch-size", "200", "--num-workers", "1", "--device", "cpu", "--output-dir", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}: unreadable or truncated image (") and err.count("\n") == 1


def test_a_config_error_is_a_parlab_error_and_still_a_value_error():
    with pytest.raises(ParlabError) as caught:
        BaselineConfig(head="linear_bnn")
    assert isinstance(caught.value, ValueError) and "not one of linear, linear_bn, attribute" in str(caught.value)


def test_a_folder_the_system_refuses_is_one_line_too(capsys):
    assert main(["train", "--output-dir", "/proc/parlab-cannot/run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: /proc/parlab-cannot") and len(err.strip().splitlines()) == 1


def test_list_options_take_their_item_type_their_length_and_may_be_empty():
    args = _parser(available_methods()).parse_args(["frdl", "--milestones"])
    assert args.milestones == []
    spec = available_methods()["frdl"]
    assert option_values(spec, args)["method"]["milestones"] == []
    with pytest.raises(SystemExit):  # a (height, width) pair takes exactly two numbers
        _parser(available_methods()).parse_args(["train", "--image-size", "64"])
    args = _parser(available_methods()).parse_args(["train", "--image-size", "64", "32"])
    assert args.image_size == [64, 32]
