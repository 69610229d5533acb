"""Training throughput of parlab's loop against a bare PyTorch loop, in the same process.

Both loops train the same model (same seed, batch size, loss, optimiser and
gradient clipping). The bare loop feeds batches already in memory; parlab's
loop is ``parlab.training.train`` for one epoch on SynthPA, once decoding the
JPEGs (DataLoader, per-image augmentation) and once from the uint8 image cache
(augmentation on the batch, on the device), so the difference is the cost of
data loading, loss reads, progress bars and logging. Validation is timed separately
(evaluation images/s, metrics included). Peak memory is the process's maximum
resident set size, and on a GPU the peak allocated GPU memory.

    .venv/bin/python benchmarks/train_throughput.py [--images 1920] [--backbone resnet10t]
    python benchmarks/train_throughput.py --device cuda --backbone resnet50 --image-size 256 192 \
        --amp bf16 --channels-last --num-workers 8 --images 19200

Defaults follow notebook 03 on SynthPA (resnet10t, 64x32, batch 64, CPU).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from parlab.data import load_dataset
from parlab.data.image_cache import build_image_cache
from parlab.labelstats import positive_ratio
from parlab.training import BaselineConfig, DataConfig, PARLoss, RunFields, train
from parlab.training.config import split_config
from parlab.training.distributed import resolve_device
from parlab.training.evaluation import autocast
from parlab.training.optim import build_optimizer
from parlab.training.task import SupervisedTask

REPO = Path(__file__).resolve().parents[1]


def bare_loop(run: RunFields, data: DataConfig, method: BaselineConfig, num_attributes: int, ratio,
              steps: int) -> float:
    """Images/s of forward + loss + backward + clip + step on batches already on the device."""
    device = resolve_device(run.device)
    torch.manual_seed(run.seed)
    model = SupervisedTask(run, data, method).build_model(num_attributes).to(device).train()
    memory = torch.channels_last if method.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = build_optimizer(model.parameters(), method)
    criterion = PARLoss(method.loss, ratio).to(device)
    x = torch.randn(run.batch_size, 3, *data.image_size, device=device).contiguous(memory_format=memory)
    y = (torch.rand(run.batch_size, num_attributes, device=device) < 0.2).float()
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp == "fp16")
    for step in range(steps + 1):
        if step == 1:  # the first step pays one-off allocation costs
            _sync(device)
            start = time.perf_counter()
        with autocast(device, run.amp):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        float(loss.detach())  # parlab reads the loss every step too
    _sync(device)
    return steps * run.batch_size / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "data" / "synthpa"))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1920, help="training images of parlab's epoch")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of parlab's loop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    ann = load_dataset("synthpa", args.root)
    ratio = positive_ratio(ann.split_labels("train"))
    with tempfile.TemporaryDirectory() as out:
        run, data, method = split_config(
            BaselineConfig, root=args.root, backbone=args.backbone, image_size=tuple(args.image_size),
            batch_size=args.batch_size, lr=1e-3, epochs=1, train_limit=args.images, scheduler="none",
            device=args.device, num_workers=args.num_workers, amp=args.amp, channels_last=args.channels_last,
            output_dir=f"{out}/decoded")
        steps = args.images // args.batch_size
        build_start = time.perf_counter()
        build_image_cache(f"{out}/cache", ann, data.image_size, log=lambda _: None)
        build_s = time.perf_counter() - build_start
        bare_loop(run, data, method, ann.num_attributes, ratio, 5)  # process warm-up (oneDNN kernels, allocator)
        bare_before = bare_loop(run, data, method, ann.num_attributes, ratio, steps)
        decoded = train(run, data, method, progress=False, log=lambda _: None).history.iloc[0]
        cached = train(replace(run, output_dir=f"{out}/cached"), replace(data, image_cache=f"{out}/cache"), method,
                       progress=False, log=lambda _: None).history.iloc[0]
        bare_after = bare_loop(run, data, method, ann.num_attributes, ratio, steps)
    bare = (bare_before + bare_after) / 2
    val_images = len(ann.split("val"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"{args.backbone} {tuple(args.image_size)} batch {args.batch_size}, amp {args.amp}, "
          f"channels-last {args.channels_last}, {args.device} ({where})")
    print(f"bare loop (in-memory batches): {bare:8.1f} img/s  (before {bare_before:.1f}, after {bare_after:.1f})")
    for name, row in (("decoding each epoch", decoded), ("from the image cache", cached)):
        rate = row["train_img_s"]
        print(f"parlab, {name + ':':<22}{rate:8.1f} img/s  ratio to bare {rate / bare:.3f}  "
              f"(evaluation incl. metrics {val_images / row['eval_s']:.1f} img/s)")
    print(f"({args.images} SynthPA training images, one epoch each; {args.num_workers} DataLoader workers when "
          f"decoding; the cache of all {len(ann.image_names)} images took {build_s:.1f} s to build)")
    print(f"peak memory (max RSS):         {peak:8.0f} MiB")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory (allocated):   {torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB")


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
