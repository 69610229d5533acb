"""FRDL feature bank: vectorised push + pop against a per-sample Python loop and a plain copy;
the bank's share of a stage-2 step; cached against recomputed stage-2 features.

Part 1, three timings in the same run, one CPU thread, B=64, A=26, C=2048, K=1024:
- parlab's ``FeatureBank`` (one (A, 2, K, C) tensor, vectorised push and pop);
- a straightforward per-sample, per-attribute loop over Python lists of tensors,
  the way the public FRDL code does it (written here, for reference only);
- the memory-bandwidth floor: copying the same bytes (B*A*C floats in and out)
  with two contiguous copies into and out of a bank-sized tensor, at a
  different place each step so that, as for the bank, the bytes are not
  already in the CPU caches.

Part 2, the SynthPA default profile (resnet10t attribute head, 64x32 images,
batch 64, all CPU threads): balanced stage-2 steps timed section by section,
once recomputing the frozen features from images every step and once reading
them from a cache of pooled features, plus the one-off extraction of a view.

    .venv/bin/python benchmarks/frdl_bank.py [--dim 2048] [--threads 1] [--no-stage2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from parlab.methods.frdl import FeatureBank


class LoopBank:
    """Per-(attribute, label) Python ring buffers, filled and read one sample at a time."""

    def __init__(self, num_attributes: int, size: int) -> None:
        self.size = size
        self.items = [[[] for _ in range(2)] for _ in range(num_attributes)]
        self.write = [[0, 0] for _ in range(num_attributes)]
        self.passes = [[[] for _ in range(2)] for _ in range(num_attributes)]

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        for b in range(features.shape[0]):
            for a in range(features.shape[1]):
                lab = int(labels[b, a])
                buf = self.items[a][lab]
                if len(buf) < self.size:
                    buf.append(features[b, a].detach().clone())
                else:
                    buf[self.write[a][lab]] = features[b, a].detach().clone()
                self.write[a][lab] = (self.write[a][lab] + 1) % self.size

    def pop(self, batch_size: int, rng: random.Random, p: float = 0.5):
        feats, labels = [], []
        for _ in range(batch_size):
            row_f, row_l = [], []
            for a in range(len(self.items)):
                lab = int(rng.random() < p)
                queue = self.passes[a][lab]
                if not queue:
                    queue.extend(rng.sample(range(len(self.items[a][lab])), len(self.items[a][lab])))
                row_f.append(self.items[a][lab][queue.pop()])
                row_l.append(lab)
            feats.append(torch.stack(row_f))
            labels.append(row_l)
        return torch.stack(feats), torch.tensor(labels)


def per_step(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--attributes", type=int, default=26)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-stage2", action="store_true", help="skip part 2 (SynthPA default profile)")
    parser.add_argument("--stage2-steps", type=int, default=60)
    parser.add_argument("--root", default="data/synthpa", help="SynthPA default (generated when missing)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    b, a, c, k = args.batch, args.attributes, args.dim, args.size
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(b, a, c, generator=g)
    labels = (torch.rand(b, a, generator=g) < 0.3).long()

    bank = FeatureBank(a, c, size=k)
    for _ in range(k // 8):  # fill (both labels present in every buffer)
        bank.push(feats, labels)
    loop = LoopBank(a, k)
    for _ in range(k // 8):
        loop.push(feats, labels)
    rng = random.Random(0)

    popped = torch.empty(b, a, c)  # reused across steps, as the stage-2 loop does
    fast = per_step(lambda: (bank.push(feats, labels), bank.pop(b, generator=g, out=popped)), args.steps)
    slow = per_step(lambda: (loop.push(feats, labels), loop.pop(b, rng)), max(2, args.steps // 10))
    big = torch.ones(a * 2 * k, c)
    flat, out = feats.reshape(b * a, c), torch.empty(b * a, c)
    places = [(i * 7919 * b) % (a * 2 * k - b * a) for i in range(args.steps * 5 + 1)]
    step = iter(range(len(places)))

    def copy_same_bytes():
        i = next(step)
        big[places[i]:places[i] + b * a].copy_(flat)
        out.copy_(big[places[-1 - i]:places[-1 - i] + b * a])

    floor = per_step(copy_same_bytes, args.steps * 5 - 1)
    mib = 2 * feats.numel() * feats.element_size() / 2**20
    print(f"B={b} A={a} C={c} K={k}, {torch.get_num_threads()} thread(s); bank {bank.features.numel() * 4 / 2**30:.2f} GiB")
    print(f"FeatureBank push+pop:        {fast:9.2f} ms/step")
    print(f"per-sample Python loop:      {slow:9.2f} ms/step  ({slow / fast:.1f}x slower)")
    print(f"copy of the same {mib:.0f} MiB:     {floor:9.2f} ms/step  (bank = {fast / floor:.2f}x the copy)")
    if not args.no_stage2:
        torch.set_num_threads(threads)
        stage2_profile(args.root, args.stage2_steps)


def stage2_profile(root: str, steps: int) -> None:
    """Balanced stage-2 steps of the default profile, recomputed and cached, timed by section."""
    from parlab.data import load_dataset
    from parlab.data.images import PARImageDataset, build_transform
    from parlab.data.synthpa import generate
    from parlab.models import build_model
    from parlab.models.heads import AttributeClassifiers
    from parlab.training.distributed import setup
    from parlab.training.engine import train_loader
    from parlab.training.evaluation import eval_loader, forward_split
    from parlab.training.losses import multilabel_bce

    ann = load_dataset("synthpa", generate(root, "default"))
    a, batch = ann.num_attributes, 64
    torch.manual_seed(0)
    model = build_model("resnet10t", a, head="attribute", image_size=(64, 32)).eval().requires_grad_(False)
    c = model.head.expand.in_features
    ctx = setup("cpu")
    train_set = PARImageDataset(ann, "train", build_transform((64, 32), train=True))
    loader = train_loader(train_set, batch, 0, 0, ctx)
    loader.sampler.set_epoch(0)

    start = time.perf_counter()
    eval_set = PARImageDataset(ann, "train", build_transform((64, 32), train=False))
    cache, _ = forward_split(model.backbone, eval_loader(eval_set, 128, 0, ctx), ctx)
    extract_s = time.perf_counter() - start
    labels_all = torch.from_numpy(ann.labels[train_set.rows].astype("float32"))

    def run(cached: bool) -> dict[str, float]:
        bank = FeatureBank(a, c, size=1024)
        heads = AttributeClassifiers(a, c)
        optimizer = torch.optim.Adam(heads.parameters(), lr=1e-3, weight_decay=5e-4)
        popped = torch.empty(batch, a, c)
        draws = torch.Generator().manual_seed(0)
        times = dict.fromkeys(("data", "backbone", "attribute features", "bank push+pop", "heads"), 0.0)
        batches = iter(loader)
        for step in range(steps + 10):  # the first 10 steps fill the bank and are not timed
            t = [time.perf_counter()]
            if cached:
                take = torch.randint(len(cache), (batch,), generator=draws)
                g, y = cache[take], labels_all[take]
                t.append(time.perf_counter())
            else:
                x, y, _ = next(batches)
                t.append(time.perf_counter())
                with torch.no_grad():
                    g = model.backbone(x)
            t.append(time.perf_counter())
            with torch.no_grad():
                f = model.head.features(g)
            t.append(time.perf_counter())
            bank.push(f, y)
            if step == 9:
                bank.fill_by_repetition()
            feats, labels = bank.pop(batch, 0.5, draws, out=popped) if step >= 9 else (f, y)
            t.append(time.perf_counter())
            loss = multilabel_bce(heads(torch.relu(feats)), labels.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t.append(time.perf_counter())
            if step >= 10:
                for key, begin, end in zip(times, t, t[1:]):
                    times[key] += (end - begin) * 1e3 / steps
        return times

    print(f"\nstage 2, SynthPA default profile: resnet10t attribute head, A={a} C={c}, batch {batch}, "
          f"{torch.get_num_threads()} thread(s), {steps} balanced steps")
    steps_per_epoch = len(loader)
    results = {}
    for name, cached in (("recomputed from images", False), ("cached pooled features", True)):
        times = run(cached)
        total = sum(times.values())
        results[name] = total
        parts = ", ".join(f"{k} {v:.1f}" for k, v in times.items())
        print(f"{name:>24}: {total:7.1f} ms/step ({parts}); bank share {100 * times['bank push+pop'] / total:.1f}%; "
              f"epoch of {steps_per_epoch} steps {total * steps_per_epoch / 1e3:.1f} s")
    ratio = results["recomputed from images"] / results["cached pooled features"]
    print(f"cached steps are {ratio:.1f}x faster; extracting one cached view of {len(cache)} images took "
          f"{extract_s:.1f} s")


if __name__ == "__main__":
    main()
