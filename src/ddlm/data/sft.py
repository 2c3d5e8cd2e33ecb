"""Fine-tuning data: prompt/response pairs and chat turns from JSON lines, as token rows with a response mask.

Each line of the file is one example, either ``{"prompt": TEXT, "response": TEXT}`` or
``{"messages": [{"role": ROLE, "content": TEXT}, ...]}`` (chat turns: the last one is the response,
the turns before it the prompt). Chat turns are written with the tokenizer's chat template (Hugging
Face chat models) or, for ddlm's own tokenizers, with the plain template of :class:`ChatFormat`:
each turn as ``"{role}:\\n{content}\\n\\n"`` (the layout of a play's script), the prompt ending
with the reply's ``"{role}:\\n"`` so that the model writes the reply's text.

An example becomes the prompt's ids, then the response's ids and one end-of-text id. A batch pads
its rows with end-of-text to its longest row (LLaDA trains on that padding, which teaches the model
where a reply ends) and marks the response positions, padding included, in a mask.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddlm.errors import DDLMError

PLAIN_TEMPLATE = "{role}:\n{content}\n\n"
ROW_SHAPES = '"prompt" and "response" (text), or "messages" (a list of at least two {"role", "content"} turns)'


@dataclass(frozen=True)
class ChatFormat:
    """The plain chat template of ddlm tokenizers, and the roles of a ``--chat`` prompt and its reply.

    ``template`` holds ``{role}`` before ``{content}``; what precedes ``{content}`` is the turn's
    header, what follows it the turn's end.
    """

    template: str = PLAIN_TEMPLATE
    user: str = "user"
    assistant: str = "assistant"

    def __post_init__(self) -> None:
        head, content, end = self.template.partition("{content}")
        if not content or "{content}" in end or "{role}" not in head or "{role}" in end:
            raise DDLMError(f"chat template {self.template!r} must hold {{role}} and then {{content}} once each, "
                            f"e.g. {PLAIN_TEMPLATE!r}")

    def header(self, role: str) -> str:
        return self.template.partition("{content}")[0].replace("{role}", role)

    def turn(self, role: str, content: str) -> str:
        return self.header(role) + content + self.template.partition("{content}")[2]

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """Every turn but the last, then the last one's header: what the reply is written after."""
        return "".join(self.turn(m["role"], m["content"]) for m in messages[:-1]) + self.header(messages[-1]["role"])

    def response_text(self, message: dict[str, str]) -> str:
        """The reply's text and the end of its turn."""
        return message["content"] + self.template.partition("{content}")[2]

    def chat_prompt(self, text: str) -> str:
        """``text`` as the user's turn, then the header of the assistant's reply (``ddlm sample --chat``)."""
        return self.prompt_text([{"role": self.user, "content": text}, {"role": self.assistant, "content": ""}])

    def prompt_ids(self, tokenizer: Any, text: str) -> list[int]:
        """Token ids of :meth:`chat_prompt`."""
        return tokenizer.encode(self.chat_prompt(text))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ChatFormat:
        return cls(**values)


@dataclass(frozen=True)
class SFTRow:
    """One example as token ids: the prompt's, and the response's ending in end-of-text."""

    prompt: list[int]
    response: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)

    def fitted(self, max_length: int) -> SFTRow:
        """The row cut to ``max_length`` tokens: the prompt loses its start first, then the response its end."""
        if len(self) <= max_length:
            return self
        prompt = self.prompt[max(0, len(self) - max_length):]
        return SFTRow(prompt, self.response[: max_length - len(prompt)])


def read_examples(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """The examples of a JSON-lines file with their line numbers; a one-line error names the first line
    that is not one."""
    path = Path(path)
    if not path.is_file():
        raise DDLMError(f"fine-tuning data {path} not found; pass a .jsonl file of prompt/response or messages rows")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError as error:
                raise DDLMError(f"{path} line {number} is not valid JSON ({error}); fix or remove the line") from None
            if not is_example(example):
                raise DDLMError(f"{path} line {number} needs {ROW_SHAPES}; fix or remove the line")
            examples.append((number, example))
    if not examples:
        raise DDLMError(f"{path} holds no examples; write one JSON object per line with {ROW_SHAPES}")
    return examples


def is_example(example: Any) -> bool:
    if not isinstance(example, dict):
        return False
    if "messages" in example:
        turns = example["messages"]
        return isinstance(turns, list) and len(turns) >= 2 and all(
            isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)
            for turn in turns)
    return isinstance(example.get("prompt"), str) and isinstance(example.get("response"), str)


def encode_example(example: dict[str, Any], tokenizer: Any, chat: ChatFormat, end_id: int) -> SFTRow:
    """The token row of one example: plain prompt and response texts, or chat turns in the tokenizer's chat
    template (a Hugging Face tokenizer that has one) or in ``chat``'s plain template."""
    if "messages" not in example:
        return SFTRow(tokenizer.encode(example["prompt"]), [*tokenizer.encode(example["response"]), end_id])
    messages = [{"role": turn["role"], "content": turn["content"]} for turn in example["messages"]]
    if getattr(getattr(tokenizer, "hf", None), "chat_template", None):
        prompt = template_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        whole = template_ids(tokenizer, messages, add_generation_prompt=False)
        if whole[: len(prompt)] != prompt:
            raise DDLMError("the tokenizer's chat template writes the earlier turns differently once the reply "
                            "follows; use prompt/response rows with the prompt written out")
        return SFTRow(prompt, [*whole[len(prompt):], end_id])
    if hasattr(tokenizer, "hf"):
        raise DDLMError("this model's tokenizer has no chat template; use prompt/response rows instead of messages")
    return SFTRow(tokenizer.encode(chat.prompt_text(messages)),
                  [*tokenizer.encode(chat.response_text(messages[-1])), end_id])


