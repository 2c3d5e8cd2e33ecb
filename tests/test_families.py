"""Method families as units and options declared once.

Every sampler option is offered by the command line, the API's schema and the web page with the same
name, range and help text, all read from its one declaration; and a family registered from this file
alone (a process, a sampler and an option of its own) is trained, sampled, loaded and served.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the app extra is not installed")
import gradio as gr  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ddlm import DDLMError, DiffusionPipeline  # noqa: E402 (the public names)
from ddlm.app.limits import Limits  # noqa: E402
from ddlm.app.server import create_app  # noqa: E402
from ddlm.app.service import Models  # noqa: E402
from ddlm.app.ui import option_inputs  # noqa: E402
from ddlm.cli import add_sampler_flags, main  # noqa: E402
from ddlm.families import (  # noqa: E402
    FAMILIES,
    Family,
    get_family,
    load_plugins,
    offered_options,
    option_help,
    register_family,
)
from ddlm.processes import MaskedDiffusion  # noqa: E402
from ddlm.samplers import SamplerOptions, masked_steps  # noqa: E402
from ddlm.schema import DeclaredOption, option  # noqa: E402

LIMITS = Limits(max_samples=2, max_length=24, max_steps=64, max_seconds=30, workers=1, queue_size=2)


# ----- one declaration, three front ends -----


def cli_actions() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    add_sampler_flags(parser)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def schema_properties() -> dict[str, dict]:
    with TestClient(create_app(Models.load(["shakespeare"]), LIMITS, web_page=False)) as client:
        return client.get("/openapi.json").json()["components"]["schemas"]["GenerateBody"]["properties"]


def web_controls() -> dict[str, gr.components.Component]:
    with gr.Blocks():
        return option_inputs(LIMITS.max_steps, {declared.name for declared in offered_options()})


def test_every_option_has_one_name_range_and_help_on_the_command_line_the_api_and_the_page():
    actions, properties, controls = cli_actions(), schema_properties(), web_controls()
    for declared in offered_options():
        name, bounds, text = declared.name, declared.option.bounds, option_help(declared)
        action = actions[name]
        assert action.option_strings == [declared.flag] and action.help.startswith(text)
        assert properties[name]["description"] == text
        assert properties[name].get("enum") == (list(declared.option.choices) if declared.option.choices else None)
        low_key, high_key = ("exclusiveMinimum", "exclusiveMaximum") if bounds else (None, None)
        if bounds is not None and bounds.low is not None:
            assert properties[name][low_key if bounds.low_open else "minimum"] == bounds.low
        if bounds is not None and bounds.high is not None:
            assert properties[name][high_key if bounds.high_open else "maximum"] == bounds.high
        if name == "seed":  # the page's seed box sits beside the sample count (see test_serve_browser)
            continue
        control = controls[name]
        assert control.label == name.replace("_", " ") and control.info.startswith(text)
        if declared.option.choices:
            assert [value for _, value in control.choices if value != "off"] == list(declared.option.choices)
        if isinstance(control, gr.Slider):  # a slider's ends lie in the range, or are the 'off' value
            assert bounds.contains(control.maximum) or control.maximum == declared.option.off
            assert bounds.contains(control.minimum) or control.minimum == declared.option.off


def test_a_bad_value_names_its_field_in_every_front_end():
    with pytest.raises(DDLMError) as error:
        SamplerOptions.build(top_p=1.5)
    assert error.value.field == "top_p" and "in (0, 1]" in str(error.value)
    with pytest.raises(DDLMError) as error:
        get_family("ar").check(SamplerOptions(policy="confidence"))
    assert error.value.field == "policy"


# ----- a family registered from a test -----


@dataclass(frozen=True)
class ToyOptions:
    """The toy family's own option."""

    sharpness: float = option(1.0, "divide the temperature by this", low=0, low_open=True, slider_max=4,
                              slider_step=0.5)


class ToyDiffusion(MaskedDiffusion):
    """Masked diffusion under another name: enough to show that nothing else needs to know the name."""

    name = "toy"


def toy_steps(model, process, canvas, options, first_row=0):
    """The masked sampler at the temperature the toy option sharpens."""
    own = ToyOptions(**options.extra)
    sharpened = dataclasses.replace(options, temperature=options.temperature / own.sharpness, extra={})
    return masked_steps(model, process, canvas, sharpened, first_row)


@pytest.fixture
def toy_family():
    family = register_family(Family("toy", ToyDiffusion.from_config, toy_steps, options=("policy",),
                                    own_options=ToyOptions))
    yield family
    FAMILIES.pop("toy")


@pytest.fixture
def toy_model(toy_family, tmp_path, shakespeare_path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    out = tmp_path / "toy"
    assert main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), "optim.max_steps=2", "process.name=toy"]) == 0
    return out


def test_a_family_registered_from_a_test_trains_samples_and_is_served(toy_model, capsys):
    pipe = DiffusionPipeline.from_pretrained(toy_model)
    assert pipe.process.name == "toy"
    sharp = pipe.generate(length=12, steps=6, seed=3, sharpness=1e6)
    assert sharp == pipe.generate(length=12, steps=6, seed=3, temperature=0)  # infinitely sharp: greedy
    with pytest.raises(DDLMError) as error:
        pipe.generate(length=12, steps=6, sharpness=0)
    assert error.value.field == "sharpness"
    with pytest.raises(DDLMError, match="the toy sampler has no option method"):
        pipe.generate(length=12, steps=6, method="euler")

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--sharpness" in capsys.readouterr().out
    assert main(["sample", "--model", str(toy_model), "--length", "12", "--steps", "6", "--seed", "3",
                 "--sharpness", "1e6", "--no-progress", "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == sharp[0]

    with TestClient(create_app(Models.load([str(toy_model)]), LIMITS, web_page=False)) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateBody"]["properties"]
        assert schema["sharpness"]["description"] == option_help(DeclaredOption(
            "sharpness", float, False, 1.0, dataclasses.fields(ToyOptions)[0].metadata["ddlm.option"]))
        answer = client.post("/v1/generate", json={"length": 12, "steps": 6, "seed": 3, "sharpness": 1e6})
        assert answer.status_code == 200 and answer.json()["texts"] == sharp
        assert answer.json()["options"]["sharpness"] == 1e6
        refused = client.post("/v1/generate", json={"length": 12, "steps": 6, "sharpness": -1})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "sharpness"
    assert "sharpness" in web_controls()


def installed_plugin(root: Path, module: str, body: str) -> None:
    """A package on ``root`` (put on sys.path) naming ``module`` under the ddlm.families entry points."""
    (root / f"{module}.py").write_text(body, encoding="utf-8")
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[ddlm.families]\n{module} = {module}\n", encoding="utf-8")


def test_an_installed_plugin_registers_its_family_and_a_broken_one_is_one_line(tmp_path, monkeypatch):
    installed_plugin(tmp_path, "ddlm_plugin_toy", "from ddlm.families import Family, register_family\n"
                     "from ddlm.processes import MaskedDiffusion\n"
                     "from ddlm.samplers import masked_steps\n"
                     "register_family(Family('plugin-toy', MaskedDiffusion.from_config, masked_steps))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins()
        assert get_family("plugin-toy").sampler is masked_steps
    finally:
        FAMILIES.pop("plugin-toy", None)
    installed_plugin(tmp_path, "ddlm_plugin_broken", "raise RuntimeError('no such thing')\n")
    with pytest.raises(DDLMError, match="plug-in 'ddlm_plugin_broken'.*no such thing; fix or uninstall it"):
        load_plugins()
