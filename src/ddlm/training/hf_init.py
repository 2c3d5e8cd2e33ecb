"""A run that starts from a Hugging Face causal LM (``ddlm train --init gpt2-dir process.name=block``).

The :class:`Trainer` as it is, over the source's own network under the shift and ddlm's attention
patterns (:class:`ddlm.hf.HFCausalDiffusionModel`) instead of a ddlm backbone. The exported model
directory is the network in its ``transformers`` format, its config.json recording the process,
start id, context length and mask id, with the tokenizer (mask and padding tokens added) and
``training_summary.json``: what ``DiffusionPipeline.from_pretrained`` reads back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ddlm.data import TokenizedCorpus
from ddlm.errors import DDLMError
from ddlm.fileio import write_json_atomic
from ddlm.hf.causal import HFCausalDiffusionModel
from ddlm.pipeline import SUMMARY_FILE, DiffusionPipeline
from ddlm.training.config import RunConfig
from ddlm.training.trainer import Trainer


def parameters_once(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters, a tied one (input and output embeddings) under its first name only: what a
    checkpoint keeps, since safetensors stores no tensor twice."""
    return dict(model.named_parameters())


class HFInitTrainer(Trainer):
    """The :class:`Trainer` over ``source``'s network (a Hugging Face causal LM, adapted or not)."""

    def __init__(self, config: RunConfig, source: DiffusionPipeline, train_corpus: TokenizedCorpus,
                 valid_corpus: TokenizedCorpus | None, out_dir: str | Path, device: str = "auto",
                 show_progress: bool = True):
        self.source_model: HFCausalDiffusionModel | None = source.model
        super().__init__(config, source.tokenizer, train_corpus, valid_corpus, out_dir, device, show_progress)
        self.source_model = None  # its weights are in the model now

    def new_model(self) -> HFCausalDiffusionModel:
        """A copy of the source's network within the run's context, recording how it is run (saved with it)."""
        model = copy.deepcopy(self.source_model).with_context(self.config.data.context_length)
        model.record_adaptation(self.process.to_dict(), self.tokenizer.mask_id, self.config.init.source)
        return model

    def export(self, summary: dict[str, Any]) -> None:
        """The network in its own format with the tokenizer (:meth:`Trainer.export`), and the run's summary."""
        super().export(summary)
        write_json_atomic(self.out_dir / SUMMARY_FILE, summary)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The network's parameters, a tied one once (an unsharded checkpoint; a sharded one goes through DCP)."""
        return parameters_once(self.model)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(parameters_once(self.model))
        if set(state) != expected:
            misfit = sorted(set(state) ^ expected)[0]
            raise DDLMError(f"checkpoint {self.checkpoint_path} does not fit this network ({misfit}); "
                            "resume with the run's own --init source and settings")
        self.model.load_state_dict(state, strict=False)  # the buffers are the source's
