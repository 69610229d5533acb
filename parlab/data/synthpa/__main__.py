"""``python -m parlab.data.synthpa ROOT [--size smoke|default|N] [--seed S]``."""

from __future__ import annotations

import argparse
import time

from parlab.data.synthpa.writer import SIZES, generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parlab.data.synthpa", description="Generate SynthPA.")
    parser.add_argument("root", help="output folder, e.g. data/synthpa")
    parser.add_argument("--size", default="default", help=f"{' | '.join(SIZES)} | a number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    size = int(args.size) if args.size.isdigit() else args.size
    start = time.perf_counter()
    root = generate(args.root, size, args.seed, (args.height, args.width), args.workers, args.overwrite)
    print(f"SynthPA ready in {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
