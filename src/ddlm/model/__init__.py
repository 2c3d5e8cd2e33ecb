"""The transformer backbone shared by every process."""

from ddlm.model.config import ModelConfig
from ddlm.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
