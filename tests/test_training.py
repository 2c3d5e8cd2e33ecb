"""The trainer: exact resume, atomic checkpoints, the exported model directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.training import checkpoint as checkpoint_module
from ddlm.training import load_config, prepare_training
from ddlm.training import trainer as trainer_module
from ddlm.training.trainer import EVAL_BATCH_TOKENS


@pytest.fixture
def corpus(tmp_path: Path, shakespeare_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:30000], encoding="utf-8")
    return path


def trainer_for(out: Path, corpus: Path, precision: str, resume: bool = False, steps: int = 12):
    config = load_config("tiny", overrides=[f"optim.precision={precision}", f"optim.max_steps={steps}",
                                            "log.eval_every=0", "log.save_every=0", "model.dropout=0.1"])
    return prepare_training(config, out, data=corpus, resume=resume, device="cpu",
                            cache_dir=out.parent / "cache", show_progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_continues_exactly(tmp_path, corpus, precision):
    straight = trainer_for(tmp_path / "straight", corpus, precision)
    straight.train()

    first = trainer_for(tmp_path / "split", corpus, precision)
    first.train(stop_after=6)
    assert first.state.step == 6
    second = trainer_for(tmp_path / "split", corpus, precision, resume=True)
    assert second.state.step == 6
    second.train()

    for (name, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), f"parameter {name} differs after resume"
    for name in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[name], second.ema.shadow[name]), f"EMA {name} differs"
    assert straight.state.tokens == second.state.tokens
    assert straight.train_loader.state_dict() == second.train_loader.state_dict()


def test_gradient_accumulation_equals_one_large_batch(tmp_path, corpus):
    """Two micro-batches of 4 rows take the same optimizer steps as one batch of 8 (AR: the loss has no noise)."""
    def run(out: Path, batch_size: int, grad_accum: int):
        config = load_config("tiny", overrides=["process.name=ar", "optim.precision=fp32", "optim.max_steps=4",
                                                f"optim.batch_size={batch_size}", f"optim.grad_accum={grad_accum}",
                                                "log.eval_every=0", "log.save_every=0"])
        trainer = prepare_training(config, out, data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                                   show_progress=False)
        trainer.train()
        return trainer

    large, accumulated = run(tmp_path / "large", 8, 1), run(tmp_path / "accumulated", 4, 2)
    assert large.state.tokens == accumulated.state.tokens
    for (name, a), (_, b) in zip(large.model.state_dict().items(), accumulated.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"parameter {name} differs")
    # and the accumulation is not a no-op: one micro-batch alone moves the weights elsewhere
    alone = run(tmp_path / "alone", 4, 1)
    assert not torch.allclose(alone.model.embed.weight, large.model.embed.weight, atol=1e-6)


def test_resumed_log_keeps_one_row_per_step(tmp_path, corpus):
    config = load_config("tiny", overrides=["optim.max_steps=12", "log.log_every=1", "log.eval_every=0",
                                            "log.save_every=4", "optim.precision=fp32"])
    run = tmp_path / "run"
    prepare_training(config, run, data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                     show_progress=False).train(stop_after=6)  # the checkpoint at stop holds step 6
    resumed = prepare_training(config, run, data=corpus, resume=True, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    resumed.train()
    with (run / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows if row["train_nelbo"]] == list(range(1, 13))
    assert [int(row["step"]) for row in rows if row["final_valid_nelbo"]] == [6, 12]  # each export's final validation


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, corpus, monkeypatch):
    trainer = trainer_for(tmp_path / "run", corpus, "fp32")
    trainer.train(stop_after=2)
    before = trainer.checkpoint_path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    trainer.state.step = 99
    with pytest.raises(DDLMError, match=r"could not write the checkpoint .*\(disk full\); the previous checkpoint is intact"):
        trainer.save_checkpoint()
    assert trainer.checkpoint_path.read_bytes() == before
    assert not [p for p in trainer.out_dir.iterdir() if p.name.endswith(".tmp")]


def test_exported_directory_reloads_with_identical_logits(tmp_path, corpus):
    trainer = trainer_for(tmp_path / "run", corpus, "fp32")
    trainer.train()
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")
    ema_model = trainer.load_ema_into_eval_model()
    tokens = torch.randint(0, pipe.tokenizer.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(tokens), ema_model(tokens), rtol=0, atol=0)

    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusionPipeline.from_pretrained(tmp_path / "copy", device="cpu")
    with torch.no_grad():
        assert torch.equal(again.model(tokens), pipe.model(tokens))
    assert again.process.to_dict() == pipe.process.to_dict()
    assert again.summary["steps"] == 12
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "log.csv").is_file()


def test_generate_keeps_the_prompt_and_fills_the_length(tmp_path, corpus):
    trainer_for(tmp_path / "run", corpus, "fp32").train()
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")
    texts = pipe.generate("ROMEO:", num_samples=3, length=20, steps=10, seed=0)
    assert len(texts) == 3 and all(text.startswith("ROMEO:") for text in texts)
    tokens = pipe.sample("ROMEO:", num_samples=3, length=20, steps=10, seed=0).tokens
    assert tokens.shape == (3, 26)
    assert not torch.isin(tokens, torch.tensor([pipe.tokenizer.mask_id, pipe.tokenizer.pad_id])).any()
    assert pipe.generate("ROMEO:", length=20, steps=10, seed=0) == texts[:1]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file"), "corrupt"),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
    (lambda d: (d / "tokenizer_config.json").unlink(), "tokenizer_config.json"),
])
def test_damaged_model_directory_gives_a_clear_error(tmp_path, corpus, damage, message):
    trainer_for(tmp_path / "run", corpus, "fp32").train()
    damage(tmp_path / "run")
    with pytest.raises(DDLMError, match=message) as error:
        DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")
    assert "\n" not in str(error.value)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path, corpus):
    trainer_for(tmp_path / "run", corpus, "fp32").train(stop_after=1)
    with pytest.raises(DDLMError, match="--resume"):
        trainer_for(tmp_path / "run", corpus, "fp32")


def test_bpe_preset_trains_on_stories_with_a_separate_validation_file(tmp_path, tinystories_dir):
    """The bpe-small path end to end: BPE trained on the corpus, documents split on the
    separator, validation from its own file, export, reload, generation."""
    train = tmp_path / "train.txt"
    train.write_text((tinystories_dir / "train.txt").read_text(encoding="utf-8")[:60000], encoding="utf-8")
    valid = tmp_path / "valid.txt"
    valid.write_text((tinystories_dir / "valid.txt").read_text(encoding="utf-8")[:20000], encoding="utf-8")
    config = load_config("bpe-small", overrides=[
        "tokenizer.vocab_size=400", "data.context_length=32", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "optim.batch_size=4", "optim.max_steps=3", "log.eval_every=0", "log.sample_every=0",
    ])
    trainer = prepare_training(config, tmp_path / "run", data=train, valid=valid, device="cpu",
                               cache_dir=tmp_path / "cache", show_progress=False)
    assert trainer.tokenizer.kind == "bpe" and trainer.tokenizer.vocab_size == 400
    stream = trainer.train_loader.corpus.tokens
    separator_ids = trainer.tokenizer.encode("<|endoftext|>")
    assert int((stream == trainer.tokenizer.eos_id).sum()) == len(trainer.train_loader.corpus.doc_starts)
    assert not any(list(stream[i:i + len(separator_ids)]) == separator_ids for i in range(0, 2000))
    summary = trainer.train()
    assert summary["final_valid_nelbo"] > 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")
    assert pipe.generate("Once upon a time", length=8, steps=4, seed=0)[0].startswith("Once upon a time")


@pytest.mark.parametrize(("process", "requested", "expected"), [
    ("masked", False, False), ("masked", True, True),
    ("sedd-absorb", False, True), ("sedd-uniform", False, True),
    ("ar", True, False),
])
def test_noise_conditioning_follows_the_process(process, requested, expected):
    """model.time_conditioning decides only for masked diffusion: SEDD always sees the noise
    level, and the autoregressive model has none (a preset's setting must not give it adaLN layers)."""
    from ddlm.tokenizers import build_tokenizer
    from ddlm.training.trainer import build_model, build_run_process

    config = load_config("tiny", overrides=[f"process.name={process}", f"model.time_conditioning={requested}"])
    tokenizer = build_tokenizer("char", texts=["some text"])
    model = build_model(config, tokenizer, build_run_process(config, tokenizer))
    assert model.config.time_conditioning is expected
    assert (model.noise_embed is not None) is expected


# ----- resuming with other settings, the warm-up under a time budget, interrupted runs -----

def cli_error(capsys, args: list[str]) -> str:
    from ddlm.cli import main

    code = main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def stopped_run(tmp_path, corpus) -> Path:
    """A run of 12 steps stopped at step 2, to be resumed through the command line."""
    trainer_for(tmp_path / "run", corpus, "fp32").train(stop_after=2)
    return tmp_path / "run"


@pytest.mark.parametrize("override", ["data.context_length=64", "process.name=ar", "process.schedule=cosine",
                                      "tokenizer.kind=byte", "model.d_model=64", "optim.batch_size=16"])
def test_resume_refuses_a_change_that_would_not_continue_the_run(stopped_run, capsys, override):
    before = (stopped_run / "run.json").read_text()
    line = cli_error(capsys, ["train", "--resume", "--out", str(stopped_run), "--cache-dir", str(stopped_run.parent / "cache"),
                              override])
    assert f"--resume cannot change {override.split('=')[0]} (" in line
    assert (stopped_run / "run.json").read_text() == before


def test_resume_records_allowed_changes_and_keeps_them(stopped_run):
    import json

    from ddlm.cli import main
    from ddlm.training import saved_config

    common = ["train", "--resume", "--out", str(stopped_run), "--cache-dir", str(stopped_run.parent / "cache"),
              "--no-progress"]
    assert main(common + ["--stop-after", "4", "optim.max_steps=14", "log.log_every=3"]) == 0
    history = json.loads((stopped_run / "run.json").read_text())["history"]
    assert [entry["step"] for entry in history] == [2]
    assert history[0]["changes"] == {"optim.max_steps": [12, 14], "log.log_every": [5, 3]}
    assert main(common) == 0  # a plain --resume keeps the changed settings
    assert saved_config(stopped_run).optim.max_steps == 14
    assert load_checkpoint_step(stopped_run) == 14
    assert len(json.loads((stopped_run / "run.json").read_text())["history"]) == 1


def load_checkpoint_step(run: Path) -> int:
    from ddlm.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.safetensors")["train"]["step"]


def test_under_a_time_budget_the_warm_up_follows_elapsed_time(tmp_path, corpus):
    from ddlm.training.schedule import learning_rate, warmup_progress

    # by steps, as before: step s of a 100-step warm-up runs at (s + 1) / 100 of the peak
    assert [learning_rate(0.0, warmup_progress(s, 100), 1.0, 0.1) for s in (0, 49, 99)] == [0.01, 0.5, 1.0]
    # a 2-minute budget with 5% warm-up: 6 s in, step 47 of a 100-step warm-up is past it
    config = load_config("tiny", overrides=["optim.time_budget=2m", "optim.warmup_steps=100", "optim.warmup_fraction=0.05",
                                            "optim.precision=fp32", "log.eval_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    trainer.state.step, trainer.state.elapsed = 47, 3.0
    assert trainer.warmup() == pytest.approx(0.5)
    trainer.state.elapsed = 7.0
    assert trainer.warmup() > 1
    lr = learning_rate(trainer.progress(), trainer.warmup(), config.optim.lr, config.optim.min_lr_ratio)
    assert lr == pytest.approx(config.optim.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 120))))


