"""Adapting an autoregressive model to diffusion: the shift, ``--init``, and the exactness items of MATH.md."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Autoregressive, LossOutput, MaskedDiffusion, build_schedule
from ddlm.processes.masked import lookahead_attention
from ddlm.families import sampler_steps
from ddlm.samplers import Canvas, SamplerOptions
from ddlm.training import curriculum, load_config, prepare_training, saved_config
from ddlm.training.config import AdaptSettings
from ddlm.training.logger import COLUMNS, LOG_FILE, MetricsLog
from ddlm.training.trainer import Trainer
from tests.test_block import EOS, MASK, PAD, VOCAB, block_process, data

POLICIES = [
    {"policy": "ancestral"}, {"policy": "first-hitting"}, {"policy": "confidence"}, {"policy": "entropy"},
    {"policy": "confidence", "block_length": 4}, {"policy": "threshold", "threshold": 0.3, "block_length": 4},
    {"policy": "ancestral", "remask": "cap", "remask_eta": 0.2},
]


def tiny_backbone(shift: bool, causal: bool = False, seed: int = 0) -> Transformer:
    """A random float64 backbone with peaked predictions."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, context_length=16, d_model=16, n_layers=2, n_heads=2, causal=causal,
                         shift=shift, start_id=EOS if shift else None)
    model = Transformer(config)
    with torch.no_grad():
        model.embed.weight.mul_(40)
    return model.double().eval()


def with_weights_of(model: Transformer, **changes) -> Transformer:
    """A backbone with ``model``'s weights and another configuration (e.g. shifted or causal)."""
    other = Transformer(ModelConfig(**{**model.config.to_dict(), **changes})).double().eval()
    other.load_state_dict(model.state_dict())
    return other


class MovedLogits(nn.Module):
    """The reference: an unshifted backbone run on the tokens moved one place right behind the start token,
    so that its logits at position i are read where token i - 1 stands."""

    uses_noise = False

    def __init__(self, unshifted: Transformer, start_id: int):
        super().__init__()
        self.unshifted, self.start_id = unshifted, start_id
        self.context_length = unshifted.context_length

    def forward(self, tokens, noise=None, key_mask=None, attention=None):
        moved = torch.cat((torch.full_like(tokens[:, :1], self.start_id), tokens), dim=1)
        return self.unshifted(moved[:, :-1], key_mask=key_mask, attention=attention)


def masked_process(estimator: str = "time") -> MaskedDiffusion:
    return MaskedDiffusion(build_schedule("linear"), mask_id=MASK, pad_id=PAD, eos_id=EOS, estimator=estimator)


# ----- the shifted backbone -----

def test_a_shifted_model_reads_the_previous_token_at_each_position():
    shifted = tiny_backbone(shift=True)
    plain = with_weights_of(shifted, shift=False, start_id=None)
    tokens = data(3, 10)
    moved = torch.cat((torch.full((3, 1), EOS), tokens[:, :-1]), dim=1)
    torch.testing.assert_close(shifted(tokens), plain(moved), rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 5, 9])
def test_a_cached_shifted_causal_model_continues_exactly(split):
    """The cache remembers its tokens: a call after ``split`` cached positions reads the last of them first."""
    model, tokens = tiny_backbone(shift=True, causal=True), data(2, 12)
    cache = model.new_cache(2)
    head = model(tokens[:, :split], cache=cache)
    tail = model(tokens[:, split:], cache=cache)
    torch.testing.assert_close(torch.cat((head, tail), dim=1), model(tokens), rtol=1e-12, atol=1e-12)


def test_a_shifted_model_given_its_own_positions_needs_its_inputs():
    model, tokens = tiny_backbone(shift=True), data(1, 8)
    with pytest.raises(ValueError, match="inputs="):
        model(tokens, positions=torch.arange(8))


# ----- exactness of the adapted NELBO -----

def test_block_size_one_of_a_shifted_model_is_the_source_autoregressive_nll():
    """Before any step of adaptation, block size 1 gives the autoregressive model's NLL exactly, draw by draw."""
    source = tiny_backbone(shift=False, causal=True)
    adapted = with_weights_of(source, causal=False, shift=True, start_id=EOS)
    x0 = data(3, 16)
    ar = Autoregressive(mask_id=MASK, eos_id=EOS, pad_id=PAD).loss(source, x0)
    for seed in range(3):
        block = block_process(1, "count").loss(adapted, x0, torch.Generator().manual_seed(seed))
        assert block.nelbo_sum == pytest.approx(ar.nelbo_sum, rel=1e-12)
        assert block.num_tokens == ar.num_tokens


