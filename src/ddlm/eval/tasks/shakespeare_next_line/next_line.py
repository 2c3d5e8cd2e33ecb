"""The questions of the shakespeare_next_line task, built from ddlm's built-in corpus (no download).

Each question shows up to ``CONTEXT_CHARS`` characters of whole lines of the held-out text (the
corpus's last 10%, which training runs hold out) and asks which of four lines comes next: the
true one, or three verse lines of about its length taken from elsewhere in the held-out text.
The questions depend only on ``SEED``; the harness's ``--limit N`` takes the first N.

``dev_questions`` (the task ``shakespeare_next_line_dev``) are built the same way from other lines of
the same held-out text, for choosing how to score (an estimator, its options) without looking at
the test questions: no non-blank line of a dev question (its context or any of its four choices)
is a line of the first ``REPORTED`` test questions, the ones the results report (``--limit 200``).
The held-out text is too short for dev questions that avoid all 500 test questions' lines.
"""

from __future__ import annotations

import random
from typing import Any

QUESTIONS = 500
CHOICES = 4
CONTEXT_CHARS = 160
LINE_CHARS = (20, 70)  # lengths of the lines asked for
LENGTH_SLACK = 0.2  # a wrong line is within 20% of the true line's length
NEIGHBOURHOOD = 20  # wrong lines come from at least this many lines away
SEED = 0
DEV_QUESTIONS = 100
DEV_SEED = 1
REPORTED = 200  # the test questions results are reported on, which the dev questions avoid


def held_out_lines() -> list[str]:
    """The lines of the built-in corpus's held-out tail, from its first whole line on."""
    from ddlm.data import BUILTIN_HELD_OUT_FRACTION, DEFAULT_CORPUS, builtin_text

    text = builtin_text(DEFAULT_CORPUS)
    cut = len(text) - round(len(text) * BUILTIN_HELD_OUT_FRACTION)
    return text[text.index("\n", cut) + 1 :].split("\n")


def is_verse(line: str) -> bool:
    """A line of speech of a length worth asking for (not a speaker's name, not blank)."""
    return LINE_CHARS[0] <= len(line) <= LINE_CHARS[1] and not line.endswith(":")


def context_before(lines: list[str], index: int) -> str:
    """The whole lines before ``lines[index]`` that fit in CONTEXT_CHARS, each ending with a newline."""
    kept: list[str] = []
    for line in reversed(lines[:index]):
        if sum(len(item) + 1 for item in kept) + len(line) + 1 > CONTEXT_CHARS:
            break
        kept.insert(0, line)
    return "".join(line + "\n" for line in kept)


def question_lines(question: dict[str, Any]) -> set[str]:
    """The non-blank lines a question shows: its context's and its four choices."""
    return {line for line in [*question["context"].split("\n"), *question["choices"]] if line}


def questions() -> list[dict[str, Any]]:
    """QUESTIONS questions: ``context``, ``choices`` (four lines) and ``label`` (the index of the true one)."""
    return build(QUESTIONS, SEED)


def dev_questions() -> list[dict[str, Any]]:
    """DEV_QUESTIONS questions as :func:`questions`, none sharing a non-blank line with the first REPORTED of them."""
    avoid = set().union(*(question_lines(question) for question in questions()[:REPORTED]))
    return build(DEV_QUESTIONS, DEV_SEED, avoid)


def build(count: int, seed: int, avoid: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    """``count`` questions drawn with ``seed``, showing no line of ``avoid`` (in context or choices)."""
    rng = random.Random(seed)
    lines = held_out_lines()
    verse = [index for index, line in enumerate(lines) if is_verse(line) and line not in avoid]
    asked = rng.sample([index for index in verse if index >= 4
                        and avoid.isdisjoint(context_before(lines, index).split("\n"))], count)  # --limit N samples
    items = []
    for index in asked:
        true = lines[index]
        similar = [other for other in verse if abs(other - index) >= NEIGHBOURHOOD and lines[other] != true
                   and abs(len(lines[other]) - len(true)) <= LENGTH_SLACK * len(true)]
        choices = [true, *(lines[other] for other in rng.sample(similar, CHOICES - 1))]
        rng.shuffle(choices)
        items.append({"context": context_before(lines, index), "choices": choices, "label": choices.index(true)})
    return items


def dataset(**metadata: Any):
    """The task's test split, for the harness (``custom_dataset``; the model arguments it passes are ignored)."""
    return as_split(questions())


def dev_dataset(**metadata: Any):
    """The dev task's questions as its test split, for the harness (as :func:`dataset`)."""
    return as_split(dev_questions())


def as_split(items: list[dict[str, Any]]):
    """``items`` as the harness's dataset: one split, ``test``."""
    import datasets

    return {"test": datasets.Dataset.from_list(items)}