def test_a_run_interrupted_before_its_first_export_says_how_to_continue(tmp_path, corpus):
    trainer = trainer_for(tmp_path / "run", corpus, "fp32")
    trainer.save_checkpoint()  # what a stop before the end leaves: a checkpoint, no model yet
    with pytest.raises(DDLMError, match=r"interrupted before its first export; continue it with "
                                        r"`ddlm train --out .*run --resume`"):
        DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")


def test_a_checkpoint_in_the_earlier_flat_layout_is_refused_in_one_line(tmp_path, corpus):
    """Format 1 (before the nested dictionary: model/, ema/, optim/INDEX/NAME, rng/NAME/RANK tensors, no format)."""
    import json

    from safetensors.torch import save_file

    from ddlm.training.checkpoint import load_checkpoint

    trainer = trainer_for(tmp_path / "run", corpus, "fp32")
    flat = {f"model/{k}": v.contiguous() for k, v in trainer.model.state_dict().items()}
    legacy = tmp_path / "legacy.safetensors"
    save_file(flat, str(legacy), metadata={"trainer_state": json.dumps({"train": {"step": 0}})})
    with pytest.raises(DDLMError, match=r"flat layout of an earlier ddlm \(format 1\).*resume it with the ddlm that "
                                        r"wrote it, or start the run again") as error:
        load_checkpoint(legacy)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["optim.lr=nan"], "optim.lr must be a finite number"),
    (["optim.lr=-1"], "optim.lr must be greater than 0"),
    (["optim.grad_accum=0"], "optim.grad_accum must be at least 1"),
    (["data.context_length=-5"], "data.context_length must be at least 1"),
    (["model.d_model=0"], "model.d_model must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--stop-after", "-1"], "--stop-after must be at least 1"),
    (["--time-budget", "0"], "--time-budget must be more than 0 seconds"),
    (["optim.time_budget=soon"], "invalid optim.time_budget 'soon'"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, corpus, capsys, args, message):
    line = cli_error(capsys, ["train", "--data", str(corpus), "--preset", "tiny", "--out", str(tmp_path / "run"), *args])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from ddlm import training
    from ddlm.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "prepare_training", interrupted)
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]


