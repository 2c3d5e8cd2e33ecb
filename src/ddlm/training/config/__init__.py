"""Run configuration: the schema (``schema``), values from text and YAML (``coercion``), each
numeric setting's range (``ranges``), and the presets and YAML files a run starts from (``presets``)."""

from ddlm.training.config.coercion import duration_seconds, flatten, setting_type
from ddlm.training.config.presets import load_config, preset_descriptions, preset_names
from ddlm.training.config.ranges import BOUNDS, Bounds
from ddlm.training.config.schema import (
    DEFAULT_MAX_STEPS,
    AdaptSettings,
    DataSettings,
    InitSettings,
    LogSettings,
    OptimSettings,
    ProcessSettings,
    RunConfig,
    TokenizerSettings,
)

__all__ = [
    "BOUNDS", "DEFAULT_MAX_STEPS", "AdaptSettings", "Bounds", "DataSettings", "InitSettings", "LogSettings",
    "OptimSettings", "ProcessSettings", "RunConfig", "TokenizerSettings", "duration_seconds", "flatten",
    "load_config", "preset_descriptions", "preset_names", "setting_type",
]