@pytest.mark.parametrize("estimator", ["time", "count"])
def test_one_block_of_a_shifted_model_is_the_masked_nelbo_of_the_moved_logits(estimator):
    """Block size = context: the same draws give the masked NELBO of the unshifted model's moved logits."""
    shifted = tiny_backbone(shift=True)
    moved = MovedLogits(with_weights_of(shifted, shift=False, start_id=None), EOS)
    x0 = data(4, 16)
    expected = masked_process(estimator).loss(moved, x0, torch.Generator().manual_seed(3))
    got = block_process(16, estimator).loss(shifted, x0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-12, atol=0)


# ----- sampling -----

@pytest.mark.parametrize("options", POLICIES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_sampling_a_shifted_model_equals_sampling_the_moved_logits(options):
    shifted = tiny_backbone(shift=True)
    moved = MovedLogits(with_weights_of(shifted, shift=False, start_id=None), EOS)
    canvas = Canvas.from_rows([[1, 2, *[None] * 8], [3, *[None] * 6, 4, None, None]], MASK, PAD)
    runs = [list(sampler_steps(model, masked_process(), canvas, SamplerOptions(seed=0, steps=8, **options)))[-1]
            for model in (shifted, moved)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert not (runs[0].tokens == MASK).any()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_and_uncached_block_sampling_of_a_shifted_model_agree(temperature):
    model, process = tiny_backbone(shift=True), block_process(4)
    canvas = Canvas.from_rows([[1, 2, 3, *[None] * 12], [4, *[None] * 14]], MASK, PAD)
    tokens = [list(sampler_steps(model, process, canvas, SamplerOptions(seed=0, steps=12, temperature=temperature,
                                                                        use_cache=use_cache)))[-1].tokens
              for use_cache in (True, False)]
    assert torch.equal(tokens[0], tokens[1])


# ----- ddlm train --init -----

@pytest.fixture(scope="module")
def ar_source(tmp_path_factory, shakespeare_path):
    """A tiny autoregressive model trained for two steps on the built-in corpus."""
    out = tmp_path_factory.mktemp("ar")
    config = load_config("tiny", None, ["process.name=ar", "optim.max_steps=2", "log.eval_every=0",
                                        "log.sample_every=0", "data.context_length=32"])
    prepare_training(config, out, data=shakespeare_path, show_progress=False).train()
    return out


@pytest.mark.parametrize("process", ["masked", "block"])
def test_init_from_an_autoregressive_model_starts_at_its_likelihood_and_records_its_source(
        tmp_path, shakespeare_path, ar_source, process):
    block = ["process.block_size=1"] if process == "block" else []
    config = load_config("tiny", None, [f"process.name={process}", *block, "process.estimator=count",
                                        "optim.max_steps=1", "log.eval_every=0", "log.sample_every=0",
                                        "data.context_length=32"])
    trainer = prepare_training(config, tmp_path / "run", data=shakespeare_path, init=str(ar_source), show_progress=False)
    source = DiffusionPipeline.from_pretrained(ar_source, precision="fp32")
    assert trainer.model.config.shift and not trainer.model.config.causal
    assert trainer.tokenizer.fingerprint() == source.tokenizer.fingerprint()
    if process == "block":  # block size 1 under the shift is the source model
        x0 = next(trainer.valid_loader.iter_eval_batches(4))
        trainer.model.eval()
        with torch.no_grad():
            nelbo = trainer.process.loss(trainer.model, x0).nelbo_sum
            nll = source.process.loss(source.model, x0).nelbo_sum
        assert nelbo == pytest.approx(nll, rel=1e-5)
    trainer.train()
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    init = summary["run_config"]["init"]
    assert init["source"] == str(ar_source) and init["source_process"] == "ar" and len(init["fingerprint"]) == 16
    adapted = DiffusionPipeline.from_pretrained(tmp_path / "run")
    assert adapted.model.config.shift and adapted.model.config.start_id == adapted.tokenizer.eos_id
    expected = {"policy": "left-to-right", "steps": 32} if process == "block" else {}
    assert adapted.sampler_defaults == expected  # the block model writes in its source's order, one token per step
    text = adapted.generate(num_samples=2, length=12, steps=6, seed=0, block_length=4 if process == "masked" else None)
    assert len(text) == 2


def test_init_refuses_what_cannot_be_adapted(tmp_path, shakespeare_path, ar_source):
    config = load_config("tiny", None, ["process.name=sedd-absorb", "optim.max_steps=1", "data.context_length=32"])
    with pytest.raises(DDLMError, match="SEDD"):
        prepare_training(config, tmp_path / "sedd", data=shakespeare_path, init=str(ar_source), show_progress=False)
    config = load_config("tiny", None, ["process.name=ar", "optim.max_steps=1", "data.context_length=32"])
    with pytest.raises(DDLMError, match="drop --init"):
        prepare_training(config, tmp_path / "x", data=shakespeare_path, init=str(ar_source), resume=True,
                         show_progress=False)


# ----- the attention path -----

def test_the_look_ahead_mask_at_each_stage_equals_a_brute_force_construction():
    length = 7
    for ahead in range(length + 2):
        expected = torch.tensor([[j <= i + ahead for j in range(length)] for i in range(length)])
        assert torch.equal(lookahead_attention(length, ahead), expected)
    assert torch.equal(lookahead_attention(length, 0), torch.ones(length, length, dtype=torch.bool).tril())


def test_annealing_goes_from_causal_to_full_and_growth_from_one_to_the_block_size():
    settings = AdaptSettings(anneal_steps=10, grow_steps=9)
    assert [curriculum.lookahead(step, settings, 20) for step in (0, 5, 9, 10, 50)] == [0, 10, 18, None, None]
    assert [curriculum.grown_block_size(step, settings, 4) for step in range(11)] == [1] * 3 + [2] * 3 + [4] * 5
    assert curriculum.block_sizes(16) == [1, 2, 4, 8, 16] and curriculum.block_sizes(12) == [1, 2, 4, 12]
    assert curriculum.block_sizes(1) == [1]
    off = AdaptSettings()
    assert curriculum.lookahead(0, off, 20) is None and curriculum.grown_block_size(0, off, 4) == 4


def test_a_shifted_model_under_causal_annealing_reads_like_an_autoregressive_model():
    """Look-ahead 0 under the shift: each position sees only the tokens before it, so on clean text the
    masked process's logits are the source AR model's next-token logits."""
    source = tiny_backbone(shift=False, causal=True)
    adapted = with_weights_of(source, causal=False, shift=True, start_id=EOS).train()
    x0 = data(2, 12)
    inputs = torch.cat((torch.full((2, 1), EOS), x0[:, :-1]), dim=1)
    process = masked_process()
    process.lookahead = 0
    attention = process.training_attention(adapted, 12, x0.device)["attention"]
    torch.testing.assert_close(adapted(x0, attention=attention), source(inputs), rtol=1e-12, atol=1e-12)
    assert process.training_attention(adapted.eval(), 12, x0.device) == {}  # evaluation: full attention


def test_a_growing_block_size_trains_the_smaller_blocks_and_evaluates_the_target():
    source = tiny_backbone(shift=False, causal=True)
    adapted = with_weights_of(source, causal=False, shift=True, start_id=EOS).train()
    x0, process = data(3, 16), block_process(4, "count")
    process.training_block_size = 1
    nll = Autoregressive(mask_id=MASK, eos_id=EOS, pad_id=PAD).loss(source, x0).nelbo_sum
    assert process.loss(adapted, x0, torch.Generator().manual_seed(0)).nelbo_sum == pytest.approx(nll, rel=1e-12)
    adapted.eval()
    expected = block_process(4, "count").loss(adapted, x0, torch.Generator().manual_seed(0)).nelbo_sum
    assert process.loss(adapted, x0, torch.Generator().manual_seed(0)).nelbo_sum == expected


@pytest.mark.parametrize("ar_term", [[], ["adapt.ar_loss_weight=0.5"]], ids=["diffusion", "with-ar-term"])
def test_an_adaptation_run_with_annealing_resumes_exactly(tmp_path, shakespeare_path, ar_source, ar_term):
    overrides = ["process.name=masked", "adapt.anneal_steps=4", "optim.max_steps=6", "log.eval_every=0",
                 "log.sample_every=0", "log.save_every=0", "data.context_length=32", "log.log_every=1", *ar_term]
    straight = prepare_training(load_config("tiny", None, overrides), tmp_path / "a", data=shakespeare_path,
                                init=str(ar_source), show_progress=False)
    straight.train()
    paused = prepare_training(load_config("tiny", None, overrides), tmp_path / "b", data=shakespeare_path,
                              init=str(ar_source), show_progress=False)
    paused.train(stop_after=3)
    resumed = prepare_training(saved_config(tmp_path / "b"), tmp_path / "b", resume=True, show_progress=False)
    resumed.train()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    with (tmp_path / "b" / "log.csv").open() as handle:
        ar_column = [row["train_ar_nll"] for row in csv.DictReader(handle) if row["train_nelbo"]]
    assert len(ar_column) == 6 and all(bool(value) == bool(ar_term) for value in ar_column)


# ----- the autoregressive loss term (adapt.ar_loss_weight) -----

def adaptation_trainer(path, shakespeare_path, ar_source, *overrides: str):
    """A masked run from the tiny AR model (no gradient clipping and fp32 on every CPU: gradients compare linearly)."""
    config = load_config("tiny", None, ["process.name=masked", "optim.max_steps=2", "log.eval_every=0", "log.sample_every=0",
                                        "data.context_length=32", "optim.grad_clip=0", "optim.precision=fp32", *overrides])
    return prepare_training(config, path, data=shakespeare_path, init=str(ar_source), show_progress=False)


def first_step(trainer) -> tuple[float, dict[str, torch.Tensor]]:
    """The reported NELBO of one optimizer step and the gradients it stepped with."""
    gradients, step = {}, trainer.optimizer.step

    def recording_step(*args, **kwargs):
        gradients.update({name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    nelbo, _, _ = trainer.train_step()
    return nelbo, gradients


def test_the_ar_term_is_the_source_models_next_token_nll(tmp_path, shakespeare_path, ar_source):
    """Before any step, the term (times its weight, beside a zero diffusion loss) is the AR source's NLL per token."""
    trainer = adaptation_trainer(tmp_path / "run", shakespeare_path, ar_source, "adapt.ar_loss_weight=0.5")
    source = DiffusionPipeline.from_pretrained(ar_source, precision="fp32")
    x0 = next(trainer.valid_loader.iter_eval_batches(4))
    trainer.model.eval()
    with torch.no_grad():
        reference = source.process.loss(source.model, x0)
        output = trainer.with_ar_term(LossOutput(torch.tensor(0.0), 0.0, 1), x0)
    assert (output.nelbo_sum, output.num_tokens) == (0.0, 1)  # the NELBO stays the diffusion one
    assert trainer.ar_sum == [pytest.approx(reference.nelbo_sum, rel=1e-5), reference.num_tokens]
    assert float(output.loss) == pytest.approx(0.5 * reference.nelbo_sum / reference.num_tokens, rel=1e-5)


def test_the_ar_term_adds_its_weight_times_its_gradient_and_leaves_the_nelbo(tmp_path, shakespeare_path, ar_source):
    steps = {weight: first_step(adaptation_trainer(tmp_path / str(weight), shakespeare_path, ar_source,
                                                   f"adapt.ar_loss_weight={weight}")) for weight in (0, 1, 2)}
    assert steps[0][0] == steps[1][0] == steps[2][0]  # the same diffusion NELBO is reported
    for name, zero in steps[0][1].items():
        one, two = steps[1][1][name], steps[2][1][name]
        torch.testing.assert_close(two - zero, 2 * (one - zero), rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(steps[1][1][name], zero) for name, zero in steps[0][1].items())


def test_at_weight_zero_the_ar_term_is_not_computed(tmp_path, shakespeare_path, ar_source, monkeypatch):
    """Weight 0 trains as a run without the term: same NELBO and parameters after a step, the term never run."""
    before = adaptation_trainer(tmp_path / "before", shakespeare_path, ar_source)
    monkeypatch.setattr(Trainer, "with_ar_term", lambda self, output, x0: output)  # the loss as it was
    expected = before.train_step()[0], {name: p.clone() for name, p in before.model.named_parameters()}
    monkeypatch.undo()

    def never(*args, **kwargs):
        raise AssertionError("the AR term was computed at weight 0")

    monkeypatch.setattr(curriculum, "ar_term", never)
    trainer = adaptation_trainer(tmp_path / "zero", shakespeare_path, ar_source, "adapt.ar_loss_weight=0")
    assert trainer.train_step()[0] == expected[0] and trainer.ar_nll is None
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, expected[1][name]), name


def test_a_log_written_before_the_ar_column_keeps_its_rows_on_resume(tmp_path):
    old = COLUMNS[:COLUMNS.index("train_ar_nll")]  # the columns of a log written before it (and the ones after)
    rows = [old, ("1", "256", "0.1", "1e-3", "3.0", "", "900"), ("2", "512", "0.2", "1e-3", "2.9", "", "950"),
            ("3", "768", "0.3", "1e-3", "2.8", "", "990")]
    (tmp_path / LOG_FILE).write_text("".join(",".join(row) + "\n" for row in rows))
    MetricsLog(tmp_path, resume_step=2).close()
    with (tmp_path / LOG_FILE).open() as handle:
        kept = list(csv.DictReader(handle))
    assert [{**dict.fromkeys(COLUMNS, ""), **dict(zip(old, row))} for row in rows[1:3]] == kept


def test_an_ar_term_without_a_shifted_model_is_refused(tmp_path, shakespeare_path):
    config = load_config("tiny", None, ["process.name=masked", "adapt.ar_loss_weight=0.5", "data.context_length=32"])
    with pytest.raises(DDLMError, match=r"--init AR_MODEL, or set adapt.ar_loss_weight=0$"):
        prepare_training(config, tmp_path / "x", data=shakespeare_path, show_progress=False)
    with pytest.raises(DDLMError, match="adapt.ar_loss_weight"):
        load_config("tiny", None, ["adapt.ar_loss_weight=-1"])
