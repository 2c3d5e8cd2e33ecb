"""From file paths and a config to a ready Trainer (fresh or resumed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddlm.data import DEFAULT_CORPUS, HFSelection, TextSource, TokenizedCorpus, resolve_source, tokenize_source
from ddlm.errors import DDLMError
from ddlm.fileio import prepare_directory, remove_stale_temporaries, write_json_atomic
from ddlm.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from ddlm.training.checkpoint import CHECKPOINT_FILE
from ddlm.training.config import RunConfig, flatten
from ddlm.training.distributed import Distributed
from ddlm.training.hf_init import HFInitTrainer
from ddlm.training.init import adapted_config, is_hf_source, load_source, resumed_hf_source
from ddlm.training.lock import RunLock
from ddlm.training.trainer import Trainer

RUN_FILE = "run.json"
# What --resume may change: budgets, the learning-rate schedule's shape, precision, logging, and how the
# processes share the work (a sharded run resumed on fewer processes keeps its global batch with
# grad_accum). Anything else (model, data, tokenizer, process, batch, optimizer moments' settings)
# would not continue the same run.
CHANGEABLE_ON_RESUME = ("optim.max_steps", "optim.time_budget", "optim.lr", "optim.min_lr_ratio", "optim.warmup_steps",
                        "optim.warmup_fraction", "optim.grad_clip", "optim.precision", "optim.parallel",
                        "optim.grad_accum", "log.")
CORPUS_NAMES = {"data": "training data", "valid": "validation data"}


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
    init: str | None = None,
    accept_data_change: bool = False,
) -> Trainer:
    """A Trainer for a new run in ``out_dir``, or the run saved there when ``resume``.

    ``init``: a model directory or bundled name whose weights (and tokenizer) the new run starts
    from, under the run's process: e.g. an autoregressive model adapted to masked or block diffusion.

    ``out_dir`` must be writable; the trainer holds its lock (one training per directory)
    until ``train`` returns. On resume only the settings in ``CHANGEABLE_ON_RESUME`` may
    differ from the run's, and each change is recorded in ``run.json``. The corpora must be the
    text the run started with (their fingerprints are in ``run.json``), unless
    ``accept_data_change``: the run then continues on the new text from its first batch. ``data`` and
    ``valid`` name corpora as :func:`ddlm.data.resolve_source` reads them; a new run without ``data``
    trains on the built-in corpus (``DEFAULT_CORPUS``).
    """
    config.validate()
    with locked(out_dir) as lock:
        out_dir = Path(out_dir)
        documents = None
        initial = None  # the model whose weights the run starts from (--init)
        if resume and init is not None:
            raise DDLMError("--init starts a new run; a resumed run continues from its own checkpoint: drop --init")
        if resume:
            run = read_run_file(out_dir)
            changes = resume_changes(run["run_config"], config)
            data = data_source(config, data or run["data"]).label
            valid = valid or run["valid"]
            initial = resumed_hf_source(config)  # a run over a Hugging Face network rebuilds it from its source
            tokenizer = initial.tokenizer if initial is not None else load_tokenizer(out_dir)
        else:
            if (out_dir / CHECKPOINT_FILE).exists():
                raise DDLMError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out")
            source = data_source(config, DEFAULT_CORPUS if data is None else data)
            data = source.label
            documents = source.read()  # read once, for both the tokenizer and the token stream
            if init is not None:
                initial = load_source(init)
                config = adapted_config(config, initial, init)
                tokenizer = initial.tokenizer
            else:
                tokenizer = make_tokenizer(config, documents)
        if valid is not None:
            valid = data_source(config, valid, config.data.hf_valid_split).label
        train, valid_corpus = load_corpora(config, tokenizer, data, valid, cache_dir, documents)
        corpora = {"data": data,  # source labels: an absolute path, a built-in name or hf:NAME
                   "valid": valid,
                   "fingerprints": {"data": train.fingerprint,
                                    "valid": valid_corpus.fingerprint if valid is not None else None}}
        if resume:
            changes.update(corpus_changes(run, corpora, accept_data_change))
        if initial is not None and is_hf_source(initial):
            trainer = HFInitTrainer(config, initial, train, valid_corpus, out_dir, device=device, show_progress=show_progress)
        else:
            trainer = Trainer(config, tokenizer, train, valid_corpus, out_dir, device=device, show_progress=show_progress)
            if initial is not None:
                trainer.start_from(initial.model)
        if resume:
            trainer.resume(new_data="data" in changes)
            recorded = {key: run.get(key) for key in corpora}
            if trainer.dist.is_main and (changes or recorded != corpora):
                record_changes(out_dir, run, config, changes, corpora, trainer.state.step)
        elif trainer.dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            tokenizer.save(out_dir)
            write_json_atomic(out_dir / RUN_FILE, {**corpora, "run_config": config.to_dict()})
        trainer.run_lock = lock
    return trainer


@contextmanager
def locked(out_dir: str | Path) -> Iterator[RunLock]:
    """The run directory ``out_dir``, made and locked (rank 0) for the block; the lock is released if the
    block fails, else kept by the trainer the block sets up (``trainer.run_lock``) until it finishes."""
    lock = RunLock(out_dir)
    if Distributed.from_environment().is_main:
        prepare_directory(out_dir, "the run directory")
        lock.acquire()
        remove_stale_temporaries(out_dir)
    try:
        yield lock
    except BaseException:
        lock.release()
        raise


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


def resume_changes(saved: dict[str, Any], config: RunConfig) -> dict[str, list[Any]]:
    """The settings ``config`` changes from the run's saved ones, each as [before, after].

    A one-line error names every change that ``CHANGEABLE_ON_RESUME`` does not allow.
    """
    before = flatten(RunConfig.from_dict(saved).to_dict())  # keys added since the run started take their defaults
    changes = {key: [before[key], value] for key, value in flatten(config.to_dict()).items() if before[key] != value}
    refused = [f"{key} ({old!r} -> {new!r})" for key, (old, new) in changes.items()
               if not key.startswith(CHANGEABLE_ON_RESUME)]
    if refused:
        raise DDLMError(f"--resume cannot change {', '.join(refused)}: the checkpoint belongs to the run's own settings; "
                        "drop the override, or start a new run with another --out")
    return changes


def corpus_changes(run: dict[str, Any], corpora: dict[str, Any], accept: bool) -> dict[str, list[Any]]:
    """The corpora whose text differs from the run's recorded one, each as [fingerprint before, after].

    A one-line refusal unless ``accept``. A run that recorded no fingerprints (an older ddlm) has
    nothing to compare.
    """
    before, after = run.get("fingerprints") or {}, corpora["fingerprints"]
    changed = {name: [before[name], after[name]] for name in CORPUS_NAMES if before.get(name, after[name]) != after[name]}
    if changed and not accept:
        name, (old, new) = next(iter(changed.items()))
        label, recorded = corpora[name], run.get(name)
        source = (f"{label} is not the corpus this run used ({recorded or 'none'})" if label != recorded
                  else f"{label} changed since this run last used it")
        raise DDLMError(f"the {CORPUS_NAMES[name]} {source}: fingerprint {(new or 'none')[:12]}, was "
                        f"{(old or 'none')[:12]}; resume with the run's own text, or add --accept-data-change "
                        "to continue this run on the new text from its first batch")
    return changed


def record_changes(out_dir: Path, run: dict[str, Any], config: RunConfig, changes: dict[str, list[Any]],
                   corpora: dict[str, Any], step: int) -> None:
    """Make the changed settings and corpora the run's own (a later plain --resume keeps them) and log the
    changes in its history."""
    history = run.get("history", [])
    if changes:
        history = [*history, {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "changes": changes}]
    write_json_atomic(out_dir / RUN_FILE, {**run, **corpora, "run_config": config.to_dict(), "history": history})
