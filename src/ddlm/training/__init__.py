"""Training: configuration, the trainer, checkpoints."""

from ddlm.training.config import RunConfig, load_config, preset_descriptions, preset_names
from ddlm.training.run import prepare_training, saved_config
from ddlm.training.trainer import Trainer

__all__ = ["RunConfig", "Trainer", "load_config", "prepare_training", "preset_descriptions", "preset_names", "saved_config"]
