"""From file paths and a config to a ready Trainer (fresh or resumed)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ddlm.data import DEFAULT_CORPUS, HFSelection, TextSource, TokenizedCorpus, resolve_source, tokenize_source
from ddlm.errors import DDLMError
from ddlm.fileio import write_json_atomic
from ddlm.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from ddlm.training.checkpoint import CHECKPOINT_FILE
from ddlm.training.config import RunConfig
from ddlm.training.trainer import Trainer

RUN_FILE = "run.json"


def data_source(config: RunConfig, data: str | Path, split: str | None = None) -> TextSource:
    """The corpus ``data`` names (a path, a built-in name or hf:NAME), read with the run's data
    settings; ``split`` is the Hugging Face split (default ``data.hf_split``)."""
    settings = config.data
    selection = HFSelection(settings.hf_config, split or settings.hf_split, settings.hf_field)
    return resolve_source(data, settings.separator, selection)


def make_tokenizer(config: RunConfig, documents: Iterable[str]) -> Tokenizer:
    settings = config.tokenizer
    return build_tokenizer(settings.kind, texts=documents, vocab_size=settings.vocab_size, gpt2_dir=settings.gpt2_dir)


def load_corpora(
    config: RunConfig,
    tokenizer: Tokenizer,
    data: str | Path,
    valid: str | Path | None,
    cache_dir: str | Path | None,
    documents: Iterable[str] | None = None,
) -> tuple[TokenizedCorpus, TokenizedCorpus | None]:
    """Train and validation token streams: a separate corpus, or the tail of the training data.

    ``documents``: the training text where the caller already read it (so it is read once).
    """
    train = tokenize_source(data_source(config, data), tokenizer, cache_dir, documents)
    if valid is not None:
        return train, tokenize_source(data_source(config, valid, config.data.hf_valid_split), tokenizer, cache_dir)
    fraction = config.data.valid_fraction
    if fraction <= 0:
        return train, None
    if not 0 < fraction < 1:
        raise DDLMError(f"data.valid_fraction must be in [0, 1), got {fraction}")
    return train.split(fraction)


def prepare_training(
    config: RunConfig,
    out_dir: str | Path,
    data: str | Path | None = None,
    valid: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> Trainer:
    """A Trainer for a new run in ``out_dir``, or the run saved there when ``resume``.

    ``data`` and ``valid`` name corpora as :func:`ddlm.data.resolve_source` reads them; a new
    run without ``data`` trains on the built-in corpus (``DEFAULT_CORPUS``).
    """
    out_dir = Path(out_dir)
    documents = None
    if resume:
        run = read_run_file(out_dir)
        data = data or run["data"]
        valid = valid or run["valid"]
        tokenizer = load_tokenizer(out_dir)
    else:
        if (out_dir / CHECKPOINT_FILE).exists():
            raise DDLMError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out")
        source = data_source(config, DEFAULT_CORPUS if data is None else data)
        data = source.label
        documents = source.read()  # read once, for both the tokenizer and the token stream
        tokenizer = make_tokenizer(config, documents)
        if valid is not None:
            valid = data_source(config, valid, config.data.hf_valid_split).label
    train, valid_corpus = load_corpora(config, tokenizer, data, valid, cache_dir, documents)
    trainer = Trainer(config, tokenizer, train, valid_corpus, out_dir, device=device, show_progress=show_progress)
    if resume:
        trainer.resume()
    elif trainer.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir)
        write_json_atomic(out_dir / RUN_FILE, {
            "data": data,  # a source label: an absolute path, a built-in name or hf:NAME
            "valid": valid,
            "run_config": config.to_dict(),
        })
    return trainer


def read_run_file(out_dir: Path) -> dict:
    path = out_dir / RUN_FILE
    if not path.is_file() or not (out_dir / CHECKPOINT_FILE).is_file():
        raise DDLMError(f"nothing to resume in {out_dir}: no {RUN_FILE} or {CHECKPOINT_FILE}; start it without --resume")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DDLMError(f"{path} is corrupt ({error}); start a new run in another --out") from None


def saved_config(out_dir: str | Path) -> RunConfig:
    """The configuration a run in ``out_dir`` was started with."""
    return RunConfig.from_dict(read_run_file(Path(out_dir))["run_config"])
