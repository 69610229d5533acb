"""FRDL feature bank: vectorised push + pop against a per-sample Python loop and a plain copy.

Three timings in the same run, one CPU thread, B=64, A=26, C=2048, K=1024:
- parlab's ``FeatureBank`` (one (A, 2, K, C) tensor, vectorised push and pop);
- a straightforward per-sample, per-attribute loop over Python lists of tensors,
  the way the public FRDL code does it (written here, for reference only);
- the memory-bandwidth floor: copying the same bytes (B*A*C floats in and out)
  with two contiguous copies into and out of a bank-sized tensor, at a
  different place each step so that, as for the bank, the bytes are not
  already in the CPU caches.

    .venv/bin/python benchmarks/frdl_bank.py [--dim 2048] [--threads 1]
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
