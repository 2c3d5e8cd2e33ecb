"""Training logs: a CSV file always, TensorBoard when it is installed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = ("step", "tokens", "elapsed_s", "lr", "train_nelbo", "valid_nelbo", "tokens_per_s")


class MetricsLog:
    """Appends rows to ``log.csv``, keeping the rows up to ``resume_step`` (the checkpoint's step).

    Rows logged after the checkpoint by the interrupted run are dropped, since the
    resumed run logs those steps again.
    """

    def __init__(self, directory: Path, resume_step: int = 0):
        self.path = directory / "log.csv"
        kept = [row for row in self.read_rows() if int(row["step"]) <= resume_step] if resume_step else []
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        self.tensorboard = open_tensorboard(directory / "tensorboard")

    def read_rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def write(self, **values: Any) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, COLUMNS).writerow({k: values.get(k, "") for k in COLUMNS})
        if self.tensorboard is not None:
            for key, value in values.items():
                if key != "step" and value not in ("", None):
                    self.tensorboard.add_scalar(key, float(value), int(values["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def open_tensorboard(directory: Path):  # -> SummaryWriter | None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))
