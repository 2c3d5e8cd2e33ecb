"""The trainer: a loop over stateful parts that are saved and restored together.

Model, EMA, optimizer, data position, RNG states, step, token count and elapsed time
go into one checkpoint, so N steps + resume + N steps equals 2N steps in one go. A
checkpoint is only ever taken between two steps, also when a signal stops the run.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ddlm.data import BatchLoader, TokenizedCorpus
from ddlm.device import autocast, describe_machine, resolve_device, resolve_precision
from ddlm.errors import DDLMError
from ddlm.families import build_process
from ddlm.fileio import error_reason
from ddlm.model import Transformer
from ddlm.pipeline import DiffusionPipeline
from ddlm.processes import LossOutput, Process, Vocabulary
from ddlm.tokenizers import Tokenizer
from ddlm.training.checkpoint import CHECKPOINT_FILE, SHARDS_KEY, check_step, load_checkpoint, save_checkpoint
from ddlm.training import curriculum, sharding
from ddlm.training.config import RunConfig
from ddlm.training.distributed import Distributed
from ddlm.training.ema import EMA
from ddlm.training.init import load_initial_weights
from ddlm.training.lock import RunLock
from ddlm.training.logger import MetricsLog
from ddlm.training.schedule import learning_rate, warmup_progress
from ddlm.training.signals import StopSignals, TrainingInterrupted
from ddlm.training.state import RandomStates, TrainState

VALIDATION_SEED = 1234
EVAL_BATCH_TOKENS = 16384  # validation batches hold about this many tokens


def build_run_process(config: RunConfig, tokenizer: Tokenizer) -> Process:
    """The process the run's ``process`` section describes, over the tokenizer's vocabulary."""
    return build_process(asdict(config.process), Vocabulary.of(tokenizer))


def build_model(config: RunConfig, tokenizer: Tokenizer, process: Process) -> Transformer:
    """The backbone of the run's ``model`` section, with the vocabulary, context length, noise
    conditioning and attention mask filled from the tokenizer, the data and the process.

    ``model.time_conditioning`` matters only where the process leaves it open (masked diffusion).
    """
    conditioning = {"required": True, "optional": config.model.time_conditioning, "none": False}
    return Transformer(replace(
        config.model, vocab_size=tokenizer.vocab_size, context_length=config.data.context_length,
        time_conditioning=conditioning[process.noise_conditioning], causal=process.causal,
        start_id=tokenizer.eos_id if config.model.shift else None,
    ))


NORM_TYPES = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)


def embedding_parameters(model: torch.nn.Module) -> set[int]:
    """The ids of the embedding matrices, found by module type: every ``nn.Embedding`` (input and position
    embeddings, a tied output head) and a Hugging Face network's output embeddings."""
    network = getattr(model, "network", model)
    head = network.get_output_embeddings() if hasattr(network, "get_output_embeddings") else None
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)] + ([head] if head is not None else [])
    return {id(p) for module in modules for p in module.parameters(recurse=False)}


