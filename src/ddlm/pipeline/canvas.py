"""A run's canvas rows from its prompts, infill template or suffix, and how many tokens fit between them."""

from __future__ import annotations

from functools import partial
from typing import Any

from ddlm.data.sft import ChatFormat
from ddlm.errors import DDLMError
from ddlm.processes import Process
from ddlm.samplers import parse_template
from ddlm.schema import check_integer
from ddlm.tokenizers import Tokenizer


class CanvasBuilding:
    """The part of :class:`~ddlm.pipeline.DiffusionPipeline` that lays out canvases (a mixin)."""

    tokenizer: Tokenizer
    process: Process
    summary: dict[str, Any]
    context_length: int

    def canvas_rows(
        self,
        prompt: str | list[str] | None,
        num_samples: int,
        length: int | None,
        infill: str | None = None,
        suffix: str | None = None,
        chat: bool = False,
    ) -> list[list[int | None]]:
        """One row per sample (token ids, None to generate): ``num_samples`` of each prompt, or of the infill template.

        Samples of one prompt share one row object, so a million samples cost a million references.
        With ``chat`` each prompt is a user turn in the tokenizer's chat template (Hugging Face chat models) or
        in the chat format a model was fine-tuned on (``ddlm finetune``).
        """
        check_integer("num_samples", num_samples, minimum=1)
        if infill is not None:
            if prompt or suffix or length is not None or chat:
                raise DDLMError("an infill template sets the whole canvas; drop the prompt, suffix, length and chat",
                                field="infill")
            return [parse_template(infill, self.tokenizer.encode, self.context_length)] * num_samples
        prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        if chat:
            chat_ids = getattr(self.tokenizer, "chat_ids", None)
            if "chat" in self.summary:  # a ddlm model fine-tuned on chat turns (ddlm finetune): the format it learnt
                chat_ids = partial(ChatFormat.from_dict(self.summary["chat"]).prompt_ids, self.tokenizer)
            if chat_ids is None:
                raise DDLMError("chat needs a chat model (a Hugging Face chat model's template, or a model fine-tuned "
                                "on chat turns by `ddlm finetune`); drop chat for this model", field="chat")
            encoded = [chat_ids(text or "") for text in prompts]
        else:
            encoded = [self.encode_field(text, "prompt") for text in prompts]
        suffix_ids = self.encode_field(suffix, "suffix")
        length = self.check_length(max(len(ids) for ids in encoded), length, len(suffix_ids))
        return [row for ids in encoded for row in [[*ids, *[None] * length, *suffix_ids]] * num_samples]

    @property
    def has_chat_format(self) -> bool:
        """Whether ``chat=True`` applies: a model fine-tuned on chat turns, or a tokenizer with a chat template."""
        hf_tokenizer = getattr(self.tokenizer, "hf", None)
        return "chat" in self.summary or bool(getattr(hf_tokenizer, "chat_template", None))

    def encode_field(self, text: str | None, field: str) -> list[int]:
        """Token ids of ``text`` (none for no text); a text the tokenizer refuses names its ``field``."""
        if not text:
            return []
        try:
            return self.tokenizer.encode(text)
        except DDLMError as error:
            raise DDLMError(f"{field}: {error}", field=field) from None

    def check_length(self, prompt_length: int, length: int | None, suffix_length: int = 0) -> int:
        """The number of tokens to generate between ``prompt_length`` given tokens before them and
        ``suffix_length`` after them, checked against the context."""
        given = {name: count for name, count in (("prompt", prompt_length), ("suffix", suffix_length)) if count}
        room = self.context_length - prompt_length - suffix_length
        if room < 1:
            raise DDLMError(
                f"the {' and '.join(given)} {'is' if len(given) == 1 else 'are'} {sum(given.values())} tokens, "
                f"which leaves no room to generate in the model's context of {self.context_length}; "
                f"shorten the {' or '.join(given)}", field=next(iter(given))
            )
        if length is None:
            return room
        if length < 1:
            raise DDLMError(f"length must be at least 1, got {length}", field="length")
        if length > room and not getattr(self.process, "generates_past_context", False):  # block diffusion slides
            parts = "".join(f"{name} ({count}) + " for name, count in given.items())
            raise DDLMError(
                f"{parts}length ({length}) tokens exceed the model's context of "
                f"{self.context_length}; ask for length {room} or less", field="length"
            )
        return length


def with_length(row: list[int | None], length: int) -> list[int | None]:
    """A prompt/suffix row (one run of positions to generate) with that run made ``length`` long."""
    check_integer("length", length, minimum=1)
    first = row.index(None)
    last = len(row) - row[::-1].index(None)
    return [*row[:first], *[None] * length, *row[last:]]
