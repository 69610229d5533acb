"""The notebooks' outputs on disk: figures as PDF (TrueType fonts) + PNG, tables as CSV, written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

from parlab.files import write_atomic

PNG_DPI = 300


def save_figure(fig, name: str, folder: str | Path = "figures") -> list[Path]:
    """Write ``fig`` as ``folder/name.pdf`` and ``folder/name.png``; return both paths."""
    folder = Path(folder)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    # Type 42 embeds TrueType fonts, which journals accept and editors can read.
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        write_atomic(paths[0], lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight"))
        write_atomic(paths[1], lambda tmp: fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight"))
    return paths


def save_table(table: pd.DataFrame, name: str, folder: str | Path = "figures") -> Path:
    """Write ``table`` as ``folder/name.csv``; return the path."""
    path = Path(folder) / f"{name}.csv"
    write_atomic(path, lambda tmp: table.to_csv(tmp))
    return path
