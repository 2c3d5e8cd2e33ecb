"""Seeded, resumable batches of token rows for training and evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ddlm.data.cache import TokenizedCorpus
from ddlm.errors import DDLMError

LAYOUTS = ("packed", "padded")


class BatchLoader:
    """An endless stream of ``(batch_size, context_length)`` ``torch.long`` batches.

    Layouts:

    * ``"packed"``: the token stream cut into non-overlapping rows of
      ``context_length`` tokens from a random start offset in
      ``[0, context_length)``; rows that do not fit are dropped.
    * ``"padded"``: one document per row (its tokens up to and including its eos),
      truncated to ``context_length`` and right-padded with ``pad_id``.

    Each epoch's offset and row order are drawn from ``(seed, epoch)``. The epochs'
    row orders are concatenated into one stream, and each global batch takes the next
    ``batch_size * world_size`` rows of it, so a batch may span two epochs. ``rank``
    gets rows ``rank * batch_size`` to ``(rank + 1) * batch_size`` of each global batch.
    The state is the position in that stream, the same on every rank.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        batch_size: int,
        context_length: int,
        *,
        layout: str = "packed",
        seed: int = 0,
        pad_id: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if layout not in LAYOUTS:
            raise DDLMError(f"unknown data layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if batch_size < 1 or context_length < 1:
            raise DDLMError(
                f"batch_size={batch_size} and context_length={context_length} must both be positive"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise DDLMError(f"rank={rank} is not in [0, world_size={world_size}); check the launcher")
        if seed < 0:
            raise DDLMError(f"seed={seed} is negative; use a seed >= 0")
        if layout == "packed" and len(corpus) < context_length:
            raise DDLMError(
                f"the corpus has {len(corpus)} tokens, fewer than one row of context_length "
                f"{context_length}; use a smaller context_length or a longer corpus"
            )
        if layout == "padded":
            if pad_id is None:
                raise DDLMError("the padded layout needs a pad_id; pass tokenizer.pad_id")
            if len(corpus) == 0:
                raise DDLMError("the corpus has no tokens; use a longer corpus")
        self.corpus = corpus
        self.batch_size = batch_size
        self.context_length = context_length
        self.layout = layout
        self.seed = seed
        self.pad_id = pad_id
        self.rank = rank
        self.world_size = world_size
        self._columns = np.arange(context_length, dtype=np.int64)
        self._doc_starts = np.asarray(corpus.doc_starts, dtype=np.int64)
        self._doc_lengths = np.diff(np.append(self._doc_starts, len(corpus)))
        self._epoch = 0
        self._position = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> torch.Tensor:
        rows = self._take(self.batch_size * self.world_size)
        return self._materialise(rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "position"}``: position is the next row within the epoch."""
        return {"seed": self.seed, "epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the loader that produced ``state`` stopped."""
        seed, epoch, position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self.seed, self._order_epoch = seed, -1
        if epoch < 0 or not 0 <= position < len(self._epoch_order(epoch)):
            raise DDLMError(
                f"loader state (epoch {epoch}, position {position}) does not fit this corpus; "
                "resume with the same data, layout and context_length"
            )
        self._epoch, self._position = epoch, position

    def iter_eval_batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Every row once, in order and unshuffled (packed rows start at offset 0).

        Ignores ``rank``: each rank sees all rows. The last batch may be smaller.
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        rows = self._eval_rows()
        for begin in range(0, len(rows), batch_size):
            yield self._materialise(rows[begin : begin + batch_size])

    def eval_batch_count(self, batch_size: int | None = None) -> int:
        """How many batches :meth:`iter_eval_batches` yields."""
        batch_size = self.batch_size if batch_size is None else batch_size
        return -(-len(self._eval_rows()) // batch_size)

    def _eval_rows(self) -> np.ndarray:
        """Row ids of every evaluation row: token offsets (packed) or document indices (padded)."""
        if self.layout == "packed":
            return np.arange(len(self.corpus) // self.context_length) * self.context_length
        return np.arange(len(self._doc_starts))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Row ids of ``epoch`` in order: token offsets (packed) or document indices (padded)."""
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.layout == "packed":
                length, n = self.context_length, len(self.corpus)
                offset = int(rng.integers(min(length, n - length + 1)))
                self._order = offset + length * rng.permutation((n - offset) // length)
            else:
                self._order = rng.permutation(len(self._doc_starts))
            self._order_epoch = epoch
        return self._order

    def _take(self, count: int) -> np.ndarray:
        """The next ``count`` row ids of the stream, advancing the state."""
        parts = []
        while count:
            order = self._epoch_order(self._epoch)
            part = order[self._position : self._position + count]
            parts.append(part)
            count -= len(part)
            self._position += len(part)
            if self._position == len(order):
                self._epoch, self._position = self._epoch + 1, 0
        return np.concatenate(parts)

    def _materialise(self, rows: np.ndarray) -> torch.Tensor:
        """The ``(len(rows), context_length)`` batch of the given row ids."""
        if self.layout == "packed":
            ids = self.corpus.tokens[rows[:, None] + self._columns].astype(np.int64)
        else:
            lengths = np.minimum(self._doc_lengths[rows], self.context_length)
            inside = self._columns < lengths[:, None]
            index = np.where(inside, self._doc_starts[rows, None] + self._columns, 0)
            ids = np.where(inside, self.corpus.tokens[index].astype(np.int64), self.pad_id)
        return torch.from_numpy(ids)
