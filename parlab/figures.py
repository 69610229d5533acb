"""Saving figures and tables: PDF (TrueType fonts) + PNG, CSV, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib
import pandas as pd

PNG_DPI = 300


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, name: str, folder: str | Path = "figures") -> list[Path]:
    """Write ``fig`` as ``folder/name.pdf`` and ``folder/name.png``; return both paths."""
    folder = Path(folder)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    # Type 42 embeds TrueType fonts, which journals accept and editors can read.
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        _atomic(paths[0], lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight"))
        _atomic(paths[1], lambda tmp: fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight"))
    return paths


def save_table(table: pd.DataFrame, name: str, folder: str | Path = "figures") -> Path:
    """Write ``table`` as ``folder/name.csv``; return the path."""
    path = Path(folder) / f"{name}.csv"
    _atomic(path, lambda tmp: table.to_csv(tmp))
    return path
