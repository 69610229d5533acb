"""The per-epoch log of a run: one CSV rewritten atomically, optional TensorBoard."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from parlab.files import write_atomic


class RunLog:
    """Rows of per-epoch numbers, mirrored to ``log.csv`` (and TensorBoard when asked)."""

    def __init__(self, folder: Path, rows: list[dict] | None = None, tensorboard: bool = False) -> None:
        self.path = Path(folder) / "log.csv"
        self.rows = list(rows or [])
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                warnings.warn("tensorboard=True but the tensorboard package is not installed; logging to CSV only")

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self.write()
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def write(self) -> None:
        frame = self.frame()
        write_atomic(self.path, lambda tmp: frame.to_csv(tmp, index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
