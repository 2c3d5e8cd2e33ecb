"""Hugging Face ``datasets`` as a text source: a data set streamed by name, or a folder saved with ``save_to_disk``.

``datasets`` is an optional dependency (``pip install "ddlm[hf]"``), imported only here and only when
such a source is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ddlm.data.files import iter_documents
from ddlm.errors import DDLMError

SAVED_DATASET_FILES = ("state.json", "dataset_info.json")  # written by Dataset.save_to_disk
SAVED_DATASET_DICT_FILE = "dataset_dict.json"  # written by DatasetDict.save_to_disk
ROWS_PER_READ = 1024
PARQUET_EXPORT = "refs/convert/parquet"  # the Hub's Parquet copy of a data set, one folder per configuration


@dataclass(frozen=True)
class HFSelection:
    """Which part of a data set to read: its configuration, split and text column."""

    config: str | None = None
    split: str = "train"
    field: str = "text"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not path.is_dir():
        return False
    return all((path / name).is_file() for name in SAVED_DATASET_FILES) or (path / SAVED_DATASET_DICT_FILE).is_file()


LOCAL_COPY_HINT = "check the name and your network, or pass --data a local folder saved with Dataset.save_to_disk"


class HubDocuments:
    """The documents of a data set's split, streamed (``streaming=True``): nothing is held in
    memory, and each pass streams the rows again. Hub names need a network or a cached copy.
    ``hint``: what the error says to do when the data set cannot be loaded; ``parquet_export``: read the Hub's
    Parquet copy of the data set (PARQUET_EXPORT: ``CONFIG/SPLIT/0000.parquet``, for a data set that is a loading
    script), where ``datasets`` knows no configuration names, so the configuration is read as its folder."""

    def __init__(self, name: str, selection: HFSelection, separator: str | None, hint: str = LOCAL_COPY_HINT,
                 parquet_export: bool = False) -> None:
        self.name, self.selection, self.separator = name, selection, separator
        self.hint, self.parquet_export = hint, parquet_export

    def load_arguments(self) -> tuple[tuple[str | None, ...], dict[str, Any]]:
        """The positional and keyword arguments of the ``datasets.load_dataset`` call that streams the split."""
        config, split = self.selection.config, self.selection.split
        keywords: dict[str, Any] = {"split": split, "streaming": True}
        if self.parquet_export:
            return (self.name,), keywords | {"revision": PARQUET_EXPORT} | ({"data_dir": config} if config else {})
        return (self.name, config), keywords

    def __iter__(self) -> Iterator[str]:
        datasets = import_datasets()
        where = f"Hugging Face data set {self.name!r}"
        if hub_unreachable(self.name):
            raise DDLMError(f"cannot load {where} (the Hugging Face Hub does not answer: no network?); {self.hint}")
        arguments, keywords = self.load_arguments()
        try:
            rows = datasets.load_dataset(*arguments, **keywords)
            yield from iter_documents(texts_of(rows, self.selection.field, where), self.separator)
        except ValueError as error:  # an unknown configuration or split
            raise DDLMError(
                f"{where}: {first_line(error)}; set data.hf_config / data.hf_split to one it has"
            ) from None
        except (OSError, datasets.exceptions.DatasetsError) as error:
            raise DDLMError(f"cannot load {where} ({first_line(error)}); {self.hint}") from None
        except RuntimeError as error:  # a loading script, which datasets 4 and later no longer runs
            if "scripts are no longer supported" not in str(error):
                raise
            raise DDLMError(f"cannot load {where} ({first_line(error)}); save a copy with an older datasets, "
                            f"or use a Parquet copy of it (on the Hub: its {PARQUET_EXPORT} branch)") from None


class SavedDocuments:
    """The documents of a data set saved with ``save_to_disk``, read lazily from its memory-mapped files."""

    def __init__(self, dataset: Any, field: str, where: str, separator: str | None) -> None:
        self.dataset, self.field, self.where, self.separator = dataset, field, where, separator

    def __iter__(self) -> Iterator[str]:
        batches = self.dataset.iter(batch_size=ROWS_PER_READ)
        rows = ({self.field: text} for batch in batches for text in batch[self.field])
        return iter_documents(texts_of(rows, self.field, self.where), self.separator)


def saved_documents(path: Path, selection: HFSelection, separator: str | None) -> SavedDocuments:
    """The documents of the ``save_to_disk`` folder ``path`` (its ``selection.split`` if it holds several)."""
    datasets = import_datasets()
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise DDLMError(f"cannot read the saved data set {path} ({first_line(error)}); save it again") from None
    where = f"data set {path}"
    if isinstance(dataset, datasets.DatasetDict):
        if selection.split not in dataset:
            raise DDLMError(f"{where} has splits {sorted(dataset)}, not {selection.split!r}; set data.hf_split to one of them")
        dataset, where = dataset[selection.split], f"split {selection.split!r} of {where}"
    if selection.field not in dataset.column_names:
        raise DDLMError(f"{where} has no column {selection.field!r} (it has {dataset.column_names}); set data.hf_field")
    return SavedDocuments(dataset.select_columns([selection.field]), selection.field, where, separator)


def texts_of(rows: Iterable[dict[str, Any]], field: str, where: str) -> Iterator[str]:
    """The string ``field`` of each row; a clear error at the first row without one."""
    for number, row in enumerate(rows):
        text = row.get(field)
        if not isinstance(text, str):
            found = f"columns {sorted(row)}" if field not in row else f"a {type(text).__name__}"
            raise DDLMError(f"row {number} of {where} has no text in column {field!r} ({found}); set data.hf_field")
        yield text


def hub_unreachable(name: str) -> bool:
    """Whether the Hugging Face Hub gives no answer at all about the data set ``name`` (whatever the answer would be):
    without network ``datasets`` retries for half a minute before it fails. False without asking in offline mode
    (``HF_HUB_OFFLINE=1``, where ``datasets`` fails at once) and for a local folder's name."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE or Path(name).exists():
        return False
    try:
        HfApi().dataset_info(name, timeout=10)
    except HfHubHTTPError:  # it answered (no such data set, gated, ...): datasets says what
        return False
    except Exception:  # noqa: BLE001 - no answer; the transport's errors differ between huggingface_hub versions
        return True
    return False


def import_datasets() -> ModuleType:
    """The ``datasets`` module, or a one-line error saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise DDLMError(
            'reading Hugging Face data sets needs the datasets package: pip install "ddlm[hf]"'
        ) from None
    return datasets


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors span several)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
