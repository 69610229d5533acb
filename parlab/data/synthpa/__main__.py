"""``python -m parlab.data.synthpa ROOT [--size smoke|default|N] [--seed S]``.

ROOT must be missing, empty, or a SynthPA parlab wrote; anything else is one ``error: ...`` line and exit
status 1, with nothing deleted.
"""

from __future__ import annotations

import argparse
import sys
import time

from parlab.data.synthpa.writer import SIZES, generate
from parlab.errors import ParlabError, error_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parlab.data.synthpa", description="Generate SynthPA.")
    parser.add_argument("root", help="output folder, e.g. data/synthpa: missing, empty, or a SynthPA parlab wrote")
    parser.add_argument("--size", default="default", help=f"{' | '.join(SIZES)} | a number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate even when ROOT holds a SynthPA of these settings (never another folder)")
    args = parser.parse_args(argv)
    size = int(args.size) if args.size.isdigit() else args.size
    start = time.perf_counter()
    try:
        root = generate(args.root, size, args.seed, (args.height, args.width), args.workers, args.overwrite)
    except (ParlabError, OSError) as exc:  # OSError: a folder or file the system refuses (permissions, a full disk)
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"SynthPA ready in {root} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
