"""ddlm: train, sample, evaluate and visualise discrete diffusion language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddlm.errors import DDLMError

__version__ = "0.1.0"
__all__ = ["DDLMError", "DiffusionPipeline", "__version__"]

if TYPE_CHECKING:
    from ddlm.pipeline import DiffusionPipeline


def __getattr__(name: str) -> Any:
    """``DiffusionPipeline`` loads (with torch) on first use, so that ``ddlm`` starts fast."""
    if name == "DiffusionPipeline":
        from ddlm.pipeline import DiffusionPipeline

        return DiffusionPipeline
    raise AttributeError(f"module 'ddlm' has no attribute {name!r}")
