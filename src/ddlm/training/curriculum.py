"""The attention path of an adaptation run: what the process trains under at each step.

Both stages end in the ordinary model, so the bound reported at the end is the usual NELBO;
validation always uses the final attention, so the curves of every stage compare.

- Annealing (DiffuGPT): a masked model's position i sees keys up to i + lookahead, the look-ahead
  growing linearly from 0 (causal: under the shift, an autoregressive model) to the full context
  over ``adapt.anneal_steps``.
- Block growth (NBDiff): a block model's block size doubles from 1 (under the shift, exactly the
  autoregressive model) to ``process.block_size`` over ``adapt.grow_steps``, each size for an
  equal share of them.
"""

from __future__ import annotations

from ddlm.training.config import AdaptSettings


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
