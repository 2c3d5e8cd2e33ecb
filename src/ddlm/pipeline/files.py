"""A model directory on disk: where it is (a folder, a bundled name, a Hub id), and writing and reading it.

A model directory holds ``config.json``, ``model.safetensors`` (EMA weights by default), the tokenizer
files, ``training_summary.json`` and, where the model has sampler defaults of its own,
``sampler_config.json`` (the counterpart of a ``transformers`` model's ``generation_config.json``):
the layout the Hugging Face Hub hosts. Loading never unpickles.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddlm import __version__
from ddlm.bundled import DESCRIPTIONS, bundled_model_path
from ddlm.device import resolve_device
from ddlm.errors import DDLMError
from ddlm.families import build_process, get_family
from ddlm.fileio import atomic_path, write_json_atomic
from ddlm.hf import HFDiffusionModel, is_transformers_config, load_transformers_model
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Process, Vocabulary
from ddlm.samplers import SamplerOptions
from ddlm.tokenizers import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # refused: loading a pickle can run code
SUMMARY_FILE = "training_summary.json"
SAMPLER_FILE = "sampler_config.json"

LoadedModel = tuple[Transformer | HFDiffusionModel, Tokenizer, Process, dict[str, Any]]


def write_model_directory(directory: Path, model: Transformer | HFDiffusionModel, tokenizer: Tokenizer,
                          process: Process, summary: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> None:
    """Write ``directory``; ``weights`` (e.g. the EMA) replace the model's own. A Hugging Face model
    (:mod:`ddlm.hf`) is written in its own ``transformers`` format."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, HFDiffusionModel):
        model.save_pretrained(directory)
    else:
        state = weights if weights is not None else model.state_dict()
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        write_json_atomic(directory / CONFIG_FILE, {
            "library": "ddlm",
            "ddlm_version": __version__,
            "model": model.config.to_dict(),
            "process": process.to_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(),
        })
    tokenizer.save(directory)
    if summary:
        write_json_atomic(directory / SUMMARY_FILE, summary)


def read_model_directory(directory: Path, device: str, precision: str, trust_remote_code: bool) -> LoadedModel:
    """The model (on ``device``: auto, cpu, cuda, ...), tokenizer, process and training summary stored in ``directory``: a ddlm
    model directory, or a ``transformers`` one (a config.json ddlm did not write) through :mod:`ddlm.hf`, its summary
    describing the network, with ``training_summary.json`` where ddlm trained it (adapted or fine-tuned)."""
    config = read_json(directory / CONFIG_FILE, what="model config")
    if is_transformers_config(config):
        model, tokenizer, process, summary = load_transformers_model(directory, config, trust_remote_code,
                                                                     resolve_device(device), precision)
        return model, tokenizer, process, {**summary, **read_summary(directory)}
    tokenizer = load_tokenizer(directory)
    try:
        model_config = ModelConfig.from_dict(config["model"])
        process = build_process(config["process"], Vocabulary.of(tokenizer))
    except (KeyError, TypeError) as error:
        raise DDLMError(f"{directory / CONFIG_FILE} is incomplete ({error}); re-export the model") from None
    except DDLMError as error:
        raise DDLMError(f"{directory / CONFIG_FILE}: {error}") from None
    fingerprint = config.get("tokenizer_fingerprint")
    if fingerprint is not None and fingerprint != tokenizer.fingerprint():
        raise DDLMError(
            f"the tokenizer files in {directory} are not the ones this model was trained with "
            "(their vocabulary fingerprint differs); restore the model's own tokenizer files"
        )
    if model_config.vocab_size != tokenizer.vocab_size:
        raise DDLMError(
            f"model vocabulary ({model_config.vocab_size}) and tokenizer ({tokenizer.vocab_size}) disagree "
            f"in {directory}; the tokenizer files belong to another model"
        )
    model = Transformer(model_config)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise DDLMError(f"no {WEIGHTS_FILE} in {directory}; is it a finished ddlm model directory?")
    try:
        weights = load_file(str(weights_path))
        model.load_state_dict(weights)
    except (SafetensorError, RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0]
        raise DDLMError(f"{weights_path} is corrupt or does not match config.json ({first})") from None
    broken = sorted(name for name, tensor in weights.items() if not torch.isfinite(tensor).all())
    if broken:
        raise DDLMError(f"{weights_path} holds NaN or infinite weights ({', '.join(broken[:3])}"
                        f"{', ...' if len(broken) > 3 else ''}); re-export the model from a healthy checkpoint")
    return model.to(resolve_device(device)), tokenizer, process, read_summary(directory)