def decays(module: torch.nn.Module, name: str, parameter: torch.nn.Parameter, embeddings: set[int]) -> bool:
    """Whether ``module``'s parameter ``name`` takes weight decay: a matrix that is no embedding (``embeddings``),
    of no normalisation layer (by type, or a class named ...Norm, as Hugging Face's RMS norms are), and no bias."""
    norm = isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")
    return parameter.ndim >= 2 and name != "bias" and not norm and id(parameter) not in embeddings


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (frozen ones, as under LoRA, left out) in ``named_parameters`` order,
    with weight decay on matrices only: not on norms, biases or embeddings, each found by module type."""
    embeddings, seen = embedding_parameters(model), set()
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in seen:  # a tied matrix once
                seen.add(id(parameter))
                (decay if decays(module, name, parameter, embeddings) else no_decay).append(parameter)
    settings = config.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(settings.beta1, settings.beta2),
    )


class Trainer:
    """Trains one model on one corpus and writes its model directory to ``out_dir``.

    Under ``torchrun`` each rank trains on its slice of every batch, holding a full copy of the model
    (``optim.parallel=ddp``: DistributedDataParallel) or a shard of it (``fsdp``: FSDP2, see
    :mod:`ddlm.training.sharding`); rank 0 alone evaluates, logs and writes files.
    """

    def __init__(
        self,
        config: RunConfig,
        tokenizer: Tokenizer,
        train_corpus: TokenizedCorpus,
        valid_corpus: TokenizedCorpus | None,
        out_dir: str | Path,
        device: str = "auto",
        show_progress: bool = True,
    ):
        config.validate()
        curriculum.check_ar_term(config)
        self.config = config
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir)
        self.run_lock = RunLock(self.out_dir)
        self.dist = Distributed.from_environment()
        sharding.check_parallel(config.optim.parallel, self.dist)
        self.sharded = config.optim.parallel == "fsdp"
        self.device = self.dist.setup(resolve_device(device))
        self.precision = resolve_precision(config.optim.precision, self.device)
        self.show_progress = show_progress and self.dist.is_main
        torch.manual_seed(config.optim.seed)
        self.process = build_run_process(config, tokenizer)
        self.model = self.new_model().to(self.device)
        self.eval_model = self.new_model().to(self.device).eval()
        self.eval_model_current = False  # whether eval_model holds the EMA weights of now
        self.trained_model = self.wrap_for_data_parallel(self.model)
        self.optimizer = build_optimizer(self.model, config)
        self.ema = EMA(self.model, config.optim.ema)
        self.random = RandomStates(self.device, config.optim.seed, self.dist)
        self.train_loader, self.valid_loader = self.new_loaders(train_corpus, valid_corpus)
        self.state = TrainState()
        self.saved_step: int | None = None  # the step of the checkpoint on disk, when this trainer knows it
        self.log: MetricsLog | None = None
        self.ar_sum: list[float] = [0.0, 0]  # this step's AR term (adapt.ar_loss_weight): NLL and tokens so far
        self.ar_nll: float | None = None  # the last step's AR term per token, over all ranks (None without one)

    def new_model(self) -> torch.nn.Module:
        """A freshly initialised backbone of the run's configuration (the trained model, then the evaluation copy)."""
        return build_model(self.config, self.tokenizer, self.process)

    def new_loaders(self, train_corpus: Any, valid_corpus: Any) -> tuple[Any, Any]:
        """The training batches (this rank's share) and the validation batches (None without validation data)."""
        data, optim = self.config.data, self.config.optim
        train = BatchLoader(train_corpus, optim.batch_size, data.context_length, layout=data.layout, seed=optim.seed,
                            pad_id=self.tokenizer.pad_id, rank=self.dist.rank, world_size=self.dist.world_size)
        valid = (BatchLoader(valid_corpus, optim.batch_size, data.context_length, layout=data.layout, seed=0,
                             pad_id=self.tokenizer.pad_id) if valid_corpus is not None else None)
        return train, valid

    def start_from(self, source: Transformer) -> None:
        """Begin from ``source``'s weights (``--init``): the model and its EMA."""
        load_initial_weights(self.eval_model, source)  # checked against the unsharded copy, then spread
        sharding.load_full_state(self.model, self.eval_model.state_dict())
        self.ema = EMA(self.model, self.config.optim.ema)
        self.eval_model_current = False

    def wrap_for_data_parallel(self, model: Transformer) -> torch.nn.Module:
        """The model as trained: sharded in place (fsdp), inside DistributedDataParallel, or itself alone."""
        if self.sharded:
            return sharding.shard_model(model, self.precision, self.device, self.dist.world_size)
        if not self.dist.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)

    def gradients_kept_local(self) -> contextlib.AbstractContextManager:
        """For a micro-batch before the last of a step: no gradient exchange between the processes."""
        if self.sharded:
            return sharding.gradients_kept_local(self.model)
        return self.trained_model.no_sync() if self.dist.enabled else contextlib.nullcontext()

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    # ----- the loop -----

    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until max_steps or the time budget (or ``stop_after`` steps); export the model.

        SIGINT and SIGTERM stop the run at the next step boundary, after a checkpoint of that
        step, with ``TrainingInterrupted``; a second signal, or one during the final evaluation
        and export, stops it at once (KeyboardInterrupt).
        """
        if stop_after is not None and stop_after < 1:
            raise DDLMError(f"stop_after must be at least 1, got {stop_after}")
        if self.dist.is_main:
            self.run_lock.acquire()
        try:
            if self.log is None and self.dist.is_main:
                self.log = MetricsLog(self.out_dir, resume_step=self.state.step)
            with StopSignals() as signals:
                self.run_steps(stop_after, signals)
                signals.stop_at_once()  # the last checkpoint is on disk: a signal during the export ends it
                summary = self.finish()
        finally:
            self.run_lock.release()
        self.dist.shutdown()
        return summary

    def run_steps(self, stop_after: int | None, signals: StopSignals) -> None:
        """The optimizer steps, each followed by its logs and periodic work; a checkpoint at the end."""
        bar = self.progress_bar()
        if self.state.step > 0 and self.finished(None) and self.dist.is_main:
            bar.write(f"the run already ended at step {self.state.step}: nothing to train; to continue it, resume with a "
                      "larger --time-budget or --max-steps")
        window_tokens, window_start = 0, time.perf_counter()
        try:
            while True:
                if self.dist.any(signals.received is not None, self.device):  # every rank stops at the same step
                    self.save_checkpoint()
                    raise TrainingInterrupted(self.state.step, signals.received or "a signal to another rank")
                if self.finished(stop_after):
                    break
                step_start = time.perf_counter()
                loss, lr, tokens = self.train_step()
                # every rank must agree on the elapsed time: it drives the LR and the stop
                self.state.elapsed += self.dist.max(time.perf_counter() - step_start, self.device)
                self.state.tokens += tokens
                window_tokens += tokens
                step = self.state.step
                speed = window_tokens / max(time.perf_counter() - window_start, 1e-9)  # since the last log row
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{speed:,.0f}", refresh=False)  # drawn by the update
                self.advance(bar)
                logged = step % self.config.log.log_every == 0 or step == 1 or self.finished(stop_after)
                if self.log is not None and logged:
                    self.log.write(step=step, tokens=self.state.tokens, elapsed_s=f"{self.state.elapsed:.1f}",
                                   lr=f"{lr:.3e}", train_nelbo=f"{loss:.4f}", tokens_per_s=f"{speed:.0f}",
                                   train_ar_nll="" if self.ar_nll is None else f"{self.ar_nll:.4f}")
                    window_tokens, window_start = 0, time.perf_counter()
                self.periodic(step, bar)
        finally:
            bar.close()
        self.save_checkpoint()

    def progress_bar(self) -> tqdm:
        """Counts steps, or seconds of the time budget when one is set."""
        budget = self.config.optim.time_budget
        if budget is None:
            return tqdm(total=self.config.optim.step_limit(), initial=self.state.step, unit="step",
                        disable=not self.show_progress, dynamic_ncols=True, desc="train")
        return tqdm(total=round(budget), initial=min(round(self.state.elapsed), round(budget)), unit="s",
                    disable=not self.show_progress, dynamic_ncols=True, desc="train",
                    bar_format="{desc}{percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")

    def advance(self, bar: tqdm) -> None:
        if self.config.optim.time_budget is None:
            bar.update(1)
        else:
            bar.update(min(self.state.elapsed, bar.total) - bar.n)
        bar.set_description(f"train step {self.state.step}", refresh=False)

    def finished(self, stop_after: int | None) -> bool:
        settings = self.config.optim
        if stop_after is not None and self.state.step >= stop_after:
            return True
        if settings.time_budget is not None and self.state.elapsed >= settings.time_budget:
            return True
        limit = settings.step_limit()
        return limit is not None and self.state.step >= limit

    def progress(self) -> float:
        """Fraction of the run done: by time when a time budget is set, else by steps."""
        settings = self.config.optim
        if settings.time_budget is not None:
            return self.state.elapsed / settings.time_budget
        return self.state.step / settings.step_limit()

    def warmup(self) -> float:
        """How far the warm-up is: by steps, and under a time budget also by elapsed time."""
        settings = self.config.optim
        seconds = None if settings.time_budget is None else settings.warmup_fraction * settings.time_budget
        return warmup_progress(self.state.step, settings.warmup_steps, self.state.elapsed, seconds)

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; returns (NELBO/token, lr, tokens trained on by all
        ranks)."""
        settings = self.config.optim
        lr = learning_rate(self.progress(), self.warmup(), settings.lr, settings.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        curriculum.apply(self.process, self.state.step, self.config.adapt, self.config.data.context_length)
        self.model.train()
        nelbo_sum, token_count, trained = 0.0, 0, 0
        self.ar_sum = [0.0, 0]
        for micro_step in range(settings.grad_accum):
            last = micro_step == settings.grad_accum - 1
            with contextlib.nullcontext() if last else self.gradients_kept_local():
                with autocast(self.device, self.precision):
                    output, batch_tokens = self.batch_loss()
                (output.loss / settings.grad_accum).backward()
            nelbo_sum += output.nelbo_sum
            token_count += output.num_tokens
            trained += batch_tokens
        nelbo_sum, token_count, trained, *ar_sum = self.dist.sum([nelbo_sum, token_count, trained, *self.ar_sum],
                                                                 self.device)
        self.ar_nll = ar_sum[0] / ar_sum[1] if ar_sum[1] else None
        if not math.isfinite(nelbo_sum):
            raise DDLMError(
                f"the loss became {nelbo_sum} at step {self.state.step}; lower optim.lr or use precision=fp32, "
                f"then resume from the last checkpoint"
            )
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.eval_model_current = False
        self.state.step += 1
        return nelbo_sum / token_count, lr, int(trained)

    def batch_loss(self) -> tuple[LossOutput, int]:
        """The loss of the next training micro-batch, and the number of tokens it holds (padding not counted)."""
        batch = next(self.train_loader).to(self.device)
        output = self.process.loss(self.trained_model, batch, self.random.noise)
        return self.with_ar_term(output, batch), output.num_tokens

    def with_ar_term(self, output: LossOutput, x0: torch.Tensor) -> LossOutput:
        """``output`` with ``adapt.ar_loss_weight`` times the clean batch's next-token NLL added to its loss (its
        NELBO unchanged; the term kept in ``ar_sum`` for the log); at weight 0 the term is not computed."""
        weight = self.config.adapt.ar_loss_weight
        if weight == 0:
            return output
        term = curriculum.ar_term(self.trained_model, self.process, x0)
        self.ar_sum = [self.ar_sum[0] + term.nelbo_sum, self.ar_sum[1] + term.num_tokens]
        return replace(output, loss=output.loss + weight * term.loss)

    def periodic(self, step: int, bar: tqdm) -> None:
        """Validation, sample previews and checkpoints at their intervals.

        The checkpoint comes last, so every log row of a step is on disk before its checkpoint.
        """
        log = self.config.log
        evaluating = self.valid_loader is not None and log.eval_every and step % log.eval_every == 0
        if evaluating or (log.sample_every and step % log.sample_every == 0):
            self.load_ema_into_eval_model()  # on every rank: sharded EMA weights are gathered
        if self.dist.is_main and evaluating:
            valid = self.evaluate(log.eval_batches)
            self.state.best_valid = valid if self.state.best_valid is None else min(valid, self.state.best_valid)
            bar.write(f"step {step}: valid NELBO {valid:.4f} nats/token ({valid / math.log(2):.4f} bits)")
            assert self.log is not None
            self.log.write(step=step, tokens=self.state.tokens, elapsed_s=f"{self.state.elapsed:.1f}",
                           valid_nelbo=f"{valid:.4f}")
        if self.dist.is_main and log.sample_every and step % log.sample_every == 0:
            bar.write(f"step {step} sample: {self.preview()!r}")
        if log.save_every and step % log.save_every == 0:
            self.save_checkpoint()

    # ----- evaluation and export -----

    def load_ema_into_eval_model(self) -> Transformer:
        """The evaluation copy holding the EMA weights of the current step. Collective under FSDP when the
        copy is out of date: every rank calls it before rank 0 alone evaluates or exports."""
        if not self.eval_model_current:
            self.ema.copy_to(self.eval_model)
            self.eval_model_current = True
        return self.eval_model

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None, draws: int = 1, progress: str | None = None) -> float:
        """Validation NELBO per token (nats) of the EMA weights, with fixed time draws; a progress bar titled
        ``progress`` where one is given."""
        if self.valid_loader is None:
            raise DDLMError("no validation data; pass --valid or set data.valid_fraction > 0")
        model = self.load_ema_into_eval_model()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(VALIDATION_SEED)
        batch_size = max(self.config.optim.batch_size, EVAL_BATCH_TOKENS // self.config.data.context_length)
        batches = self.valid_loader.eval_batch_count(batch_size)
        batches = batches if max_batches is None else min(batches, max_batches)
        nelbo, tokens = 0.0, 0
        with tqdm(total=draws * batches, desc=progress, unit="batch", disable=progress is None, leave=False,
                  dynamic_ncols=True) as bar:
            for _ in range(draws):
                for batch in itertools.islice(self.valid_loader.iter_eval_batches(batch_size), batches):
                    with autocast(self.device, self.precision):
                        output = self.process.loss(model, batch.to(self.device), generator)
                    nelbo += output.nelbo_sum
                    tokens += output.num_tokens
                    bar.update()
        return nelbo / tokens

    def pipeline(self) -> DiffusionPipeline:
        """A pipeline over the EMA weights, as exported."""
        return DiffusionPipeline(self.load_ema_into_eval_model(), self.tokenizer, self.process,
                                 summary=self.summary(), precision=self.precision,
                                 sampler_defaults=self.adapted_sampler_defaults())

    def adapted_sampler_defaults(self) -> dict[str, Any]:
        """A block model adapted from an autoregressive one samples left to right, one token per step (its source's
        order, which its weights know first: about twice the real words of random order); other runs: none."""
        if self.config.init.source_process != "ar" or self.process.name != "block":
            return {}
        return {"policy": "left-to-right", "steps": self.config.data.context_length}

    def preview(self) -> str:
        steps = self.config.log.sample_steps
        return self.pipeline().generate(num_samples=1, steps=steps, seed=self.state.step)[0][:300]

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "train_seconds": round(self.state.elapsed, 1),
            "parameters": self.model.num_parameters(),
            "precision": self.precision,
            "machine": describe_machine(),
            "best_valid_nelbo": self.state.best_valid,
            "run_config": self.config.to_dict(),
        }

    def log_final_validation(self, final: float) -> None:
        """The last row of ``log.csv``: the whole validation set's NELBO in its own column, beside the periodic
        estimate (the first ``log.eval_batches`` batches) at the last step, so that the curve ends on the
        estimate its other points use."""
        log = self.config.log
        periodic = ""
        if log.eval_every and self.state.step % log.eval_every != 0:  # not estimated at this step yet
            periodic = f"{self.evaluate(log.eval_batches):.4f}"
        self.log.write(step=self.state.step, tokens=self.state.tokens, elapsed_s=f"{self.state.elapsed:.1f}",
                       valid_nelbo=periodic, final_valid_nelbo=f"{final:.4f}")

    def finish(self) -> dict[str, Any]:
        """Final validation over the whole validation set, then the model directory (rank 0)."""
        self.load_ema_into_eval_model()  # on every rank: sharded EMA weights are gathered
        if not self.dist.is_main:
            self.dist.barrier()
            return self.summary()
        if self.valid_loader is not None:
            final = self.evaluate(draws=2, progress="final validation" if self.show_progress else None)
            self.state.best_valid = final if self.state.best_valid is None else min(final, self.state.best_valid)
            if self.log is not None:
                self.log_final_validation(final)
            summary = {**self.summary(), "final_valid_nelbo": final, "final_valid_bits": final / math.log(2)}
        else:
            summary = self.summary()
        try:
            self.export(summary)
        except OSError as error:
            raise DDLMError(f"could not export the model to {self.out_dir} ({error_reason(error)}); the checkpoint "
                            "is intact: free disk space or raise the file-size limit, then continue with --resume") from None
        if self.log is not None:
            self.log.close()
        self.dist.barrier()
        return summary

    def export(self, summary: dict[str, Any]) -> None:
        """Write the model directory: the pipeline of the EMA weights, with ``summary``."""
        pipe = self.pipeline()
        pipe.summary = summary
        pipe.save_pretrained(self.out_dir)

    # ----- checkpoints -----

    def model_state(self) -> dict[str, torch.Tensor]:
        """What an unsharded checkpoint keeps of the model."""
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``model_state``'s output."""
        try:
            self.model.load_state_dict(state)
        except RuntimeError:
            raise DDLMError(
                f"checkpoint {self.checkpoint_path} does not fit this model configuration; "
                "resume with the run's own config (leave model.* and data.* unchanged)"
            ) from None

    def state_dict(self) -> dict[str, Any]:
        """Every stateful part of the run, as one dictionary (collective: all ranks call it). A sharded run's
        model, optimizer and EMA are this rank's shards, keyed by parameter names, marked by ``SHARDS_KEY``."""
        if self.sharded:
            stepped = self.optimizer if self.optimizer.state else None
            parts = {**sharding.state_parts(self.model, stepped, self.ema), SHARDS_KEY: None}
        else:
            parts = {"model": self.model_state(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict()}
        return {
            **parts,
            "rng": self.random.state_dict(),
            "loader": self.train_loader.state_dict(),
            "train": self.state.state_dict(),
            "run_config": self.config.to_dict(),
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every stateful part from ``state_dict``'s output, as read back from a checkpoint (a sharded
        one, read on any number of processes, with its shards: see ``resume``)."""
        self.check_optimizer_groups(state)
        if SHARDS_KEY in state:
            sharding.load_parts(self.model, self.optimizer, state)
        else:
            self.check_unsharded(state)
            self.load_model_state(state["model"])
            optimizer = state["optimizer"]  # JSON turned the parameter indices into strings
            self.optimizer.load_state_dict({"state": {int(index): entry for index, entry in optimizer["state"].items()},
                                            "param_groups": optimizer["param_groups"]})
        self.ema.load_state_dict(state["ema"])
        self.eval_model_current = False
        self.random.load_state_dict(state["rng"])
        self.train_loader.load_state_dict(state["loader"])
        self.state.load_state_dict(state["train"])

    def check_optimizer_groups(self, state: dict[str, Any]) -> None:
        """A one-line error when the checkpoint's optimizer groups or orders its parameters otherwise than this ddlm
        does (as before commit a3dc7a4 for a Hugging Face network, whose embeddings then took weight decay): torch
        checks only the group sizes, and would pair saved moments with parameters of another shape."""
        saved = state.get("optimizer", {}).get("param_groups")  # none before a sharded run's first step
        if saved is None:
            return
        sizes, own = [len(group["params"]) for group in saved], [len(group["params"]) for group in self.optimizer.param_groups]
        problem = f"{sizes} per weight-decay group, this ddlm {own}" if sizes != own else None
        if problem is None and SHARDS_KEY not in state:  # a sharded run's moments are keyed by name
            problem = self.moment_shape_mismatch(saved, state["optimizer"].get("state", {}))
        if problem is not None:
            raise DDLMError(
                f"checkpoint {self.checkpoint_path} groups its optimizer's parameters otherwise ({problem}): an earlier "
                "ddlm wrote it; start the run again, or resume it with the ddlm that wrote it"
            )

    def moment_shape_mismatch(self, saved_groups: list[dict[str, Any]], moments: dict[Any, Any]) -> str | None:
        """The first parameter whose saved Adam moment has another shape than the parameter in its place, or None."""
        for group_index, (group, own) in enumerate(zip(saved_groups, self.optimizer.param_groups)):
            for place, (index, parameter) in enumerate(zip(group["params"], own["params"])):
                moment = moments.get(str(index), {}).get("exp_avg")  # JSON keys: the indices as strings
                if moment is not None and tuple(moment.shape) != tuple(parameter.shape):
                    return (f"parameter {place} of group {group_index} has shape {list(moment.shape)} there, "
                            f"{list(parameter.shape)} here")
        return None

    def check_unsharded(self, state: dict[str, Any]) -> None:
        """A one-line error for an unsharded checkpoint this run cannot continue: another number of processes
        (each rank has its own random states), or a sharded run."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise DDLMError(
                f"the checkpoint was written by {saved_world} process(es) and this run has {self.dist.world_size}; "
                f"resume with the same number of processes (torchrun --nproc_per_node {saved_world})"
            )
        if self.sharded:
            raise DDLMError("this checkpoint was written by an unsharded run; resume it with optim.parallel=ddp")

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (collective: every rank calls it; rank 0 writes, or under
        FSDP every rank its shards)."""
        if self.saved_step == self.state.step:
            return
        state = self.state_dict()
        if self.sharded:
            sharding.save_sharded_checkpoint(self.out_dir, state, self.dist)
        else:
            if self.dist.is_main:
                save_checkpoint(self.checkpoint_path, state)
                sharding.remove_shards(self.out_dir)  # those of a sharded checkpoint this run resumed from
            self.dist.barrier()
        self.saved_step = self.state.step

    def resume(self, new_data: bool = False) -> None:
        """Restore every stateful part from the checkpoint in ``out_dir``; with ``new_data`` (the run's
        corpus changed) the loader starts the new corpus from its first batch instead of its saved place."""
        state = load_checkpoint(self.checkpoint_path)
        if SHARDS_KEY in state:
            state = sharding.read_shards(self.out_dir, state, self.model, self.optimizer, self.ema)
            check_step(state, self.checkpoint_path)
        if new_data:
            state["loader"] = self.train_loader.state_dict()
        self.load_state_dict(state)
        self.saved_step = self.state.step
        if self.dist.is_main:
            self.log = MetricsLog(self.out_dir, resume_step=self.state.step)
