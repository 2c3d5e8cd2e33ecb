"""Bundled models by name, the default model and judge, and the checks every model directory passes on loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddlm import DiffusionPipeline
from ddlm.bundled import DEFAULT_JUDGE, DEFAULT_MODEL, SERVED_FIRST, bundled_models
from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, shakespeare_text) -> Path:
    """A tiny masked model trained for a few steps on an excerpt of the built-in corpus."""
    root = tmp_path_factory.mktemp("bundled")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:20000], encoding="utf-8")
    out = root / "run"
    assert main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out), "--no-progress",
                 "--cache-dir", str(root / "cache"), "optim.max_steps=4"]) == 0
    return out


def copy_model(source: Path, target: Path) -> Path:
    """The model directory files of ``source`` (not the checkpoint) copied into ``target``."""
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "training_summary.json"):
        shutil.copy(source / name, target / name)
    return target


def test_every_bundled_model_is_installed_and_samples(capsys):
    for model in bundled_models():
        assert model.installed, f"{model.name}: no weights in {model.path}"
        pipe = DiffusionPipeline.from_pretrained(model.name)
        text = pipe.generate("ROMEO:", length=24, steps=8, seed=0)[0]
        assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
        card = (model.path / "README.md").read_text(encoding="utf-8")
        assert "held-out" in card and "experiments/train_bundled.py" in card
        assert pipe.summary["held_out_nelbo"] > 0



def test_the_web_app_serves_every_bundled_model_the_diffusion_model_with_the_best_samples_first():
    pytest.importorskip("fastapi", reason="the app extra is not installed")
    from ddlm.app.service import Models

    models = Models.load([], device="cpu")
    assert models.names[0] == SERVED_FIRST and set(models.names) == {model.name for model in bundled_models()}
    real_words = {name: models.get(name).pipe.summary["real_words_t08"] for name in models.names
                  if models.get(name).pipe.process.name != "ar"}
    assert max(real_words, key=real_words.get) == SERVED_FIRST  # the figure of its model card

def test_each_bundled_model_ships_the_sampler_defaults_its_recipe_measured_with(monkeypatch):
    """The figures of a model card are measured with train_bundled.SAMPLER_DEFAULTS; the model samples with them."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    import train_bundled

    assert set(train_bundled.SAMPLER_DEFAULTS) == {model.name for model in bundled_models()}
    for model in bundled_models():
        defaults = train_bundled.SAMPLER_DEFAULTS[model.name]
        assert DiffusionPipeline.from_pretrained(model.name).sampler_defaults == defaults
        assert train_bundled.sampler_words(defaults) in (model.path / "README.md").read_text(encoding="utf-8")


def test_the_bundled_models_share_one_vocabulary_so_the_ar_model_judges_the_masked_one():
    masked = DiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    judge = DiffusionPipeline.from_pretrained(DEFAULT_JUDGE)
    assert masked.process.name == "masked" and judge.process.name == "ar"
    assert masked.tokenizer.fingerprint() == judge.tokenizer.fingerprint()


def test_sample_without_a_model_uses_the_bundled_one_and_says_so(capsys):
    assert main(["sample", "--length", "16", "--steps", "4", "--seed", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"bundled model {DEFAULT_MODEL!r}" in captured.err
    assert captured.out.strip()


def test_models_lists_every_bundled_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for model in bundled_models():
        assert model.name in out and model.description in out


def test_a_local_directory_wins_over_a_bundled_name(tiny_model, tmp_path, monkeypatch):
    copy_model(tiny_model, tmp_path / DEFAULT_MODEL)
    monkeypatch.chdir(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    assert pipe.model.config.d_model == 32  # the tiny preset, not the bundled model


def test_a_missing_directory_says_so_before_mentioning_the_hub(tmp_path):
    with pytest.raises(DDLMError, match=r"^model directory .*nope does not exist"):
        DiffusionPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(DDLMError, match=r"^model directory someone/nope does not exist"):
        DiffusionPipeline.from_pretrained("someone/nope")  # the tests run with HF_HUB_OFFLINE=1


def test_a_missing_run_folder_or_a_misspelt_bundled_name_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # runs/NAME has the form of a Hub id, but its first part is a folder here
    with pytest.raises(DDLMError) as error:
        DiffusionPipeline.from_pretrained("runs/nope")
    assert str(error.value).startswith("model directory runs/nope does not exist; pass") and "Hub" not in str(error.value)
    with pytest.raises(DDLMError, match=r"^model directory shakespear does not exist; did you mean 'shakespeare'\? "):
        DiffusionPipeline.from_pretrained("shakespear")


def test_a_tokenizer_from_another_model_with_the_same_size_is_refused(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "swapped")
    config = json.loads((model / "tokenizer_config.json").read_text())
    chars = config["chars"]
    swapped = CharTokenizer([chars[1], chars[0], *chars[2:]])  # same size, two characters exchanged
    swapped.save(model)
    with pytest.raises(DDLMError, match="not the ones this model was trained with"):
        DiffusionPipeline.from_pretrained(model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tiny_model, tmp_path, bad):
    model = copy_model(tiny_model, tmp_path / "broken")
    weights = load_file(str(model / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = bad
    save_file(weights, str(model / "model.safetensors"))
    with pytest.raises(DDLMError, match=f"NaN or infinite weights \\({name}"):
        DiffusionPipeline.from_pretrained(model)


def test_bf16_weights_load_into_the_fp32_model(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "bf16")
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(model / "model.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(model)
    loaded = pipe.model.state_dict()
    for name, tensor in weights.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor.to(torch.bfloat16).float())


def test_the_pipeline_describes_itself(tiny_model):
    text = repr(DiffusionPipeline.from_pretrained(tiny_model))
    assert text.startswith("DiffusionPipeline(process='masked'") and "parameters=" in text and "context_length=32" in text


def test_no_arguments_prints_help_and_version_is_known(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("ddlm ")


def test_presets_are_listed_with_a_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("tiny ") for line in lines)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


def test_the_bundled_recipe_ships_the_mean_of_the_kept_ema_weights(tiny_model, tmp_path, monkeypatch):
    """experiments/train_bundled.py keeps the EMA weights of chosen checkpoints and exports their mean."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    import train_bundled

    run = shutil.copytree(tiny_model, tmp_path / "run")
    train_bundled.keep_ema_weights(run, 4)
    kept = load_file(run / train_bundled.KEPT / "step-4.safetensors")
    pipe = DiffusionPipeline.from_pretrained(run, device="cpu", precision="fp32")
    assert kept.keys() == pipe.model.state_dict().keys()
    assert all(torch.equal(kept[key], value) for key, value in pipe.model.state_dict().items())  # the exported EMA
    save_file({key: 3 * value for key, value in kept.items()}, run / train_bundled.KEPT / "step-10.safetensors")
    assert train_bundled.average_kept_weights(pipe, run) == [4, 10]  # by step, not by name
    for key, value in pipe.model.state_dict().items():
        torch.testing.assert_close(value, 2 * kept[key])
