"""PreciseBN: after each epoch, BatchNorm statistics are the plain average over training batches at the epoch's
final weights, not the running average of statistics gathered while the weights moved."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from parlab.errors import ConfigError
from parlab.training import BaselineConfig, DataConfig, RunFields, train
from parlab.training.engine import fit, load_run_data
from parlab.training.sampling import epoch_seed
from parlab.training.seeding import seed_everything
from parlab.training.task import SupervisedTask, Task
from parlab.training import distributed as dist

QUIET = {"progress": False, "log": lambda _: None}
BATCHES = 4


def _configs(root, out, precise_bn: int):
    # BatchNorm on the logits (the head PromptPAR and FRDL's ablation share) at a learning rate that moves the
    # head fast: the regime where running statistics fall behind the weights.
    return (RunFields(epochs=1, batch_size=16, device="cpu", precise_bn=precise_bn, output_dir=str(out)),
            DataConfig(root=str(root), image_size=(64, 32)),
            BaselineConfig(backbone="test_resnet", head="linear_bn", optimizer="adam", lr=3e-2, scheduler="none"))


def _average_statistics(run, data, method, state: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer: the mean over the first BATCHES training batches of epoch 0 of each batch's mean and
    unbiased variance, at the weights ``state``: what PyTorch's cumulative average (momentum None) gives."""
    task = SupervisedTask(run, data, method)
    ctx = dist.DistContext(0, 1, 0, torch.device("cpu"))
    task.setup(load_run_data(data, run, ctx), ctx, None, False)
    task.model.load_state_dict(state)
    seen: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda mod, args, _o, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in task.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seed_everything(epoch_seed(run.seed, 0, 2))
    task.on_epoch_start(0)
    with torch.no_grad():
        for i, batch in enumerate(task.train_batches(0)):
            if i == BATCHES:
                break
            task.training_step(batch)
    for h in hooks:
        h.remove()
    out = {}
    for name, inputs in seen.items():
        dims = [d for d in range(inputs[0].dim()) if d != 1]  # all but the channels
        means = torch.stack([x.mean(dims) for x in inputs])
        variances = torch.stack([x.var(dims, unbiased=True) for x in inputs])
        out[name] = (means.mean(0), variances.mean(0))
    return out


def test_batchnorm_statistics_are_the_average_over_training_batches_at_the_final_weights(synthpa_root, tmp_path):
    precise = train(*_configs(synthpa_root, tmp_path / "precise", BATCHES), **QUIET)
    stale = train(*_configs(synthpa_root, tmp_path / "stale", 0), **QUIET)
    for result in (precise, stale):
        state = torch.load(f"{result.output_dir}/best.pt", weights_only=True)["model"]
        expected = _average_statistics(*_configs(synthpa_root, tmp_path / "check", 0), state)
        gaps = [max(float((state[f"{name}.running_mean"] - mean).abs().max()),
                    float((state[f"{name}.running_var"] - var).abs().max() / var.abs().max()))
                for name, (mean, var) in expected.items()]
        if result is precise:
            assert max(gaps) < 1e-4, gaps
        else:  # what training's running average kept is another thing altogether
            assert max(gaps) > 1e-2, gaps
    log = pd.read_csv(f"{precise.output_dir}/log.csv")
    # The run says what the recomputation changed: validation under the statistics training kept, and after.
    assert {"val_loss_running_bn", "val_ma_running_bn"} <= set(log.columns)
    assert log.loc[0, "val_loss_running_bn"] != log.loc[0, "val_loss"]
    assert "val_loss_running_bn" not in pd.read_csv(f"{stale.output_dir}/log.csv").columns


def test_a_validation_loss_that_exploded_under_running_statistics_stays_near_the_training_loss(synthpa_root,
                                                                                                 tmp_path):
    # The divergence PromptPAR's logit BatchNorm showed on a small CLIP (a normal training loss, a validation loss
    # ten times higher after the first epoch), in a configuration small enough for a test: BatchNorm on the logits
    # at a learning rate that moves the head within the epoch. Evaluated with the running statistics the loss
    # explodes; with the statistics recomputed at the epoch's weights (PreciseBN, the fix) it is the training loss's.
    log = pd.read_csv(f"{train(*_configs(synthpa_root, tmp_path / 'run', BATCHES), **QUIET).output_dir}/log.csv")
    train_loss, running, precise = log.loc[0, ["train_loss", "val_loss_running_bn", "val_loss"]]
    assert running > 5 * train_loss, (running, train_loss)
    assert precise < 1.5 * train_loss, (precise, train_loss)
    assert log.loc[0, "val_ma"] > log.loc[0, "val_ma_running_bn"]


def test_the_same_seed_gives_the_same_statistics(synthpa_root, tmp_path):
    a = train(*_configs(synthpa_root, tmp_path / "a", BATCHES), **QUIET)
    b = train(*_configs(synthpa_root, tmp_path / "b", BATCHES), **QUIET)
    state_a, state_b = (torch.load(f"{r.output_dir}/best.pt", weights_only=True)["model"] for r in (a, b))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a.test.summary() == b.test.summary()


def test_a_task_whose_steps_do_more_is_refused_before_anything_is_written(tmp_path):
    class Banked(Task):  # like FRDL's stage 2: its steps push features into a bank
        pass

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="precise_bn is not available for Banked"):
        fit(Banked(RunFields(precise_bn=2, output_dir=str(out)), DataConfig(), BaselineConfig()), **QUIET)
    assert not out.exists()
    with pytest.raises(ConfigError, match="config field 'precise_bn' must be >= 0"):
        RunFields(precise_bn=-1)


def test_a_frozen_layer_in_eval_mode_keeps_its_statistics():
    from parlab.training.engine import recompute_bn_statistics

    frozen, trained = nn.BatchNorm1d(3).eval(), nn.BatchNorm1d(3)
    frozen.running_mean.fill_(7.0)

    class Toy(Task):
        def __init__(self):
            self.run = RunFields(seed=0)
            self.model = nn.Sequential(frozen, trained)

        def on_epoch_start(self, epoch):
            trained.train()  # the frozen one stays in eval mode, as a frozen tower is kept

        def train_batches(self, epoch):
            return [torch.randn(32, 3) * 5 + 2 for _ in range(3)]

        def forward_only(self, batch):
            with torch.no_grad():
                self.model(batch)

    task = Toy()
    assert recompute_bn_statistics(task, 0, 2, dist.DistContext(0, 1, 0, torch.device("cpu"))) == 1
    assert torch.all(frozen.running_mean == 7.0) and int(trained.num_batches_tracked) == 2
    # The trained layer sees the frozen one's output, x - 7 (x around 2): averaged over the two batches.
    assert trained.momentum == 0.1 and np.allclose(trained.running_mean.numpy(), 2 - 7, atol=1.5)


def test_precise_bn_with_an_ema_copy_is_refused(tmp_path):
    run, data, method = _configs(tmp_path, tmp_path / "run", BATCHES)
    with pytest.raises(ConfigError, match="precise_bn recomputes the trained model's statistics"):
        train(run, data, BaselineConfig(ema=True), **QUIET)
    assert not (tmp_path / "run").exists()
