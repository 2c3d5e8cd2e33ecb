"""Training logs: a CSV file always, TensorBoard when it is installed.

``log.csv`` is only ever appended to, one whole row per write. The one rewrite, dropping
the rows an interrupted run logged after its checkpoint, writes a new file and renames it
over the old one, so no failure (a full disk, a file-size limit, a kill) loses a row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError
from ddlm.fileio import error_reason, write_text_atomic

# valid_nelbo: the periodic estimate (the first log.eval_batches batches); final_valid_nelbo: the whole validation
# set, once, at the end. train_ar_nll: the autoregressive term of an adaptation run (adapt.ar_loss_weight > 0).
# A log written before the last columns existed lacks them, and its rows are kept when the run resumes.
COLUMNS = ("step", "tokens", "elapsed_s", "lr", "train_nelbo", "valid_nelbo", "tokens_per_s", "train_ar_nll",
           "final_valid_nelbo")
LOG_FILE = "log.csv"


class MetricsLog:
    """Appends rows to ``log.csv``, keeping the rows up to ``resume_step`` (the checkpoint's step).

    Rows logged after the checkpoint by the interrupted run are dropped, since the
    resumed run logs those steps again; so is a row cut short by a failed write.
    """

    def __init__(self, directory: Path, resume_step: int = 0):
        self.path = directory / LOG_FILE
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True) if self.path.is_file() else []
        width = len(next(csv.reader(lines[:1]), COLUMNS))  # the columns the file was written with
        kept = [line.rstrip("\r\n") + "," * (len(COLUMNS) - width) + "\n" for line in lines[1:]
                if row_step(line, width) is not None and row_step(line, width) <= resume_step]
        header = format_row(dict(zip(COLUMNS, COLUMNS)))
        if [header, *kept] != lines:
            try:
                write_text_atomic(self.path, "".join([header, *kept]))
            except OSError as error:
                raise DDLMError(f"could not rewrite {self.path} ({error_reason(error)}); it is unchanged: "
                                "free disk space or raise the file-size limit, then --resume") from None
        self.tensorboard = open_tensorboard(directory / "tensorboard")

    def write(self, **values: Any) -> None:
        """Append one row (the file is opened, written in one call and closed)."""
        try:
            with self.path.open("a", encoding="utf-8", newline="") as handle:
                handle.write(format_row({k: values.get(k, "") for k in COLUMNS}))
        except OSError as error:
            raise DDLMError(f"could not append to {self.path} ({error_reason(error)}); its rows up to the last checkpoint "
                            "are kept: free disk space or raise the file-size limit, then --resume") from None
        if self.tensorboard is not None:
            for key, value in values.items():
                if key != "step" and value not in ("", None):
                    self.tensorboard.add_scalar(key, float(value), int(values["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def format_row(values: dict[str, Any]) -> str:
    text = io.StringIO()
    csv.DictWriter(text, COLUMNS, lineterminator="\n").writerow(values)
    return text.getvalue()


def row_step(line: str, width: int = len(COLUMNS)) -> int | None:
    """The step of a complete row (``width`` columns, ending in a newline), else None."""
    if not line.endswith("\n"):
        return None
    fields = next(csv.reader([line]), [])
    if len(fields) != width:
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


def open_tensorboard(directory: Path):  # -> SummaryWriter | None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))
