"""The transformer backbone shared by every process."""

from ddlm.model.config import ModelConfig
from ddlm.model.transformer import KVCache, NoiseLevelMissing, Transformer

__all__ = ["KVCache", "ModelConfig", "NoiseLevelMissing", "Transformer"]
