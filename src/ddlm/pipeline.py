"""DiffusionPipeline: model + tokenizer + process + sampler, saved as one directory.

A model directory holds ``config.json``, ``model.safetensors`` (EMA weights by
default), the tokenizer files and ``training_summary.json``: the layout the Hugging
Face Hub hosts. Loading never unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddlm import __version__
from ddlm.bundled import DESCRIPTIONS, bundled_model_path
from ddlm.data.sft import ChatFormat
from ddlm.device import autocast, resolve_device, resolve_precision
from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path, write_json_atomic
from ddlm.hf import HFDiffusionModel, is_transformers_config, load_transformers_model
from ddlm.lora import is_adapter_directory, load_adapted
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Process, Vocabulary, build_process
from ddlm.samplers import Canvas, SampleOutput, SamplerOptions, SamplerStep, changes_only, last_steps, parse_template, sampler_steps
from ddlm.samplers.options import check_integer
from ddlm.samplers.step import MASK_GLYPH
from ddlm.tokenizers import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # refused: loading a pickle can run code
SUMMARY_FILE = "training_summary.json"
DEFAULT_BATCH_SIZE = 64  # samples drawn at once


class DiffusionPipeline:
    """Generate text with a trained model: ``DiffusionPipeline.from_pretrained(dir).generate()``."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        process: Process,
        summary: dict[str, Any] | None = None,
        precision: str = "auto",
        compile_model: bool = False,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.process = process
        self.summary = summary or {}
        self.precision = resolve_precision(precision, self.device)
        # what the samplers call: the model itself, or through torch.compile (compiled on the first call)
        self.sampling_model = torch.compile(self.model) if compile_model else self.model

    def __repr__(self) -> str:
        config = self.model.config
        schedule = getattr(self.process, "schedule", None)
        return (
            f"DiffusionPipeline(process={self.process.name!r}"
            + (f", schedule={type(schedule).__name__}" if schedule is not None else "")
            + f", parameters={self.model.num_parameters():,}, layers={config.n_layers}, d_model={config.d_model}"
            f", context_length={config.context_length}, tokenizer={self.tokenizer!r}"
            f", device={self.device.type!r}, precision={self.precision!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    # ----- saving and loading -----

    def save_pretrained(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model directory; ``weights`` (e.g. the EMA) replace the model's own.

        A Hugging Face model (:mod:`ddlm.hf`) is written in its own ``transformers`` format.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.model, HFDiffusionModel):
            self.model.save_pretrained(directory)
            self.tokenizer.save(directory)
            return
        state = weights if weights is not None else self.model.state_dict()
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        write_json_atomic(directory / CONFIG_FILE, {
            "library": "ddlm",
            "ddlm_version": __version__,
            "model": self.model.config.to_dict(),
            "process": self.process.to_dict(),
            "tokenizer_fingerprint": self.tokenizer.fingerprint(),
        })
        self.tokenizer.save(directory)
        if self.summary:
            write_json_atomic(directory / SUMMARY_FILE, self.summary)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        trust_remote_code: bool = False, compile_model: bool = False) -> DiffusionPipeline:
        """Load a model directory (or a Hugging Face Hub repository id, downloaded once).

        ``precision``: auto (bf16 where the hardware multiplies bf16 natively), fp32 or bf16.
        ``compile_model``: sample through ``torch.compile`` (a minute to compile, then faster).

        A ``transformers`` model (BERT family, LLaDA, Dream: a config.json ddlm did not write) is
        loaded through :mod:`ddlm.hf`; model code shipped with it runs only with ``trust_remote_code``.
        """
        directory = resolve_model_directory(path)
        refuse_pickled_weights(directory)
        if is_adapter_directory(directory):  # LoRA adapters alone (ddlm finetune --lora-save adapter)
            return load_adapted(directory, device=device, precision=precision, trust_remote_code=trust_remote_code,
                                compile_model=compile_model)
        config = read_json(directory / CONFIG_FILE, what="model config")
        if is_transformers_config(config):
            model, tokenizer, process, summary = load_transformers_model(
                directory, config, trust_remote_code, resolve_device(device), precision)
            return cls(model, tokenizer, process, summary, precision, compile_model)
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
        summary_path = directory / SUMMARY_FILE
        summary = read_json(summary_path, what="training summary") if summary_path.is_file() else {}
        return cls(model.to(resolve_device(device)), tokenizer, process, summary, precision, compile_model)

    # ----- generation -----

    def canvas_rows(
        self,
        prompt: str | list[str] | None,
        num_samples: int,
        length: int | None,
        infill: str | None = None,
        suffix: str | None = None,
        chat: bool = False,
    ) -> list[list[int | None]]:
        """One row per sample (token ids, None to generate): ``num_samples`` of each prompt, or of the infill template.

        Samples of one prompt share one row object, so a million samples cost a million references.
        With ``chat`` each prompt is a user turn in the tokenizer's chat template (Hugging Face chat models) or
        in the chat format a model was fine-tuned on (``ddlm finetune``).
        """
        check_integer("num_samples", num_samples, minimum=1)
        if infill is not None:
            if prompt or suffix or length is not None or chat:
                raise DDLMError("an infill template sets the whole canvas; drop the prompt, suffix, length and chat")
            return [parse_template(infill, self.tokenizer.encode, self.context_length)] * num_samples
        prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        if chat:
            chat_ids = getattr(self.tokenizer, "chat_ids", None)
            if "chat" in self.summary:  # a ddlm model fine-tuned on chat turns (ddlm finetune): the format it learnt
                chat_ids = partial(ChatFormat.from_dict(self.summary["chat"]).prompt_ids, self.tokenizer)
            if chat_ids is None:
                raise DDLMError("chat needs a chat model (a Hugging Face chat model's template, or a model fine-tuned "
                                "on chat turns by `ddlm finetune`); drop --chat (chat=True) for this model")
            encoded = [chat_ids(text or "") for text in prompts]
        else:
            encoded = [self.tokenizer.encode(text) if text else [] for text in prompts]
        suffix_ids = self.tokenizer.encode(suffix) if suffix else []
        length = self.check_length(max(len(ids) for ids in encoded), length, len(suffix_ids))
        return [row for ids in encoded for row in [[*ids, *[None] * length, *suffix_ids]] * num_samples]

    def build_canvas(
        self,
        prompt: str | list[str] | None,
        num_samples: int,
        length: int | None,
        infill: str | None = None,
        suffix: str | None = None,
    ) -> Canvas:
        """The canvas for ``num_samples`` samples of each prompt (or of the infill template), as one batch."""
        rows = self.canvas_rows(prompt, num_samples, length, infill, suffix)
        return Canvas.from_rows(rows, self.tokenizer.mask_id, self.tokenizer.pad_id, self.device)

    def stream(
        self,
        prompt: str | list[str] | None = None,
        options: SamplerOptions | None = None,
        *,
        num_samples: int = 1,
        length: int | None = None,
        infill: str | None = None,
        suffix: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        stop_at_eos: bool = True,
        texts: bool = True,
        chat: bool = False,
        **option_keywords: Any,
    ) -> Iterator[SamplerStep]:
        """One :class:`SamplerStep` per change of the canvas, with each sample's text so far (unless not ``texts``).

        ``prompt``: text the samples start with, or a list of them (``num_samples`` samples of
        each). ``infill``: a template such as ``"The [MASK*5] sat on the [MASK] mat"`` instead
        of a prompt. ``suffix``: text fixed after the generated positions. ``chat``: each prompt
        is a user turn in the tokenizer's chat template (Hugging Face chat models). ``options``: a
        :class:`SamplerOptions`; keywords (``steps=64, policy="confidence"``, any field of it)
        build one or replace its fields. Samples are drawn ``batch_size`` at a time, batch
        after batch (a step's ``first_sample`` says which); sample i is the same for every
        batch size. Without a seed one is drawn and reported in every step's ``seed``.
        Bad input raises here, before the first step.
        """
        options, rows = self.prepare(prompt, options, num_samples, length, infill, suffix, batch_size, option_keywords,
                                     chat=chat)

        steps = changes_only(self.run_batches(options, rows, batch_size))

        def with_texts() -> Iterator[SamplerStep]:
            for step in steps:
                if texts:
                    step.texts = [self.decode(step, row, stop_at_eos) for row in range(step.tokens.shape[0])]
                    step.canvas_texts = [self.decode(step, row, stop_at_eos, mask=MASK_GLYPH)
                                         for row in range(step.tokens.shape[0])]
                yield step

        return with_texts()

    def sample_batches(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
                       **arguments: Any) -> Iterator[SampleOutput]:
        """Each batch's :class:`SampleOutput` as soon as it is finished; arguments as in :meth:`stream`."""
        return (SampleOutput.of_step(step) for step in last_steps(self.stream(prompt, options, texts=False, **arguments)))

    def sample(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
               **arguments: Any) -> SampleOutput:
        """Token-level sampling of every sample (the batches joined); arguments as in :meth:`stream`.

        The output's ``canvas`` says which positions were generated, its ``seed`` repeats the run.
        """
        return SampleOutput.concatenate(list(self.sample_batches(prompt, options, **arguments)), self.tokenizer.pad_id)

    def generate(self, prompt: str | list[str] | None = None, options: SamplerOptions | None = None,
                 stop_at_eos: bool = True, **arguments: Any) -> list[str]:
        """Texts (prompt included) of the samples; arguments as in :meth:`stream`.

        With ``stop_at_eos`` a generated end-of-text token ends its stretch of generated
        text: it and the generated tokens after it (up to the next given token) are dropped.
        """
        output = self.sample(prompt, options, **arguments)
        return [self.decode(output, row, stop_at_eos) for row in range(output.tokens.shape[0])]

    def prepare(
        self, prompt: str | list[str] | None, options: SamplerOptions | None, num_samples: int, length: int | None,
        infill: str | None, suffix: str | None, batch_size: int, option_keywords: dict[str, Any], chat: bool = False,
    ) -> tuple[SamplerOptions, list[list[int | None]]]:
        """Validated options (with a seed) and canvas rows of a run."""
        options = SamplerOptions.build(options, **option_keywords).with_seed()
        options.check_process(self.process.name)
        check_integer("batch_size", batch_size, minimum=1)
        return options, self.canvas_rows(prompt, num_samples, length, infill, suffix, chat)

    def run_batches(self, options: SamplerOptions, rows: list[list[int | None]], batch_size: int) -> Iterator[SamplerStep]:
        """The sampler's steps, batch after batch, each under the pipeline's precision only while it computes.

        The first batch's sampler is set up at once, so that its checks of the canvas raise
        before the first step (the batches share one layout).
        """

        def batch(first: int) -> tuple[Canvas, Iterator[SamplerStep]]:
            canvas = Canvas.from_rows(rows[first : first + batch_size], self.tokenizer.mask_id, self.tokenizer.pad_id,
                                      self.device)
            return canvas, sampler_steps(self.sampling_model, self.process, canvas, options, first)

        first_batch = batch(0)

        def steps() -> Iterator[SamplerStep]:
            for first in range(0, len(rows), batch_size):
                canvas, sampler = first_batch if first == 0 else batch(first)
                while True:
                    with autocast(self.device, self.precision):  # entered per step: nothing leaks past a yield
                        step = next(sampler, None)
                    if step is None:
                        break
                    step.first_sample, step.canvas, step.seed = first, canvas, options.seed
                    yield step

        return steps()

    def decode(self, output: SampleOutput | SamplerStep, row: int, stop_at_eos: bool = True,
               mask: str | None = None) -> str:
        """The text of sample ``row``: padding removed, cut at end-of-text as :meth:`generate` says, each masked
        position left out or, with ``mask``, shown as that text (``canvas_texts`` uses ``samplers.step.MASK_GLYPH``)."""
        canvas = output.canvas
        kept, skipping = [], False
        for token, generated, active in zip(
            output.tokens[row].tolist(), canvas.generated[row].tolist(), canvas.active[row].tolist()
        ):
            if not generated:
                skipping = False
            elif stop_at_eos and token == self.tokenizer.eos_id:
                skipping = True
            if active and not skipping:
                kept.append(token)
        if mask is None:
            return self.tokenizer.decode(kept)
        pieces, run = [], []
        for token in kept:  # the tokens between two masks are decoded together
            if token == self.tokenizer.mask_id:
                pieces += [self.tokenizer.decode(run), mask]
                run = []
            else:
                run.append(token)
        return "".join(pieces) + self.tokenizer.decode(run)

    def check_length(self, prompt_length: int, length: int | None, suffix_length: int = 0) -> int:
        """The number of tokens to generate between ``prompt_length`` given tokens before them and
        ``suffix_length`` after them, checked against the context."""
        given = {name: count for name, count in (("prompt", prompt_length), ("suffix", suffix_length)) if count}
        room = self.context_length - prompt_length - suffix_length
        if room < 1:
            raise DDLMError(
                f"the {' and '.join(given)} {'is' if len(given) == 1 else 'are'} {sum(given.values())} tokens, "
                f"which leaves no room to generate in the model's context of {self.context_length}; "
                f"shorten the {' or '.join(given)}"
            )
        if length is None:
            return room
        if length < 1:
            raise DDLMError(f"length must be at least 1, got {length}")
        if length > room and not getattr(self.process, "generates_past_context", False):  # block diffusion slides
            parts = "".join(f"{name} ({count}) + " for name, count in given.items())
            raise DDLMError(
                f"{parts}length ({length}) tokens exceed the model's context of "
                f"{self.context_length}; use --length {room} or less"
            )
        return length


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
    if directory.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise DDLMError(f"model directory {path} does not exist; pass the --out folder of a `ddlm train` run "
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