class RecordingBar(tqdm):
    """A progress bar that records its description and postfix at every update."""

    updates: list[tuple[str, str]] = []

    def update(self, n: float = 1) -> bool | None:
        RecordingBar.updates.append((self.desc, self.postfix or ""))
        return super().update(n)


def test_the_progress_shows_every_step_and_the_final_validation_is_logged(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(trainer_module, "tqdm", RecordingBar)
    RecordingBar.updates = []
    config = load_config("tiny", overrides=["optim.max_steps=7", "log.log_every=50", "log.eval_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache")
    summary = trainer.train()
    postfixes = [postfix for desc, postfix in RecordingBar.updates if desc.startswith("train")]
    assert len(postfixes) == 7 and len(set(postfixes)) == 7  # loss, lr and speed of each step, not the first one's
    validation = [desc for desc, _ in RecordingBar.updates if desc == "final validation"]
    assert len(validation) == 2 * trainer.valid_loader.eval_batch_count(EVAL_BATCH_TOKENS // 32)  # two draws
    with (tmp_path / "run" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows if row["train_nelbo"]] == [1, 7]  # the first and the last step
    assert [(int(row["step"]), float(row["final_valid_nelbo"])) for row in rows if row["final_valid_nelbo"]] == \
        [(7, round(summary["final_valid_nelbo"], 4))]
    assert not any(row["valid_nelbo"] for row in rows)  # no periodic estimate asked for (log.eval_every=0)


def test_a_run_resumed_past_its_time_budget_draws_its_bar_and_says_it_has_ended(tmp_path, corpus, capsys):
    """A finished run's elapsed time rounds above its budget (60.6 s of 60): the bar must still draw."""
    config = load_config("tiny", overrides=["optim.time_budget=60", "optim.max_steps=100000", "log.eval_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache")
    trainer.state.step, trainer.state.elapsed = 3, 60.6  # as a resumed run that ended just past its budget
    trainer.train()
    assert trainer.state.step == 3  # nothing trained
    out = capsys.readouterr().out
    assert "the run already ended at step 3" in out and "larger --time-budget" in out


def test_the_curve_ends_on_its_own_estimate_and_the_whole_set_has_its_column(tmp_path, corpus):
    """The last periodic point uses the same batches as the others; the whole validation set is logged apart."""
    config = load_config("tiny", overrides=["optim.max_steps=7", "log.eval_every=5", "log.eval_batches=1"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    summary = trainer.train()
    with (tmp_path / "run" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    periodic = [(int(row["step"]), float(row["valid_nelbo"])) for row in rows if row["valid_nelbo"]]
    assert [step for step, _ in periodic] == [5, 7]
    assert periodic[-1][1] == round(trainer.evaluate(1), 4)  # the final step, on the periodic batches
    assert [float(row["final_valid_nelbo"]) for row in rows if row["final_valid_nelbo"]] == \
        [round(summary["final_valid_nelbo"], 4)]


def test_the_time_budget_flag_and_key_are_one_setting():
    """--time-budget and optim.time_budget both let the time decide (no step cap unless one is given)."""
    from ddlm.training.config import DEFAULT_MAX_STEPS

    by_key = load_config("char-small", None, ["optim.time_budget=1m"])
    assert by_key.optim.step_limit() is None
    assert load_config("char-small", None, []).optim.step_limit() == DEFAULT_MAX_STEPS
    capped = load_config("char-small", None, ["optim.time_budget=1m", "optim.max_steps=7"])
    assert capped.optim.step_limit() == 7


def test_a_padded_layout_counts_the_tokens_trained_on_not_the_padding(tmp_path, shakespeare_text, monkeypatch):
    from ddlm.data import BatchLoader

    data = tmp_path / "speeches.jsonl"
    speeches = [speech for speech in shakespeare_text[:20000].split("\n\n") if speech.strip()]
    data.write_text("".join(json.dumps({"text": speech}) + "\n" for speech in speeches), encoding="utf-8")
    served = []
    following = BatchLoader.__next__
    monkeypatch.setattr(BatchLoader, "__next__", lambda self: served.append(following(self)) or served[-1])
    config = load_config("tiny", overrides=["optim.max_steps=3", "data.layout=padded", "data.valid_fraction=0",
                                            "log.eval_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=data, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    summary = trainer.train()
    pad = trainer.tokenizer.pad_id
    assert summary["tokens"] == sum(int((batch != pad).sum()) for batch in served) < sum(b.numel() for b in served)
