"""DiffusionPipeline: model + tokenizer + process + sampler. ``files``: the model directory on disk and the
Hub; ``canvas``: prompts, infill templates and suffixes as canvas rows; ``streaming``: the stream of steps,
``sample`` and ``generate``; ``core``: the class that joins them."""

from ddlm.pipeline.core import DiffusionPipeline
from ddlm.pipeline.files import CONFIG_FILE, SUMMARY_FILE, WEIGHTS_FILE, read_json, resolve_model_directory
from ddlm.pipeline.streaming import DEFAULT_BATCH_SIZE

__all__ = ["CONFIG_FILE", "DEFAULT_BATCH_SIZE", "SUMMARY_FILE", "WEIGHTS_FILE", "DiffusionPipeline", "read_json",
           "resolve_model_directory"]
