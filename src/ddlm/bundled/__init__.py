"""Pretrained models installed with the package, by name: ``DiffusionPipeline.from_pretrained("shakespeare")``.

Each bundled model is a complete model directory inside this package (``config.json``,
``model.safetensors`` in bf16, the tokenizer files, ``training_summary.json``, the sampler defaults
its figures were measured with, ``sampler_config.json``, and a model card, ``README.md``).
``experiments/train_bundled.py`` trains and exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DESCRIPTIONS = {
    "shakespeare": "masked diffusion over characters, adapted from shakespeare-ar in 170 CPU-minutes (the default model)",
    "shakespeare-ar": "autoregressive baseline on the same backbone and data (the default judge of `ddlm eval`)",
    "shakespeare-block": "block diffusion (blocks of 4) adapted from shakespeare-ar in 60 CPU-minutes",
}
DEFAULT_MODEL = "shakespeare"
DEFAULT_JUDGE = "shakespeare-ar"
SERVED_FIRST = "shakespeare-block"  # the web app's default: the diffusion model with the best samples (its card)


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    path: Path

    @property
    def installed(self) -> bool:
        """Whether the model's weights are present (a source checkout may lack them)."""
        return (self.path / "model.safetensors").is_file()


def bundled_models() -> list[BundledModel]:
    """Every bundled model, installed or not, in a stable order."""
    root = Path(str(resources.files(__name__)))
    return [BundledModel(name, text, root / name) for name, text in DESCRIPTIONS.items()]


def bundled_model_path(name: str) -> Path | None:
    """The directory of the bundled model ``name``, or None if there is no such bundled model."""
    for model in bundled_models():
        if model.name == name:
            return model.path
    return None
