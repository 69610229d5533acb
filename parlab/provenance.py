"""Where a measured number came from: the commit, the machine and the date, for the pages the code writes.

:mod:`parlab.results_page` (``docs/results.md``) and :mod:`parlab.benchmark_page` (``docs/benchmarks.md``)
put these rows above every table they write, so that a number on either page says which code, which
processor and which day produced it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The processor's name as the system reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit(repo: Path) -> str:
    """The repository's commit (with "+ changes" when its tracked files differ), or "unknown"."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + changes" if dirty else head


def now() -> str:
    """The current UTC time to the minute, as the pages write it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def provenance_rows(repo: Path, device: str = "cpu") -> list[tuple[str, str]]:
    """(key, value) rows: commit, date, machine (CPU model and cores; the GPU's name when ``device`` is one),
    software (Python, torch)."""
    import torch

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        machine += f"; {torch.cuda.get_device_name(torch.device(device))}"
    return [("commit", commit(repo)), ("date", now()), ("machine", machine),
            ("software", f"Python {platform.python_version()}, torch {torch.__version__}")]