def template_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` in a Hugging Face tokenizer's chat template."""
    encoded = tokenizer.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return [int(i) for i in (encoded["input_ids"] if hasattr(encoded, "keys") else encoded)]


@dataclass
class SFTData:
    """The token rows of a file, how many were cut to the context, and whether any came from chat turns."""

    rows: list[SFTRow]
    truncated: int
    chat: bool


def load_rows(path: str | Path, tokenizer: Any, chat: ChatFormat, end_id: int, max_length: int) -> SFTData:
    """The token rows of a JSON-lines file, each cut to ``max_length``."""
    examples = read_examples(path)
    rows = []
    for number, example in examples:
        try:
            rows.append(encode_example(example, tokenizer, chat, end_id))
        except DDLMError as error:
            raise DDLMError(f"{path} line {number}: {error}") from None
    fitted = [row.fitted(max_length) for row in rows]
    return SFTData(fitted, sum(a is not b for a, b in zip(rows, fitted)), any("messages" in e for _, e in examples))


def split_rows(rows: list[SFTRow], fraction: float, seed: int = 0) -> tuple[list[SFTRow], list[SFTRow]]:
    """(training rows, held-out rows): a ``fraction`` of the rows, drawn at random with ``seed``, is held out."""
    if not 0 < fraction < 1:
        raise DDLMError(f"the held-out fraction must be in (0, 1), got {fraction}")
    held = max(1, round(fraction * len(rows)))
    if held >= len(rows):
        raise DDLMError(f"{len(rows)} examples leave none to train on after holding out {fraction:g} of them; "
                        "add examples or pass --valid FILE")
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in sorted(order[held:])], [rows[i] for i in sorted(order[:held])]


@dataclass
class SFTBatch:
    """Token rows (B, L) padded with end-of-text, the mask (B, L) of their response positions, and the rows'
    own lengths (B,), padding left out."""

    tokens: torch.Tensor
    response: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> SFTBatch:
        return SFTBatch(self.tokens.to(device), self.response.to(device), self.lengths)


def padded_length(rows: list[SFTRow], multiple: int = 1) -> int:
    return multiple * math.ceil(max(map(len, rows)) / multiple)


def collate(rows: list[SFTRow], end_id: int, multiple: int = 1, length: int | None = None) -> SFTBatch:
    """The batch of ``rows``, padded with ``end_id`` to ``length``, by default the longest row's (rounded up to
    ``multiple``)."""
    length = padded_length(rows, multiple) if length is None else length
    tokens = torch.full((len(rows), length), end_id, dtype=torch.long)
    response = torch.ones((len(rows), length), dtype=torch.bool)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = torch.tensor([*row.prompt, *row.response], dtype=torch.long)
        response[index, : len(row.prompt)] = False
    return SFTBatch(tokens, response, torch.tensor([len(row) for row in rows]))


class SFTLoader:
    """An endless, seeded, resumable stream of :class:`SFTBatch` of ``batch_size`` rows.

    As :class:`ddlm.data.BatchLoader` with the padded layout: each epoch's row order is drawn from
    ``(seed, epoch)``, each global batch takes the next ``batch_size * world_size`` rows of the
    epochs' orders joined, and ``rank`` gets its slice of it, padded to the global batch's longest row (so
    a rank's rows are those of one process's batch). ``multiple``: batch lengths are rounded up to it
    (block diffusion's block size).
    """

    def __init__(self, rows: list[SFTRow], batch_size: int, end_id: int, *, seed: int = 0, multiple: int = 1,
                 rank: int = 0, world_size: int = 1):
        if not rows:
            raise DDLMError("no fine-tuning examples to train on; add rows to the data file")
        self.rows = rows
        self.batch_size = batch_size
        self.end_id = end_id
        self.seed = seed
        self.multiple = multiple
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0

    def __iter__(self) -> SFTLoader:
        return self

    def __next__(self) -> SFTBatch:
        picked = self.take(self.batch_size * self.world_size)
        mine = picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        # padded as the whole global batch (the padding is trained on): N processes train as one would
        length = padded_length([self.rows[i] for i in picked], self.multiple)
        return collate([self.rows[i] for i in mine], self.end_id, self.multiple, length)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def take(self, count: int) -> list[int]:
        """The next ``count`` row indices of the stream, advancing the state."""
        picked: list[int] = []
        while len(picked) < count:
            order = self.order(self.epoch)
            part = order[self.position : self.position + count - len(picked)]
            picked.extend(int(i) for i in part)
            self.position += len(part)
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return picked

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["rows"]) != len(self.rows):
            raise DDLMError(f"the checkpoint was trained on {state['rows']} examples and the data now has "
                            f"{len(self.rows)}; resume with the run's own data file")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])

    def iter_eval_batches(self, batch_size: int | None = None, max_rows: int | None = None) -> Iterator[SFTBatch]:
        """Every row once (or ``max_rows`` of them, evenly spaced over the file: a subset like the whole, not its
        shortest rows), in batches of rows of one padded length (so no row is padded more than its own rounding
        to ``multiple`` needs), shortest first."""
        batch_size = batch_size or self.batch_size
        rows = self.rows
        if max_rows is not None and max_rows < len(rows):
            rows = [rows[index * len(rows) // max_rows] for index in range(max_rows)]
        groups: dict[int, list[SFTRow]] = {}
        for row in rows:
            groups.setdefault(padded_length([row], self.multiple), []).append(row)
        for length in sorted(groups):
            group = groups[length]
            for begin in range(0, len(group), batch_size):
                yield collate(group[begin : begin + batch_size], self.end_id, self.multiple)
