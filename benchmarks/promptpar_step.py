"""PromptPAR training steps: prompt tuning against full fine-tuning, cached against recomputed text.

All variants train the same PromptPAR model (same CLIP, seed, batch, loss and
SGD settings) on in-memory batches, in this process:

- prompt tuning: only the paper's parameters train (prompts, part tokens, text
  prompts, embeddings, fusion LayerNorms, heads); the CLIP is frozen, so the
  backward pass computes no weight gradients for it (activations still need
  gradients down to the first layer's prompts);
- full fine-tuning: the same model with every CLIP weight trained too;
- text features: with no text prompts, the sentence features are constant and
  cached; the other variant recomputes them through the text tower every step.

The ceiling of prompt tuning is the frozen visual tower's own forward and
backward down to its input (what prompt tuning cannot avoid, since the first
layer's prompts need gradients): the script times it on the same batch and
prints the prompt-tuning step's share of it.

It also writes a PromptPAR checkpoint's model part (trained parameters only)
and the whole model's state to a temporary folder and prints both sizes
(``--sizes-of ViT-L-14-quickgelu`` does this for another CLIP without timing it).

Random CLIP weights (speed does not depend on them; nothing is read or downloaded).

    .venv/bin/python benchmarks/promptpar_step.py [--clip-model parlab-clip-tiny] [--image-size 64 32]
    .venv/bin/python benchmarks/promptpar_step.py --clip-model ViT-B-16-quickgelu --image-size 224 224 \\
        --vis-depth 12 --batch-size 8 --steps 5
    .venv/bin/python benchmarks/promptpar_step.py --sizes-of ViT-L-14-quickgelu --vis-depth 24 --image-size 224 224
    python benchmarks/promptpar_step.py --device cuda --amp bf16 --clip-model ViT-L-14-quickgelu \
        --image-size 224 224 --vis-prompt 50 --vis-depth 24 --batch-size 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from parlab.methods.promptpar import PromptPARConfig, build_model
from parlab.methods.promptpar.training import PromptPARLoss
from parlab.models import count_parameters
from parlab.training.distributed import resolve_device
from parlab.training.evaluation import autocast
from parlab.training.losses import PARLoss
from parlab.training.optim import fused


def images_per_second(model, batch: torch.Tensor, labels: torch.Tensor, steps: int, amp: str = "none") -> float:
    """Images/s of forward + loss + backward + clip + SGD step (the first step is not timed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **fused(params))  # as parlab's
    criterion = PromptPARLoss(PARLoss("weighted", np.full(labels.shape[1], 0.2)), 0.5).to(batch.device)
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step pays one-off allocation costs
            _sync(batch.device)
            start = time.perf_counter()
        with autocast(batch.device, amp):
            loss = criterion(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
    _sync(batch.device)
    return steps * len(batch) / (time.perf_counter() - start)


def frozen_tower_floor(model, batch: torch.Tensor, steps: int, amp: str = "none") -> float:
    """Images/s of the frozen CLIP visual tower's forward and backward to its input: prompt tuning's ceiling."""
    visual = model.clip.visual
    x = batch.clone().requires_grad_(True)
    for step in range(steps + 1):
        if step == 1:
            _sync(batch.device)
            start = time.perf_counter()
        with autocast(batch.device, amp):
            out = visual(x)
        out.float().sum().backward()
        x.grad = None
    _sync(batch.device)
    return steps * len(batch) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(config: PromptPARConfig):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        return build_model(config)


def checkpoint_sizes(model) -> tuple[int, int]:
    """Bytes on disk of (the trained parameters, the whole model state), each saved with torch.save."""
    with tempfile.TemporaryDirectory() as folder:
        trained, whole = Path(folder) / "trained.pt", Path(folder) / "whole.pt"
        torch.save(model.trained_state_dict(), trained)
        torch.save(model.state_dict(), whole)
        return trained.stat().st_size, whole.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="parlab-clip-tiny")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 32])
    parser.add_argument("--vis-prompt", type=int, default=20)
    parser.add_argument("--vis-depth", type=int, default=4)
    parser.add_argument("--attributes", type=int, default=26)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes-of", help="only print the checkpoint sizes for this CLIP architecture")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    config = PromptPARConfig(clip_model=args.sizes_of or args.clip_model, image_size=tuple(args.image_size),
                             vis_prompt=args.vis_prompt, vis_depth=args.vis_depth, num_attributes=args.attributes)
    if args.sizes_of:
        trained, whole = checkpoint_sizes(build(config))
        print(f"{args.sizes_of}: trained parameters {trained / 2**20:.1f} MiB, whole model {whole / 2**20:.1f} MiB "
              f"({whole / trained:.0f}x)")
        return
    batch = torch.randn(args.batch_size, 3, *args.image_size, device=device)
    labels = (torch.rand(args.batch_size, args.attributes, device=device) < 0.2).float()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"{args.clip_model} at {args.image_size[0]}x{args.image_size[1]}, batch {args.batch_size}, "
          f"{args.steps} timed steps, amp {args.amp}, {device} ({where})")

    tuned = build(config).to(device)
    trainable, total = count_parameters(tuned)
    prompt_speed = images_per_second(tuned, batch, labels, args.steps, args.amp)
    floor = frozen_tower_floor(tuned, batch, args.steps, args.amp)
    print(f"prompt tuning   {prompt_speed:8.1f} img/s  ({trainable:,} of {total:,} parameters trained)")
    print(f"frozen tower    {floor:8.1f} img/s  (forward + backward to the input: the ceiling)")
    print(f"prompt tuning / frozen tower: {prompt_speed / floor:.2f}")
    if device.type == "cuda":
        print(f"peak GPU memory (allocated): {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    full = build(config).to(device)
    full.requires_grad_(True)
    full_trainable = count_parameters(full)[0]
    full_speed = images_per_second(full, batch, labels, args.steps, args.amp)
    print(f"full fine-tune  {full_speed:8.1f} img/s  ({full_trainable:,} parameters trained)")
    print(f"prompt tuning / full fine-tuning: {prompt_speed / full_speed:.2f}x")
    trained_bytes, whole_bytes = checkpoint_sizes(tuned)
    print(f"checkpoint model part: trained parameters {trained_bytes / 2**20:.2f} MiB, whole model "
          f"{whole_bytes / 2**20:.2f} MiB ({whole_bytes / trained_bytes:.0f}x)")

    text_config = PromptPARConfig(**{**config.to_dict(), "use_textprompt": False})
    cached = build(text_config).to(device)
    cached_speed = images_per_second(cached, batch, labels, args.steps, args.amp)
    recomputed = build(text_config).to(device)
    recomputed.text_cache = None  # text_features() now runs the text tower at every forward
    recomputed_speed = images_per_second(recomputed, batch, labels, args.steps, args.amp)
    print(f"text cached     {cached_speed:8.1f} img/s")
    print(f"text recomputed {recomputed_speed:8.1f} img/s")
    print(f"cached / recomputed: {cached_speed / recomputed_speed:.2f}x")


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
