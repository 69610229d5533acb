"""CAM speed: images/s of each Grad-CAM family method for a batch of SynthPA test images.

Models: notebook 03's default model (ResNet-10-T at 64x32; the run's best.pt when it exists,
else random weights of the same architecture) and PromptPAR on parlab-clip-tiny (the run's
best.pt when it exists, else random weights). One attribute, one target per image; the first
call of each method is a warm-up and is not timed.

    .venv/bin/python benchmarks/cam_speed.py [--images 32] [--runs runs/default/train]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from parlab.data import load_dataset
from parlab.data.images import build_transform
from parlab.inference import load_model
from parlab.methods.promptpar import PromptPARConfig, build_model as build_promptpar
from parlab.models import build_model
from parlab.models.clip import clip_transform
from parlab.visualisation import attribute_cams, cam_methods, model_inputs

REPO = Path(__file__).resolve().parents[1]


def models(runs: Path) -> dict[str, tuple[torch.nn.Module, object, str]]:
    """name -> (model, evaluation transform, where the weights came from)."""
    found = {}
    for name, folder in (("baseline (resnet10t)", "baseline_bce"), ("PromptPAR (parlab-clip-tiny)", "promptpar")):
        path = runs / folder / "best.pt"
        if path.is_file():
            loaded = load_model(path)
            found[name] = (loaded.model, loaded.transform, str(path))
    if "baseline (resnet10t)" not in found:
        found["baseline (resnet10t)"] = (build_model("resnet10t", 26).eval(), build_transform((64, 32)), "random")
    if "PromptPAR (parlab-clip-tiny)" not in found:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random")
            model = build_promptpar(PromptPARConfig(clip_model="parlab-clip-tiny", image_size=(64, 32), vis_prompt=20,
                                                    vis_depth=4)).eval()
        found["PromptPAR (parlab-clip-tiny)"] = (model, clip_transform((64, 32), train=False), "random")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "data" / "synthpa"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "default" / "train"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ann = load_dataset("synthpa", args.root)
    rows = ann.split("test")[:args.images]
    print(f"{args.images} SynthPA test images, attribute 0 ({ann.attributes[0]}), {torch.get_num_threads()} threads")
    for name, (model, transform, source) in models(Path(args.runs)).items():
        _, x = model_inputs(ann, rows, transform)
        print(f"{name}  (weights: {source})")
        for method in cam_methods():
            attribute_cams(model, x, [0], method)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                attribute_cams(model, x, [0], method)
            seconds = (time.perf_counter() - start) / args.repeats
            print(f"  {method:<10} {seconds:6.2f} s per batch  {len(x) / seconds:7.1f} images/s")


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
