"""The transformer backbone shared by every process."""

from ddlm.model.config import ModelConfig
from ddlm.model.transformer import KVCache, NoiseLevelMissing, TokenMemory, Transformer, shift_right

__all__ = ["KVCache", "ModelConfig", "NoiseLevelMissing", "TokenMemory", "Transformer", "shift_right"]
