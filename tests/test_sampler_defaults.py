"""A model's own sampler defaults (``sampler_config.json``): saved and loaded with the model directory, and
used by every front end wherever the caller leaves an option unset."""

from __future__ import annotations

import json
import shutil

import pytest

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.eval.report import EvalSettings, sample_metrics
from ddlm.pipeline.files import SAMPLER_FILE
from ddlm.samplers import SamplerOptions
from tests.servers import trained_models

DEFAULTS = {"policy": "confidence", "steps": 6, "temperature": 0.5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny masked model of the server tests, saved again with sampler defaults."""
    directory = tmp_path_factory.mktemp("defaults") / "model"
    pipe = DiffusionPipeline.from_pretrained(trained_models()["tiny-masked"], precision="fp32")
    pipe.sampler_defaults = dict(DEFAULTS)
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipe(model_dir):
    return DiffusionPipeline.from_pretrained(model_dir, precision="fp32")


def tokens(pipe: DiffusionPipeline, options: SamplerOptions | None = None, **keywords) -> list[list[int]]:
    output = pipe.sample("ab", options, num_samples=2, length=12, **keywords)
    return output.tokens.tolist()


def test_the_defaults_are_saved_and_loaded_with_the_model_directory(model_dir, pipe):
    assert json.loads((model_dir / SAMPLER_FILE).read_text()) == DEFAULTS
    assert pipe.sampler_defaults == DEFAULTS
    assert pipe.sampler_options() == SamplerOptions(**DEFAULTS)


def test_unset_options_take_the_model_defaults_and_set_ones_replace_them(pipe):
    explicit = SamplerOptions(**DEFAULTS, seed=0)
    assert tokens(pipe, seed=0) == tokens(pipe, explicit)
    assert pipe.sample("ab", length=12, seed=0).model_calls == DEFAULTS["steps"]
    assert tokens(pipe, seed=0, steps=3) == tokens(pipe, SamplerOptions.build(explicit, steps=3))
    # a SamplerOptions passed whole is taken as it is: the declared defaults, not the model's
    plain = pipe.sample("ab", SamplerOptions(seed=0), length=12)
    assert plain.model_calls > DEFAULTS["steps"]


def test_saving_without_defaults_removes_a_stale_file(model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    pipe = DiffusionPipeline.from_pretrained(copy)
    pipe.sampler_defaults = {}
    pipe.save_pretrained(copy)
    assert not (copy / SAMPLER_FILE).exists()
    assert DiffusionPipeline.from_pretrained(copy).sampler_options() == SamplerOptions()


@pytest.mark.parametrize("content, message", [
    ({"policy": "sideways"}, "policy"),
    ({"seed": 1}, "cannot fix the seed"),
    ({"method": "euler"}, "has no option method"),
    ({"steps": 0}, "steps"),
])
def test_a_bad_sampler_config_is_refused_with_the_file_named(model_dir, tmp_path, content, message):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / SAMPLER_FILE).write_text(json.dumps(content))
    with pytest.raises(DDLMError, match=message) as raised:
        DiffusionPipeline.from_pretrained(copy)
    assert SAMPLER_FILE in str(raised.value)


def test_the_command_line_takes_the_model_defaults_under_its_flags(model_dir, pipe, capsys):
    def cli_texts(*flags: str) -> list[str]:
        assert main(["sample", "--model", str(model_dir), "--prompt", "ab", "--length", "12", "-n", "2", "--seed", "0",
                     "--precision", "fp32", "--format", "jsonl", "--no-progress", *flags]) == 0
        return [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]

    assert cli_texts() == pipe.generate("ab", num_samples=2, length=12, seed=0)
    assert cli_texts("--steps", "3") == pipe.generate("ab", num_samples=2, length=12, seed=0, steps=3)


def test_eval_samples_with_each_model_defaults_under_the_options_set(pipe):
    settings = EvalSettings(metrics=("samples",), num_samples=1, sampler={"seed": 0, "steps": 4})
    reported = sample_metrics(pipe, None, settings)["sampler"]
    assert (reported["policy"], reported["temperature"], reported["steps"]) == ("confidence", 0.5, 4)


def test_the_server_and_the_page_start_from_the_model_defaults(model_dir):
    pytest.importorskip("fastapi", reason="the app extra is not installed")
    from fastapi.testclient import TestClient

    from ddlm.app.limits import Limits
    from ddlm.app.server import create_app
    from ddlm.app.service import Models
    from ddlm.app.api import Server
    from ddlm.app.ui import Page, control_values

    models = Models.load([str(model_dir), str(trained_models()["tiny-masked"])])
    assert control_values(models.get(None))["policy"] == "confidence"
    limits = Limits(max_samples=2, max_length=24, max_steps=64, max_seconds=30, workers=1, queue_size=2)
    page = Page(Server(models, limits))
    blocks = page.build()  # the controls show the first model's defaults; choosing another shows its own
    first_steps = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "option-steps")
    assert first_steps.value == DEFAULTS["steps"] and f"default {DEFAULTS['steps']})" in first_steps.info
    shown = dict(zip(page.option_names, page.switch_model("tiny-masked", "ab", "", 12)[3:]))
    assert shown["policy"]["value"] == "ancestral" and shown["temperature"]["value"] == 1.0
    assert f"default {SamplerOptions().steps})" in shown["steps"]["info"]  # the help text names the model's default
    shown = dict(zip(page.option_names, page.switch_model("model", "ab", "", 12)[3:]))
    assert shown["policy"]["value"] == "confidence" and shown["temperature"]["value"] == 0.5
    assert "default 0.5" in shown["temperature"]["info"] and "default confidence" in shown["policy"]["info"]
    with TestClient(create_app(models, limits, web_page=False)) as client:
        card = client.get("/v1/models").json()["models"][0]
        assert card["sampler_defaults"]["policy"] == "confidence"
        answer = client.post("/v1/generate", json={"prompt": "ab", "length": 12, "seed": 0}).json()
        assert answer["options"]["policy"] == "confidence" and answer["model_calls"] == DEFAULTS["steps"]
        changed = client.post("/v1/generate", json={"prompt": "ab", "length": 12, "seed": 0, "steps": 3}).json()
        assert changed["options"]["steps"] == 3 and changed["model_calls"] == 3
