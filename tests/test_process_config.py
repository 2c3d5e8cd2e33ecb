"""The process and model sections of a run configuration, from YAML or the command line to the
objects that use them and into the model directory."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.families import FAMILIES, build_process
from ddlm.processes import SCHEDULES, Vocabulary, build_schedule
from ddlm.tokenizers import build_tokenizer
from ddlm.training import RunConfig, load_config
from ddlm.training.trainer import build_model, build_run_process

TOKENIZER = build_tokenizer("char", texts=["a small text for a char tokenizer"])
VOCAB = Vocabulary.of(TOKENIZER)
NON_DEFAULT = {"eps": 0.01, "exponent": 3.0, "sigma_min": 1e-3, "sigma_max": 10.0}


def run_schedule(*overrides: str, preset: str = "tiny") -> dict:
    """The schedule (as recorded in config.json) of the process a run with these overrides builds."""
    return build_run_process(load_config(preset, overrides=list(overrides)), TOKENIZER).to_dict()["schedule"]


@pytest.mark.parametrize(("process", "expected"), [
    ("masked", {"name": "linear", "eps": 0.0}),
    ("sedd-absorb", {"name": "linear", "eps": 1e-3}),
    ("sedd-uniform", {"name": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0}),
])
@pytest.mark.parametrize("preset", ["tiny", "char-small", "bpe-small"])
def test_each_process_trains_with_its_papers_schedule_by_default(process, expected, preset):
    assert run_schedule(f"process.name={process}", preset=preset) == expected


def test_schedule_and_parameters_from_the_command_line():
    schedule = run_schedule("process.schedule.name=polynomial", "process.schedule.exponent=3")
    assert schedule == {"name": "polynomial", "exponent": 3.0}
    process = build_run_process(load_config("tiny", overrides=["process.schedule.name=polynomial",
                                                               "process.schedule.exponent=3"]), TOKENIZER)
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(process.schedule.weight(t), 3 / t)  # w = k / t


def test_a_parameter_alone_keeps_the_process_default_schedule():
    assert run_schedule("process.name=sedd-uniform", "process.schedule.sigma_max=5") == {
        "name": "geometric", "sigma_min": 1e-4, "sigma_max": 5.0}
    assert run_schedule("process.name=sedd-absorb", "process.schedule.eps=0.01") == {"name": "linear", "eps": 0.01}


def test_schedule_from_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("process: {name: sedd-absorb, schedule: {name: geometric, sigma_min: 1e-4, sigma_max: 20}}\n")
    config = load_config(config_file=path)
    assert config.process.schedule == {"name": "geometric", "sigma_min": "1e-4", "sigma_max": 20}  # as YAML reads it
    assert build_run_process(config, TOKENIZER).to_dict()["schedule"] == {
        "name": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0}


def test_the_bare_name_form_still_works():
    """``schedule: linear`` in presets, YAML files and the run.json of earlier runs."""
    assert run_schedule("process.schedule=cosine") == {"name": "cosine"}
    old_run = RunConfig.from_dict({"process": {"name": "masked", "schedule": "polynomial"}})
    assert old_run.process.schedule == {"name": "polynomial"}
    assert RunConfig.from_dict(old_run.to_dict()).to_dict() == old_run.to_dict()


def test_a_whole_schedule_replaces_the_previous_one():
    config = load_config("tiny", overrides=["process.schedule.name=polynomial", "process.schedule.exponent=3",
                                            "process.schedule=geometric"])
    assert config.process.schedule == {"name": "geometric"}


@pytest.mark.parametrize(("name", "parameter"), [
    (name, field.name) for name, cls in SCHEDULES.items() for field in fields(cls)
])
def test_every_schedule_parameter_is_settable_and_recorded(name, parameter, tmp_path):
    process_name = "sedd-absorb" if name in ("linear", "geometric") else "masked"
    value = NON_DEFAULT[parameter]
    overrides = [f"process.name={process_name}", f"process.schedule.name={name}",
                 f"process.schedule.{parameter}={value}"]
    config = load_config("tiny", overrides=overrides)
    process = build_run_process(config, TOKENIZER)
    assert getattr(process.schedule, parameter) == value
    DiffusionPipeline(build_model(config, TOKENIZER, process), TOKENIZER, process).save_pretrained(tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["process"]["schedule"]
    assert recorded["name"] == name and recorded[parameter] == value
    assert DiffusionPipeline.from_pretrained(tmp_path, device="cpu").process.to_dict() == process.to_dict()


@pytest.mark.parametrize(("overrides", "message"), [
    (["process.schedule.name=cosine", "process.schedule.exponent=2"], "has no parameter 'exponent'"),
    (["process.schedule.name=polynomial", "process.schedule.exponent=two"], "exponent must be a number"),
    (["process.schedule.name=polynomial", "process.schedule.exponent=0"], "exponent must be positive"),
    (["process.schedule.eps=1"], r"eps must be in \[0, 1\)"),
    (["process.name=sedd-uniform", "process.schedule.sigma_min=30"], "sigma_min < sigma_max"),
    (["process.name=sedd-uniform", "process.schedule.name=cosine"], "finite total noise"),
    (["process.name=sedd-absorb", "process.schedule.eps=0"], "finite total noise"),
    (["process.schedule.name=quadratic"], "unknown schedule 'quadratic'"),
])
def test_bad_schedules_are_refused_with_the_fix(overrides, message):
    config = load_config("tiny", overrides=overrides)
    with pytest.raises(DDLMError, match=message):
        build_run_process(config, TOKENIZER)


@pytest.mark.parametrize(("override", "message"), [
    ("process.eps.low=1", "process.eps is not a mapping"),
    ("process.schedule=[1, 2]", "must be a name or a mapping"),
    ("model.context_length=64", "taken from data.context_length"),
    ("model.vocab_size=100", "taken from the tokenizer"),
    ("model.causal=true", "taken from process.name"),
    ("model.n_heads=3", "not divisible"),
])
def test_bad_settings_are_refused_before_training(override, message):
    with pytest.raises(DDLMError, match=message):
        load_config("tiny", overrides=[override])


@pytest.mark.parametrize(("overrides", "message"), [
    (["process.name=masked", "process.clip_min=0.3"], "process.clip_min is not a setting of the masked process"),
    # the default process is masked: before, this trained a masked model and ignored the block size
    (["process.block_size=8"], "process.block_size is not a setting of the masked process"),
    (["process.name=ar", "process.estimator=count"], "process.estimator is not a setting of the ar process"),
    (["process.name=sedd-absorb", "process.estimator=count"], "process.estimator is not a setting of the sedd-absorb"),
])
def test_a_process_setting_the_chosen_process_never_reads_is_refused(overrides, message):
    with pytest.raises(DDLMError, match=message):
        load_config("tiny", overrides=overrides)


@pytest.mark.parametrize("overrides", [
    ["process.name=block", "process.block_size=8", "process.clip_min=0.3", "process.clip_max=0.8"],
    ["process.name=masked", "process.schedule.name=polynomial", "process.schedule.exponent=3", "process.estimator=count"],
    ["process.name=sedd-uniform", "process.eps=0.01", "process.antithetic=false"],
    ["process.name=ar"],
])
def test_the_settings_a_process_reads_are_accepted(overrides):
    assert load_config("tiny", overrides=overrides).process.name == overrides[0].partition("=")[2]


class RecordingDict(dict):
    """A process configuration that remembers which keys were read."""

    def __init__(self, *args, **keywords):
        super().__init__(*args, **keywords)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", ["masked", "block", "sedd-absorb", "sedd-uniform", "ar"])
def test_each_family_declares_exactly_the_process_keys_its_build_reads(name):
    config = RecordingDict(name=name)
    FAMILIES[name].build(config, Vocabulary.of(TOKENIZER))
    assert config.read - {"name"} == set(FAMILIES[name].process_keys)


def test_the_model_section_is_the_backbone_config_with_the_rest_filled_in():
    config = load_config("tiny", overrides=["model.d_model=64", "model.rope_theta=500", "data.context_length=48"])
    model = build_model(config, TOKENIZER, build_run_process(config, TOKENIZER))
    assert model.config.vocab_size == TOKENIZER.vocab_size and model.config.context_length == 48
    assert model.config.rope_theta == 500 and model.embed.weight.shape == (TOKENIZER.vocab_size, 64)
    assert model.blocks[0].mlp.down.in_features == 192  # the default width follows the new d_model (8/3 * 64, to 64s)
    assert set(config.to_dict()["model"]).isdisjoint({"vocab_size", "context_length", "causal"})


def test_model_directories_written_before_the_shared_schedules_still_load():
    """config.json of earlier versions: masked linear without eps, SEDD's log-linear noise with it."""
    masked = build_process({"name": "masked", "schedule": {"name": "linear"}, "eps": 1e-3}, VOCAB)
    sedd = build_process({"name": "sedd-absorb", "schedule": {"name": "linear", "eps": 0.001}}, VOCAB)
    t = torch.linspace(0.01, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(masked.schedule.alpha(t), 1 - t)
    torch.testing.assert_close(sedd.sigma_bar(t), -torch.log1p(-(1 - 1e-3) * t))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_both_views_of_a_schedule_agree(name):
    """alpha = exp(-sigma_bar), sigma = d sigma_bar / dt, and w = -alpha' / (1 - alpha), for every schedule."""
    schedule = build_schedule(name)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64, requires_grad=True)
    (derivative,) = torch.autograd.grad(schedule.total(t).sum(), t)
    t = t.detach()
    torch.testing.assert_close(schedule.alpha(t), torch.exp(-schedule.total(t)), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.rate(t), derivative, rtol=1e-9, atol=0)
