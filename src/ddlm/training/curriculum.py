"""The attention path of an adaptation run: what the process trains under at each step.

Both stages end in the ordinary model, so the bound reported at the end is the usual NELBO;
validation always uses the final attention, so the curves of every stage compare.

- Annealing (DiffuGPT): a masked model's position i sees keys up to i + lookahead, the look-ahead
  growing linearly from 0 (causal: under the shift, an autoregressive model) to the full context
  over ``adapt.anneal_steps``.
- Block growth (NBDiff): a block model's block size doubles from 1 (under the shift, exactly the
  autoregressive model) to ``process.block_size`` over ``adapt.grow_steps``, each size for an
  equal share of them.

Beside the attention path, ``adapt.ar_loss_weight`` keeps an autoregressive loss (DiffuGPT / NBDiff-style
recipes): a shifted model on the clean sequence under the causal pattern gives next-token logits (block size 1
is the autoregressive model), so the term is the clean batch's mean next-token NLL, added to the training loss
times the weight. The NELBO reported and validated stays the diffusion NELBO.
"""

from __future__ import annotations

import torch

from ddlm.errors import DDLMError
from ddlm.processes import LossOutput
from ddlm.processes.base import log_probs_without
from ddlm.training.config import AdaptSettings, RunConfig


def lookahead(step: int, settings: AdaptSettings, length: int) -> int | None:
    """How many keys past its own position each position sees at ``step``; None once attention is full."""
    if step >= settings.anneal_steps:
        return None
    return length * step // settings.anneal_steps


def block_sizes(target: int) -> list[int]:
    """The block sizes of the growth to ``target``: 1, 2, 4, ... (powers of two dividing it), then target."""
    sizes = [1]
    while sizes[-1] * 2 < target and target % (sizes[-1] * 2) == 0:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == target else [*sizes, target]


def grown_block_size(step: int, settings: AdaptSettings, target: int) -> int:
    """The block size trained at ``step``; ``target`` once the growth is over."""
    if step >= settings.grow_steps:
        return target
    sizes = block_sizes(target)
    return sizes[step * len(sizes) // settings.grow_steps]


def apply(process: object, step: int, settings: AdaptSettings, length: int) -> None:
    """Set the process's training attention for ``step`` (a process without one is left alone)."""
    if hasattr(process, "training_block_size"):
        process.training_block_size = grown_block_size(step, settings, process.block_size)
    elif hasattr(process, "lookahead"):
        process.lookahead = lookahead(step, settings, length)


def check_ar_term(config: RunConfig) -> None:
    """A one-line refusal of a positive ``adapt.ar_loss_weight`` for a model that is not shifted (no AR head)."""
    if config.adapt.ar_loss_weight > 0 and not config.model.shift:
        raise DDLMError("adapt.ar_loss_weight keeps the next-token loss of a shifted model adapted from an "
                        "autoregressive one; start the run with --init AR_MODEL, or set adapt.ar_loss_weight=0")


def ar_term(model: torch.nn.Module, process: object, x0: torch.Tensor) -> LossOutput:
    """The next-token NLL per real token of the clean batch ``x0`` (B, L), read from the shifted ``model`` under the
    causal pattern at noise level 0; MASK and PAD are never predicted, as in the autoregressive process."""
    length = x0.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=x0.device).tril()
    logits = model(x0, torch.zeros(x0.shape[0], device=x0.device), attention=causal)
    scored = x0 != process.pad_id
    log_probs = log_probs_without(logits[scored], (process.mask_id, process.pad_id))
    return LossOutput.per_real_token(-log_probs.gather(-1, x0[scored][:, None]).sum(), x0, process.pad_id)
