"""Training throughput of parlab's loop against a bare PyTorch loop, in the same process.

Both loops train the same model (same seed, batch size, loss, optimiser and
gradient clipping). The bare loop feeds batches already in memory; parlab's
loop is ``parlab.training.train`` for one epoch on SynthPA, so the difference
is the cost of data loading (JPEG decoding and augmentation), per-step loss
synchronisation, progress bars and logging. Validation is timed separately
(evaluation images/s, metrics included). Peak memory is the process's maximum
resident set size.

    .venv/bin/python benchmarks/train_throughput.py [--images 1920] [--backbone resnet10t]

Defaults follow notebook 03 on SynthPA (resnet10t, 64x32, batch 64).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from parlab.data import load_dataset
from parlab.labelstats import positive_ratio
from parlab.training import PARLoss, TrainConfig, train
from parlab.training.optim import build_optimizer
from parlab.training.task import SupervisedTask

REPO = Path(__file__).resolve().parents[1]


def bare_loop(config: TrainConfig, num_attributes: int, ratio, steps: int) -> float:
    """Images/s of forward + loss + backward + clip + step on in-memory batches."""
    torch.manual_seed(config.seed)
    model = SupervisedTask(config).build_model(num_attributes).train()
    optimizer = build_optimizer(model.parameters(), config)
    criterion = PARLoss(config.loss, ratio)
    x = torch.randn(config.batch_size, 3, *config.image_size)
    y = (torch.rand(config.batch_size, num_attributes) < 0.2).float()
    for step in range(steps + 1):
        if step == 1:  # the first step pays one-off allocation costs
            start = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        float(loss.detach())  # parlab reads the loss every step too
    return steps * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "data" / "synthpa"))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1920, help="training images of parlab's epoch")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of parlab's loop")
    args = parser.parse_args()

    ann = load_dataset("synthpa", args.root)
    ratio = positive_ratio(ann.split_labels("train"))
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(root=args.root, backbone=args.backbone, image_size=tuple(args.image_size),
                             batch_size=args.batch_size, lr=1e-3, epochs=1, train_limit=args.images,
                             scheduler="none", device="cpu", num_workers=args.num_workers,
                             output_dir=out)
        steps = args.images // args.batch_size
        bare_loop(config, ann.num_attributes, ratio, 5)  # process warm-up (oneDNN kernels, allocator)
        bare_before = bare_loop(config, ann.num_attributes, ratio, steps)
        run = train(config, progress=False, log=lambda _: None)
        bare_after = bare_loop(config, ann.num_attributes, ratio, steps)
    row = run.history.iloc[0]
    bare = (bare_before + bare_after) / 2
    parlab_rate = row["train_img_s"]
    val_images = len(ann.split("val"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.backbone} {tuple(args.image_size)} batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"bare loop (in-memory batches): {bare:8.1f} img/s  (before {bare_before:.1f}, after {bare_after:.1f})")
    print(f"parlab training loop:          {parlab_rate:8.1f} img/s  ({args.images} SynthPA images, one epoch, "
          f"{args.num_workers} workers)")
    print(f"overhead of parlab's loop:     {100 * (1 - parlab_rate / bare):8.1f} %  (ratio {parlab_rate / bare:.3f})")
    print(f"evaluation incl. metrics:      {val_images / row['eval_s']:8.1f} img/s  ({val_images} val images)")
    print(f"peak memory (max RSS):         {peak:8.0f} MiB")


if __name__ == "__main__":
    main()
