"""The named training configurations shipped in ``ddlm.presets``, and loading a run's configuration."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ddlm.errors import DDLMError
from ddlm.families import check_process_settings
from ddlm.training.config.schema import RunConfig


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("ddlm.presets").iterdir() if p.name.endswith(".yaml"))


def preset_descriptions() -> dict[str, str]:
    """Each preset's name and the first line of its leading comment."""
    descriptions = {}
    for name in preset_names():
        first = resources.files("ddlm.presets").joinpath(f"{name}.yaml").read_text().splitlines()[0]
        descriptions[name] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return descriptions


def load_config(preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then a preset or a YAML file, then overrides."""
    if preset and config_file:
        raise DDLMError("give either --preset or --config, not both")
    values: dict[str, Any] = {}
    if preset:
        if preset not in preset_names():
            raise DDLMError(f"unknown preset {preset!r}; choose one of {preset_names()}")
        values = yaml.safe_load(resources.files("ddlm.presets").joinpath(f"{preset}.yaml").read_text())
    elif config_file:
        path = Path(config_file)
        if not path.is_file():
            raise DDLMError(f"config file {path} not found; pass the path of a YAML file")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise DDLMError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise DDLMError(f"config file {path} must hold a mapping of sections (tokenizer, data, model, ...)")
    config = RunConfig.from_dict(values).with_overrides(overrides or [])
    config.validate()
    set_keys = (item.partition("=")[0].strip() for item in overrides or [])
    check_process_settings(config.process.name, [key[len("process."):] for key in set_keys if key.startswith("process.")])
    return config
