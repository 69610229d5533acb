"""SynthPA generation speed: images/s and wall time for a size, with 1 and all workers.

    .venv/bin/python benchmarks/synthpa_generation.py [--size default] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from parlab.data.synthpa import SIZES, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = SIZES.get(args.size) or int(args.size)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        for workers in sorted({1, cores}):
            root = Path(tmp) / f"w{workers}"
            start = time.perf_counter()
            generate(root, n, seed=args.seed, workers=workers)
            wall = time.perf_counter() - start
            mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
            print(f"{n} images, {workers} worker(s): {wall:6.1f} s  {n / wall:7.1f} images/s  {mb:.0f} MiB")
            shutil.rmtree(root)
    print(f"cores: {cores}")


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
