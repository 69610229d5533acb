"""The per-epoch log of a run: one CSV rewritten atomically, optional TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from parlab.errors import ConfigError
from parlab.files import write_atomic

TENSORBOARD_HINT = "pip install parlab[tensorboard]"


def summary_writer_class() -> type:
    """torch's TensorBoard ``SummaryWriter``; a one-line ConfigError when the tensorboard package is missing.

    Asked for before a run touches its folder (:func:`parlab.training.engine.fit`), so that ``tensorboard=True``
    without the package stops at once rather than logging to CSV only.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module raises it when the tensorboard package is not installed
        raise ConfigError(f"tensorboard=True needs the tensorboard package: {TENSORBOARD_HINT}") from None
    return SummaryWriter


class RunLog:
    """Rows of per-epoch numbers, mirrored to ``log.csv`` (and TensorBoard when asked)."""

    def __init__(self, folder: Path, rows: list[dict] | None = None, tensorboard: bool = False) -> None:
        self.path = Path(folder) / "log.csv"
        self.rows = list(rows or [])
        self.writer = summary_writer_class()(str(Path(folder) / "tensorboard")) if tensorboard else None

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