def write_sampler_defaults(directory: Path, defaults: dict[str, Any]) -> None:
    """Write the model's sampler defaults to ``sampler_config.json`` (none: remove a stale file)."""
    path = directory / SAMPLER_FILE
    if defaults:
        write_json_atomic(path, defaults)
    else:
        path.unlink(missing_ok=True)


def read_sampler_defaults(directory: Path, process_name: str) -> dict[str, Any]:
    """The sampler defaults in ``directory``'s ``sampler_config.json`` (none where there is no such file),
    checked as options of the model's sampler."""
    path = directory / SAMPLER_FILE
    if not path.is_file():
        return {}
    defaults = read_json(path, what="sampler config")
    try:
        check_sampler_defaults(defaults, process_name)
    except DDLMError as error:
        raise DDLMError(f"{path}: {error}; fix or delete the file") from None
    return defaults


def check_sampler_defaults(defaults: dict[str, Any], process_name: str) -> None:
    """Raise a DDLMError unless ``defaults`` are valid options of the ``process_name`` sampler, without a seed
    (a model-wide seed would make every sample the same)."""
    if "seed" in defaults:
        raise DDLMError("a model's sampler defaults cannot fix the seed (every sample would be the same)",
                        field="seed")
    get_family(process_name).check(SamplerOptions.build(**defaults))


def read_summary(directory: Path) -> dict[str, Any]:
    """The ``training_summary.json`` of ``directory``, or an empty one where there is none."""
    path = directory / SUMMARY_FILE
    return read_json(path, what="training summary") if path.is_file() else {}


def resolve_model_directory(path: str | Path) -> Path:
    """A local model directory, else a bundled model's name, else a Hub repository id (fetched once)."""
    directory = Path(path)
    if directory.is_dir():
        return directory
    text = str(path)
    bundled = bundled_model_path(text)
    if bundled is not None:
        if not (bundled / WEIGHTS_FILE).is_file():
            raise DDLMError(f"the bundled model {text!r} is not installed (no weights in {bundled}); "
                            "reinstall ddlm or run experiments/train_bundled.py")
        return bundled
    local = directory.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")) or directory.parent.is_dir()
    if local:  # not a Hub id: no "owner/name" form, or its first part is a folder here (runs/NAME)
        close = difflib.get_close_matches(directory.name, DESCRIPTIONS, n=1) if directory.parent == Path(".") else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DDLMError(f"model directory {path} does not exist; {hint}pass the --out folder of a `ddlm train` run "
                        f"or a bundled model ({', '.join(DESCRIPTIONS)})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=text))
    except LocalEntryNotFoundError:
        raise DDLMError(f"model directory {path} does not exist, and the Hub repository {text} is not cached "
                        "and could not be downloaded (no network?)") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise DDLMError(f"model directory {path} does not exist, and the Hub has no model {text} "
                        f"({type(error).__name__})") from None


def refuse_pickled_weights(directory: Path) -> None:
    """A one-line refusal for a model directory whose weights exist only as pickles: ddlm never unpickles."""
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(path.name for pattern in PICKLED_WEIGHTS for path in directory.glob(pattern))
    if pickled:
        raise DDLMError(
            f"{directory} holds its weights only as pickles ({', '.join(pickled[:3])}), which ddlm refuses to load "
            "(unpickling can run any code); if you trust the file, convert it once in your own code, e.g. "
            "transformers' from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True), or "
            "safetensors.torch.save_file(torch.load(FILE, weights_only=True), DIR + '/model.safetensors')"
        )


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        directory = path.parent
        if (directory / "checkpoint.safetensors").is_file():  # a training run (ddlm.training) not yet exported
            raise DDLMError(f"{directory} holds a training run that was interrupted before its first export; "
                            f"continue it with `ddlm train --out {directory} --resume`")
        if (directory / "run.json").is_file():
            raise DDLMError(f"{directory} holds a training run that was interrupted before its first checkpoint; "
                            f"start it again with `ddlm train --out {directory}` and its data and settings")
        raise DDLMError(f"no {path.name} in {path.parent}; is it a ddlm model directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise DDLMError(f"{what} {path} is not valid JSON ({error}); re-export the model") from None
    if not isinstance(data, dict):
        raise DDLMError(f"{what} {path} must hold a JSON object; re-export the model")
    return data
