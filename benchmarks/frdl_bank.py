"""FRDL feature bank: vectorised push + pop against per-sample Python loops and a plain copy;
the bank's share of a stage-2 step; cached against recomputed stage-2 features.

Part 1, timings interleaved in the same run, one CPU thread, B=64, A=26, C=2048, K=1024:
- parlab's ``FeatureBank`` (one (A, 2, K, C) tensor, vectorised push and pop);
- the reference: the public FRDL code's per-sample, per-attribute loops, operation for
  operation (re-written here, for reference only; see ``PublicLoopBank``);
- a leaner loop of the same shape, without the public code's per-element NumPy and
  tensor-scalar work (``LeanLoopBank``): what careful Python loops can reach;
- the bank's bookkeeping alone: the same bank with C=1;
- the memory-bandwidth floor: copying the same bytes (B*A*C floats in and out)
  with two contiguous copies into and out of a bank-sized tensor, at a
  different place each step so that, as for the bank, the bytes are not
  already in the CPU caches.
Fresh multi-MiB tensors (the loops' outputs) are page-faulted in anew whenever glibc hands
them out by mmap, which it does or not depending on what the process freed before; the loops
then take up to 1.7x longer from one run to the next. The benchmark therefore has glibc serve
large blocks from its heap (``mallopt``), which takes page faults out of every timing and
favours the loops; ``--default-malloc`` leaves glibc alone.
Every pass over a buffer lasts about K / (B p) steps and the passes of all buffers end
together, so each timing covers several whole passes (``--steps``); the rounds are
interleaved and the median round is printed.

Part 2, the SynthPA default profile (resnet10t attribute head, 64x32 images,
batch 64, all CPU threads): balanced stage-2 steps timed section by section,
once recomputing the frozen features from images every step and once reading
them from a cache of pooled features, plus the one-off extraction of a view.

    .venv/bin/python benchmarks/frdl_bank.py [--dim 2048] [--threads 1] [--rounds 3] [--default-malloc] [--no-stage2]
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import time

import numpy as np
import torch

from parlab.methods.frdl import FeatureBank


class PublicLoopBank:
    """The public FRDL code's bank, operation for operation: Python lists of (1, C) row views,
    counters in NumPy arrays indexed by the label tensor's elements, a Beta(1, 1) draw per slot,
    rows copied one by one into per-attribute (B, C) tensors, index arrays reshuffled with
    ``random.shuffle``. It stores views of the pushed batch, not copies (a defect: each row keeps
    its whole batch alive), which makes its push cheaper, not dearer. Pop assumes full buffers."""

    def __init__(self, num_attributes: int, size: int, dim: int) -> None:
        self.size, self.dim = size, dim
        self.items = [[[], []] for _ in range(num_attributes)]
        self.filled = np.zeros((num_attributes, 2), dtype=np.int64)
        self.write = np.zeros((num_attributes, 2), dtype=np.int64)
        self.read = np.zeros((num_attributes, 2), dtype=np.int64)
        self.order = [[np.random.permutation(size), np.random.permutation(size)] for _ in range(num_attributes)]
        self.prior = np.full(num_attributes, 0.5)

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.int()
        for i in range(features.shape[0]):
            for j in range(features.shape[1]):
                if self.filled[j, labels[i, j]] < self.size:
                    self.filled[j, labels[i, j]] += 1
                    self.items[j][labels[i, j]].append(torch.reshape(features[i, j, :], [1, -1]))
                else:
                    self.items[j][labels[i, j]][self.write[j, labels[i, j]]] = torch.reshape(features[i, j, :], [1, -1])
                    self.write[j, labels[i, j]] = (self.write[j, labels[i, j]] + 1) % self.size

    def pop(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for j in range(len(self.items)):
            f, y = torch.zeros(batch_size, self.dim), torch.zeros(batch_size)
            for i in range(batch_size):
                lab = 1 if np.random.beta(1, 1, 1) < self.prior[j] else 0
                f[i, :] = self.items[j][lab][self.order[j][lab][self.read[j, lab]]]
                self.read[j, lab] += 1
                if self.read[j, lab] >= self.size:
                    self.read[j, lab] = 0
                    random.shuffle(self.order[j][lab])
                y[i] = lab
            feats.append(f)
            labels.append(y)
        return torch.stack(feats, dim=1), torch.stack(labels, dim=1)


class LeanLoopBank:
    """A leaner per-sample loop: Python ints and lists, copied rows, Python's ``random`` for the
    draws and shuffles, one stack per batch row."""

    def __init__(self, num_attributes: int, size: int) -> None:
        self.size = size
        self.items = [[[] for _ in range(2)] for _ in range(num_attributes)]
        self.write = [[0, 0] for _ in range(num_attributes)]
        self.passes = [[[] for _ in range(2)] for _ in range(num_attributes)]
        self.rng = random.Random(0)

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

    def next_entry(self, a: int, lab: int) -> torch.Tensor:
        queue = self.passes[a][lab]
        if not queue:
            queue.extend(self.rng.sample(range(len(self.items[a][lab])), len(self.items[a][lab])))
        return self.items[a][lab][queue.pop()]

    def pop(self, batch_size: int, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for _ in range(batch_size):
            row = [int(self.rng.random() < p) for _ in self.items]
            feats.append(torch.stack([self.next_entry(a, lab) for a, lab in enumerate(row)]))
            labels.append(row)
        return torch.stack(feats), torch.tensor(labels)


def heap_only_malloc() -> None:
    """Have glibc serve every block from its heap and never give it back (Linux/glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest; the bank and the copy's buffer are mmapped anyway
    libc.mallopt(m_trim_threshold, 1 << 30)


def per_step(fn, steps: int) -> float:
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
    parser.add_argument("--steps", type=int, default=64, help="push+pop steps per timing (and per round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's allocation policy alone")
    parser.add_argument("--no-stage2", action="store_true", help="skip part 2 (SynthPA default profile)")
    parser.add_argument("--stage2-steps", type=int, default=60)
    parser.add_argument("--root", default="data/synthpa", help="SynthPA default (generated when missing)")
    args = parser.parse_args()
    if not args.default_malloc:
        heap_only_malloc()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    b, a, c, k = args.batch, args.attributes, args.dim, args.size
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(b, a, c, generator=g)
    labels = (torch.rand(b, a, generator=g) < 0.3).long()

    bank = FeatureBank(a, c, size=k)
    np.random.seed(0)
    random.seed(0)
    loops = {"public-code loop": PublicLoopBank(a, k, c), "lean loop": LeanLoopBank(a, k)}
    bookkeeping = FeatureBank(a, 1, size=k)  # the same indices with one float per row: no data to speak of
    for _ in range(k // 8):  # fill (both labels present in every buffer)
        bank.push(feats, labels)
        bookkeeping.push(feats[..., :1], labels)
        for loop in loops.values():
            loop.push(feats, labels)

    popped = torch.empty(b, a, c)  # reused across steps, as the stage-2 loop does
    feats_1, popped_1 = feats[..., :1].contiguous(), torch.empty(b, a, 1)
    big = torch.ones(a * 2 * k, c)
    flat, out = feats.reshape(b * a, c), torch.empty(b * a, c)
    places = iter([(i * 7919 * b) % (a * 2 * k - b * a) for i in range(2 * args.steps * (args.rounds + 1))])

    def copy_same_bytes():
        big[next(places):][:b * a].copy_(flat)
        out.copy_(big[next(places):][:b * a])

    timed = {"FeatureBank": lambda: (bank.push(feats, labels), bank.pop(b, generator=g, out=popped)),
             "bookkeeping": lambda: (bookkeeping.push(feats_1, labels), bookkeeping.pop(b, generator=g, out=popped_1)),
             **{name: (lambda loop=loop: (loop.push(feats, labels), loop.pop(b))) for name, loop in loops.items()},
             "copy": copy_same_bytes}
    for fn in timed.values():
        fn()  # warm-up
    times = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, fn in timed.items():
            times[name].append(per_step(fn, args.steps))
    ms = {name: statistics.median(values) for name, values in times.items()}
    fast, floor = ms["FeatureBank"], ms["copy"]
    mib = 2 * feats.numel() * feats.element_size() / 2**20
    print(f"B={b} A={a} C={c} K={k}, {torch.get_num_threads()} thread(s); bank {bank.features.numel() * 4 / 2**30:.2f} "
          f"GiB; median of {args.rounds} rounds of {args.steps} steps")
    rounds = {name: ", ".join(f"{t:.2f}" for t in values) for name, values in times.items()}
    print(f"FeatureBank push+pop:        {fast:9.2f} ms/step  (rounds: {rounds['FeatureBank']})")
    print(f"  of which bookkeeping (C=1): {ms['bookkeeping']:8.2f} ms/step")
    for name in loops:
        print(f"{name + ':':<28} {ms[name]:9.2f} ms/step  ({ms[name] / fast:.1f}x slower; rounds: {rounds[name]})")
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
    from parlab.training.evaluation import eval_loader, forward_split
    from parlab.training.losses import multilabel_bce
    from parlab.training.sampling import train_loader

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
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
