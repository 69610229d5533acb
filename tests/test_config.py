"""Config fields are checked and coerced by their declared type, and files that cannot be read say why."""

from __future__ import annotations

import pytest

from parlab.errors import ConfigError, MissingFileError
from parlab.methods.frdl_config import FRDLConfig
from parlab.methods.promptpar.config import PromptPARConfig
from parlab.training.config import BaselineConfig, DataConfig, RunFields, read_mapping, split_config


def test_numbers_written_as_strings_become_numbers(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; a YAML file with it must still train.
    (tmp_path / "run.yaml").write_text("lr: 1e-3\nepochs: '3'\nimage_size: [64, 32]\nmilestones: [2, '4']\n")
    run, data, method = split_config(BaselineConfig, **read_mapping(tmp_path / "run.yaml"))
    assert method.lr == 1e-3 and isinstance(method.lr, float)
    assert run.epochs == 3 and isinstance(run.epochs, int)
    assert data.image_size == (64, 32) and method.milestones == (2, 4)
    assert RunFields(epochs=4.0).epochs == 4  # a whole float is an int
    (tmp_path / "method.yaml").write_text("lr: 1e-3\nmilestones: [2, '4']\n")
    assert BaselineConfig.from_file(tmp_path / "method.yaml") == BaselineConfig(lr=1e-3, milestones=(2, 4))


@pytest.mark.parametrize("field, value, message", [
    ("epochs", "ten", "'epochs' must be an integer, got 'ten'"),
    ("epochs", 2.5, "'epochs' must be an integer, got 2.5"),
    ("lr", "fast", "'lr' must be a number, got 'fast'"),
    ("lr", float("nan"), "'lr' must be a number"),
    ("image_size", 64, "'image_size' must be a list, got 64"),
    ("image_size", [64, 32, 3], "'image_size' must be a list of 2 values"),
    ("ema", "yes", "'ema' must be true or false, got 'yes'"),
    ("backbone", 50, "'backbone' must be a string, got 50"),
    ("grad_clip", -5, "'grad_clip' must be >= 0, got -5"),
    ("weight_decay", -1e-4, "'weight_decay' must be >= 0"),
])
def test_wrong_values_name_the_field_and_the_expected_type(field, value, message):
    # Each field is checked by the config that has it (RunFields, DataConfig or BaselineConfig).
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        split_config(BaselineConfig, **{field: value})


def test_every_method_config_coerces_its_fields():
    config = FRDLConfig(balance_start="2", lr="1e-3")
    assert config.balance_start == 2 and config.lr == 1e-3
    assert RunFields(epochs="6").epochs == 6 and DataConfig(image_size=["64", 32]).image_size == (64, 32)
    assert PromptPARConfig(image_size=["64", 32], vis_prompt="4").image_size == (64, 32)
    with pytest.raises(ConfigError, match="'goat' must be true or false"):
        FRDLConfig(goat="no")
    with pytest.raises(ConfigError, match="'fusion': 'vit' is not one of"):
        PromptPARConfig(fusion="vit")


@pytest.mark.parametrize("name, text, message", [
    ("broken.yaml", "epochs: [3\n", "broken.yaml: not valid YAML"),
    ("broken.json", "{\"epochs\": }", "broken.json: not valid JSON"),
    ("list.yaml", "- 1\n- 2\n", "expected a mapping of config fields, got list"),
])
def test_unreadable_config_files_are_one_line_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        RunFields.from_file(tmp_path / name)
    assert "\n" not in str(caught.value)


def test_a_missing_config_file_names_itself(tmp_path):
    with pytest.raises(MissingFileError, match="absent.yaml: config file not found"):
        BaselineConfig.from_file(tmp_path / "absent.yaml")


def _outside(bounds: str, integer: bool) -> list:
    """Values just outside a field's declared bounds (">= 0", "> 0", "in (0, 1]" ...)."""
    kind, _, rest = bounds.partition(" ")
    if kind in (">=", ">"):
        values = [float(rest) - 1 if kind == ">=" else float(rest)]
    else:
        low, high = (float(x) for x in rest[1:-1].split(","))
        values = [low - 1 if rest[0] == "[" else low, high + 1 if rest[-1] == "]" else high]
    return [int(v) for v in values] if integer else values


def _every_config():
    from parlab.methods.promptpar.config import PromptPARConfig
    from parlab.methods.promptpar.pretrain import CLIPPretrainConfig
    from parlab.training.config import BaselineConfig, DataConfig, RunFields

    return (RunFields, DataConfig, BaselineConfig, FRDLConfig, PromptPARConfig, CLIPPretrainConfig)


@pytest.mark.parametrize("config", _every_config(), ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range_and_a_value_outside_it_is_one_line(config):
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(config)
    checked = 0
    for f in fields(config):
        hint = hints[f.name]
        numeric = {int, float} & {hint, *typing.get_args(hint)} and hint is not bool
        if not numeric:
            continue
        bounds = f.metadata.get("bounds", "")
        assert bounds, f"{config.__name__}.{f.name} declares no range"
        integer = int in {hint, *typing.get_args(hint)}
        for value in _outside(bounds, integer):
            if typing.get_origin(hint) is tuple:
                value = tuple([value] * len(f.default)) if f.default else (value,)
            with pytest.raises(ValueError) as err:
                config(**{f.name: value})
            assert f"config field {f.name!r} must be {bounds}" in str(err.value) and "\n" not in str(err.value)
            checked += 1
    assert checked >= 3


def test_a_device_name_torch_would_refuse_is_one_line():
    from parlab.training.config import RunFields

    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert RunFields(device=good).device == good
    with pytest.raises(ValueError, match="config field 'device' must be auto, cpu, cuda, cuda:N"):
        RunFields(device="gpu0")
