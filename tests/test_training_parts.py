"""Pure parts of the training engine: losses, thresholds, samplers, config, splits, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parlab.training import CheckpointError, PARLoss, multilabel_bce, ratio_weights, tune_thresholds
from parlab.training.checkpoint import FORMAT, load_checkpoint, save_atomic, state_dict_difference
from parlab.training.config import BaselineConfig, DataConfig, RunFields, split_config
from parlab.training.sampling import EpochSampler, ShardSampler
from parlab.training.splits import resolve_splits


def _bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_sums_attributes_averages_images_and_ignores_minus_one():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    expected = ((_bce(2, 1) + _bce(-1, 0)) + (_bce(0, 0) + _bce(3, 1) + _bce(-2, 1))) / 2
    assert multilabel_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_reference_and_sqrt_weights():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ratio = torch.tensor([0.2, 0.9])
    w = ratio_weights(targets, ratio, "weighted")
    assert torch.allclose(w, torch.tensor([[math.exp(0.8), math.exp(0.9)], [math.exp(0.2), math.exp(0.1)]]))
    s = ratio_weights(targets, ratio, "sqrt")
    expected = [[math.sqrt(1 / 0.4), math.sqrt(1 / 0.2)], [math.sqrt(1 / 1.6), math.sqrt(1 / 1.8)]]
    assert torch.allclose(s, torch.tensor(expected))


def test_weighted_loss_weights_each_element():
    logits = torch.tensor([[0.3, -0.7]])
    targets = torch.tensor([[1.0, 0.0]])
    ratio = np.array([0.25, 0.6])
    loss = PARLoss("weighted", ratio)(logits, targets).item()
    assert loss == pytest.approx(math.exp(0.75) * _bce(0.3, 1) + math.exp(0.6) * _bce(-0.7, 0), rel=1e-6)
    with pytest.raises(ValueError, match="needs the training positive ratios"):
        PARLoss("sqrt")


def test_tuned_thresholds_maximise_balanced_accuracy():
    # Attribute 0 separates at 0.3; attribute 1 at 0.7; attribute 2 has no positives.
    gt = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probs = np.array([[0.35, 0.6, 0.9], [0.4, 0.8, 0.1], [0.2, 0.75, 0.2], [0.1, 0.65, 0.3]])
    t = tune_thresholds(gt, probs)
    assert 0.2 <= t[0] < 0.35 and 0.65 <= t[1] < 0.75
    assert t[2] == 0.5
    assert ((probs[:, :2] > t[:2]) == gt[:, :2].astype(bool)).all()


def test_epoch_sampler_is_seeded_sharded_and_independent_of_world_size():
    single = EpochSampler(10, seed=4)
    single.set_epoch(2)
    order = list(single)
    again = EpochSampler(10, seed=4)
    again.set_epoch(2)
    assert order == list(again)
    single.set_epoch(3)
    assert [i for i, _ in single] != [i for i, _ in order]
    assert sorted(i for i, _ in order) == list(range(10))
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=4, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append(list(s))
    assert all(len(sh) == 4 for sh in shards)  # padded to 12 so every rank steps together
    merged = [shards[p % 3][p // 3] for p in range(12)]
    assert merged[:10] == order  # the same (index, seed) pairs at the same positions
    assert set(i for i, _ in merged) == set(range(10))


def test_shard_sampler_covers_each_item_once():
    parts = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7))


def test_config_validation_and_files(tmp_path):
    with pytest.raises(ValueError, match="'loss': 'focal' is not one of bce, weighted, sqrt"):
        BaselineConfig(loss="focal")
    with pytest.raises(ValueError, match="'protocol': 'test' is not one of honest, reference"):
        RunFields(protocol="test")
    for config in (RunFields, DataConfig, BaselineConfig):
        with pytest.raises(ValueError, match="unknown config field.*colour"):
            config.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown config field 'colour'"):
        split_config(BaselineConfig, epochs=2, colour=1)
    path = tmp_path / "exp.yaml"
    path.write_text("backbone: resnet18\nmilestones: [5, 8]\nema: true\n")
    cfg = BaselineConfig.from_file(path)
    assert cfg.milestones == (5, 8) and cfg.ema and cfg.backbone == "resnet18"
    assert cfg.differences(BaselineConfig()) == [
        "milestones: (5, 8) vs (10, 20)", "ema: True vs False", "backbone: 'resnet18' vs 'resnet50'"]
    assert cfg.differences(BaselineConfig(), ignore=("ema",)) == [
        "milestones: (5, 8) vs (10, 20)", "backbone: 'resnet18' vs 'resnet50'"]
    path.write_text("image_size: [128, 64]\ntrain_limit: 32\n")
    data = DataConfig.from_file(path)
    assert data.image_size == (128, 64)
    assert data.differences(DataConfig()) == ["image_size: (128, 64) vs (256, 192)", "train_limit: 32 vs 0"]


def test_rapv1_gets_a_seeded_validation_subset_carved_from_trainval(tmp_path):
    from formats import write_rapv1

    from parlab.data import load_dataset

    write_rapv1(tmp_path / "RAP_annotation.mat", n=40)
    ann = load_dataset("rapv1", tmp_path)
    cfg = DataConfig(dataset="rapv1", train_split="trainval", val_fraction=0.25)
    plan = resolve_splits(ann, cfg)
    trainval = ann.split("trainval")
    assert np.intersect1d(plan.train, plan.val).size == 0
    assert np.array_equal(np.sort(np.concatenate([plan.train, plan.val])), np.sort(trainval))
    assert len(plan.val) == round(0.25 * len(trainval))
    assert "carved from trainval" in plan.note and "no 'val' split" in plan.note
    assert np.array_equal(resolve_splits(ann, cfg).val, plan.val)
    assert np.array_equal(resolve_splits(ann, cfg, "honest", 0).val, plan.val)
    assert not np.array_equal(resolve_splits(ann, cfg, seed=1).val, plan.val)
    assert "seed 1" in resolve_splits(ann, cfg, seed=1).note
    on_test = resolve_splits(ann, DataConfig(dataset="rapv1", train_split="trainval"), protocol="reference")
    assert "reference protocol" in on_test.note and np.array_equal(on_test.selection, ann.split("test"))
    assert on_test.selects_on == "test" and plan.selects_on == "val"


def test_the_honest_protocol_refuses_a_validation_split_inside_the_training_split(synthpa_root):
    from parlab.data import load_dataset

    ann = load_dataset("synthpa", synthpa_root)
    trainval = DataConfig(root=str(synthpa_root), train_split="trainval")  # SynthPA's val is part of trainval
    with pytest.raises(ValueError, match=r"images are in both trainval and val.*protocol='reference'"):
        resolve_splits(ann, trainval)
    reference = resolve_splits(ann, trainval, protocol="reference")
    assert np.array_equal(reference.train, ann.split("trainval")) and reference.selects_on == "test"
    assert "reference protocol: trained on trainval, selected on test" in reference.note
    honest = resolve_splits(ann, DataConfig(root=str(synthpa_root)))
    assert np.intersect1d(honest.train, honest.val).size == 0 and "selected on val" in honest.note


def test_atomic_save_keeps_previous_and_truncation_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"format": FORMAT, "epoch": 1, "w": torch.ones(3)}, path, keep_previous=True)
    save_atomic({"format": FORMAT, "epoch": 2, "w": torch.ones(3) * 2}, path, keep_previous=True)
    assert load_checkpoint(tmp_path / "previous.pt")["epoch"] == 1
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]  # no temporary left
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last.pt: truncated or damaged.*previous.pt is untouched"):
        load_checkpoint(path)


class Payload:  # an arbitrary class: loading it would mean running code
    pass


def test_checkpoints_with_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a parlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_state_dict_difference_is_readable():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = model.state_dict()
    state.pop("1.bias")
    state["0.weight"] = torch.zeros(4, 2)
    state["extra"] = torch.zeros(1)
    lines = state_dict_difference(model, state)
    assert lines == ["missing in checkpoint: 1.bias", "unexpected in checkpoint: extra",
                     "shape mismatch: 0.weight (4, 2) vs model (3, 2)"]


def test_warmup_cosine_schedule():
    from parlab.training.optim import WarmupCosine

    rule = WarmupCosine(warmup=4, total=14)
    assert [rule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert rule(9) == pytest.approx(0.5)  # half-way through the cosine part
    assert rule(14) == pytest.approx(0.0) and rule(20) == pytest.approx(0.0)


def test_optimisers_use_the_fused_kernels_where_every_parameter_can():
    from parlab.training.optim import build_optimizer, fused

    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    assert fused(weights) == {"fused": True}
    assert fused([{"params": weights}, {"params": weights[:1]}]) == {"fused": True}
    assert fused([torch.nn.Parameter(torch.randn(2, device="meta"))]) == {} and fused([]) == {}
    for name in ("adam", "adamw", "sgd"):
        optimizer = build_optimizer(iter(weights), BaselineConfig(optimizer=name))  # a generator, as model.parameters()
        assert optimizer.param_groups[0]["fused"] is True and len(optimizer.param_groups[0]["params"]) == 2
    # Same update rule as the default kernel, to rounding.
    reference = [p.detach().clone().requires_grad_(True) for p in weights]
    steps = [torch.optim.Adam(weights, lr=0.1, weight_decay=1e-2, **fused(weights)),
             torch.optim.Adam(reference, lr=0.1, weight_decay=1e-2, foreach=False)]
    for _ in range(3):
        for optimizer, params in zip(steps, (weights, reference)):
            for p in params:
                p.grad = p.detach() * 2 + 1
            optimizer.step()
    for a, b in zip(weights, reference):
        torch.testing.assert_close(a, b)


def test_an_optimiser_step_pre_hook_reads_unscaled_gradients_under_loss_scaling():
    """PromptPAR clips each group in a step pre-hook; a fused optimiser must not hand it scaled gradients."""
    from types import SimpleNamespace

    from parlab.methods.promptpar.training import GroupGradClip
    from parlab.training.engine import optimizer_step
    from parlab.training.optim import fused

    def updated(scale: float) -> torch.Tensor:
        weight = torch.nn.Parameter(torch.ones(4))
        optimizer = torch.optim.SGD([weight], lr=1.0, **fused([weight]))
        optimizer.register_step_pre_hook(GroupGradClip(1.0))
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=scale != 1.0)
        task = SimpleNamespace(optimizer=optimizer, scaler=scaler, grad_clip=0.0, ema=None, per_step=False,
                               scheduler=None, model=None)
        optimizer_step(task, (weight * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum(), 0)  # gradient norm 5
        return weight.detach()

    expected = torch.tensor([1 - 0.6, 1 - 0.8, 1.0, 1.0])  # the gradient clipped to norm 1, one step of lr 1
    torch.testing.assert_close(updated(1.0), expected)
    torch.testing.assert_close(updated(2.0 ** 10), expected)


def test_a_checkpoint_of_the_single_tensor_kernel_loads_into_a_fused_optimiser():
    """Earlier runs saved single-tensor Adam states; a fused optimiser resuming one stays fused (fp16 included)."""
    from parlab.training.optim import fused, load_optimizer_state

    weight = torch.nn.Parameter(torch.ones(3))
    earlier = torch.optim.Adam([weight], lr=0.1, foreach=False)
    weight.grad = torch.ones(3)
    earlier.step()
    optimizer = torch.optim.Adam([weight], lr=0.1, **fused([weight]))
    load_optimizer_state(optimizer, earlier.state_dict())
    assert optimizer.param_groups[0]["fused"] is True and optimizer.state[weight]["step"] == 1
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    optimizer.zero_grad()
    scaler.scale((weight * 2).sum()).backward()
    scaler.step(optimizer)  # a fused step, handed the scaler's found_inf
    scaler.update()
    assert optimizer.state[weight]["step"] == 2 and (weight < 1 - 0.1).all()
