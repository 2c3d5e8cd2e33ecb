"""ddlm: train, sample, evaluate and visualise discrete diffusion language models."""

__version__ = "0.1.0"

from ddlm.pipeline import DiffusionPipeline  # noqa: E402

__all__ = ["DiffusionPipeline", "__version__"]
