"""The corpora MDLM, SEDD and BD3-LM report zero-shot perplexity bounds on, with the papers' splits and detokenisers.

``ddlm eval --data ptb`` (or wikitext2, wikitext103, lm1b, lambada, ag_news, pubmed, arxiv) streams the
corpus's split from the Hugging Face Hub through ``datasets.load_dataset`` and undoes its tokenisation
the way the papers' data code does before the model's tokenizer reads it. Without network, a local copy
(a text file, a folder, a .jsonl or a saved data set) takes the same detokeniser: ``--data DIR
--detokenizer ptb``. The splits are the papers': validation, except LM1B's and AG News's test split and
LAMBADA's test set (OpenAI's, which has no other split).

Each detokeniser is a list of rules applied in order, written from the rules the papers' code documents:
a plain replacement (a string) or a regular expression (a compiled pattern).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ddlm.data.huggingface import LOCAL_COPY_HINT, HFSelection, HubDocuments
from ddlm.data.sources import TextSource, resolve_source
from ddlm.errors import DDLMError

Rule = tuple[str | re.Pattern[str], str]  # (what, its replacement), in order

PTB_RULES: list[Rule] = [
    (" 's", "'s"),  # clitics and negation are split off: "it 's", "do n't"
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),  # escaped slashes
    (re.compile(r"(?<= )N(?= )"), "1"),  # numbers are written N
    ("$ 1", "$1"),
    ("# 1", "#1"),
    ("<unk>", "?"),  # out-of-vocabulary words
]

WIKITEXT_RULES: list[Rule] = [
    ("s '", "s'"),
    (" @-@ ", "-"),  # separators inside numbers and words: "1 @,@ 000", "well @-@ known"
    (" @,@ ", ","),
    (" @.@ ", "."),
    *((f" {mark} ", f"{mark} ") for mark in ":;.!?,"),  # punctuation split off the word before it
    *((re.compile(rf"{re.escape(left)}\s*([^{re.escape(right)}]*?)\s*{re.escape(right)}"), rf"{left}\1{right}")
      for left, right in ("()", "[]", "{}", '""', "''")),  # spaces inside brackets and quotes
    ("= = = =", "===="),  # heading markers
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]

LM1B_RULES: list[Rule] = [
    ("http : / / ", "http://"),
    ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),  # clitics: "it 's"
    (re.compile(r" (\w+) \. "), r" \1. "),
    (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "),
    (re.compile(r" \?$"), "?"),
    (" ! ", "! "),
    (re.compile(r" !$"), "!"),
    (" , ", ", "),
    (" : ", ": "),
    (" ; ", "; "),
    (" / ", "/"),
    (re.compile(r'" ([^"]+) "'), r'"\1"'),  # spaces inside quotes and brackets
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^()]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"),
    ("\N{POUND SIGN} ", "\N{POUND SIGN}"),
]

LAMBADA_RULES: list[Rule] = [("\N{LEFT DOUBLE QUOTATION MARK}", '"'), ("\N{RIGHT DOUBLE QUOTATION MARK}", '"')]


def apply_rules(text: str, rules: Iterable[Rule]) -> str:
    """``text`` with each rule applied, in order."""
    for what, replacement in rules:
        text = what.sub(replacement, text) if isinstance(what, re.Pattern) else text.replace(what, replacement)
    return text


def detokenize_ptb(text: str) -> str:
    """Penn Treebank: clitics and negation rejoined, ``N`` as 1, ``<unk>`` as ``?``, ``\\/`` as ``/``."""
    return apply_rules(text, PTB_RULES)


def detokenize_wikitext(text: str) -> str:
    """WikiText: ``@-@``, ``@,@`` and ``@.@`` rejoined, punctuation, brackets, quotes and headings closed up."""
    return apply_rules(text, WIKITEXT_RULES)


def detokenize_lm1b(text: str) -> str:
    """LM1B: URLs, clitics, punctuation, quotes, brackets and currency signs closed up."""
    return apply_rules(text, LM1B_RULES)


def detokenize_lambada(text: str) -> str:
    """LAMBADA: curly double quotes as straight ones, the passage stripped and started on a new line."""
    return "\n" + apply_rules(text, LAMBADA_RULES).strip()


def detokenize_scientific_papers(text: str) -> str:
    """arXiv and PubMed articles: the WikiText rules, then LM1B's."""
    return detokenize_lm1b(detokenize_wikitext(text))


DETOKENIZERS: dict[str, Callable[[str], str] | None] = {
    "ptb": detokenize_ptb,
    "wikitext": detokenize_wikitext,
    "lm1b": detokenize_lm1b,
    "lambada": detokenize_lambada,
    "scientific_papers": detokenize_scientific_papers,
    "none": None,
}


@dataclass(frozen=True)
class ZeroShotCorpus:
    """One corpus of the papers' zero-shot tables: where it is on the Hub and how it is read."""

    name: str
    path: str  # the Hub data set
    config: str | None
    split: str
    field: str  # the text column
    detokenizer: str  # a DETOKENIZERS name
    # Read from the Hub's Parquet export: the data set is a loading script, which ``datasets`` 4 and later
    # no longer run; the export's folders are its configurations.
    parquet_export: bool = False

    @property
    def selection(self) -> HFSelection:
        return HFSelection(self.config, self.split, self.field)

    def documents(self, separator: str | None = None, hint: str = LOCAL_COPY_HINT) -> HubDocuments:
        """The split's documents, streamed from the Hub (not yet detokenised)."""
        return HubDocuments(self.path, self.selection, separator, hint=hint, parquet_export=self.parquet_export)

    def load_call(self) -> str:
        """The ``datasets.load_dataset`` call that reads the split, as Python."""
        arguments, keywords = self.documents().load_arguments()
        keywords.pop("streaming")
        written = [repr(argument) for argument in arguments if argument is not None]
        written += [f"{key}={value!r}" for key, value in keywords.items()]
        return f"datasets.load_dataset({', '.join(written)})"

    def offline_hint(self) -> str:
        """How to evaluate on the corpus without network, in one line."""
        rename = f".rename_column({self.field!r}, 'text')" if self.field != "text" else ""
        return (f"{self.name} needs network to the Hugging Face Hub or a local copy: where there is network, save it "
                f"with `python -c \"import datasets; {self.load_call()}.select_columns([{self.field!r}]){rename}"
                f".save_to_disk('{self.name}-{self.split}')\"` and pass --data {self.name}-{self.split} "
                f"--detokenizer {self.detokenizer}")

    def source(self, separator: str | None = None) -> TextSource:
        """The split streamed from the Hub (not yet detokenised)."""
        documents = self.documents(separator, hint=self.offline_hint())
        identity = json.dumps(["hf", self.path, self.config, self.split, self.field, self.parquet_export, separator])
        return TextSource(f"{self.name} (hf:{self.path})", "hf", lambda: documents, identity)


ZERO_SHOT_CORPORA: dict[str, ZeroShotCorpus] = {corpus.name: corpus for corpus in (
    ZeroShotCorpus("ptb", "ptb-text-only/ptb_text_only", "penn_treebank", "validation", "sentence", "ptb",
                   parquet_export=True),
    ZeroShotCorpus("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", "validation", "text", "wikitext"),
    ZeroShotCorpus("wikitext103", "Salesforce/wikitext", "wikitext-103-raw-v1", "validation", "text", "wikitext"),
    ZeroShotCorpus("lm1b", "billion-word-benchmark/lm1b", "plain_text", "test", "text", "lm1b", parquet_export=True),
    ZeroShotCorpus("lambada", "EleutherAI/lambada_openai", "default", "test", "text", "lambada", parquet_export=True),
    ZeroShotCorpus("ag_news", "fancyzhx/ag_news", None, "test", "text", "none"),
    ZeroShotCorpus("pubmed", "armanc/scientific_papers", "pubmed", "validation", "article", "scientific_papers",
                   parquet_export=True),
    ZeroShotCorpus("arxiv", "armanc/scientific_papers", "arxiv", "validation", "article", "scientific_papers",
                   parquet_export=True),
)}


def check_detokenizer(name: str) -> Callable[[str], str] | None:
    """The detokeniser called ``name`` (None for ``none``), or a one-line error naming the choices."""
    if name not in DETOKENIZERS:
        raise DDLMError(f"unknown detokenizer {name!r}; choose from {', '.join(DETOKENIZERS)}")
    return DETOKENIZERS[name]


class Detokenized:
    """The documents of a source with a detokeniser applied to each, read again on each pass."""

    def __init__(self, read: Callable[[], Iterable[str]], detokenize: Callable[[str], str]) -> None:
        self.read, self.detokenize = read, detokenize

    def __iter__(self) -> Iterator[str]:
        return (self.detokenize(document) for document in self.read())


def detokenized(source: TextSource, name: str) -> TextSource:
    """``source`` read through the detokeniser ``name`` (unchanged for ``none``)."""
    detokenize = check_detokenizer(name)
    if detokenize is None:
        return source
    documents = Detokenized(source.read, detokenize)
    identity = None if source.identity is None else json.dumps([json.loads(source.identity), "detokenized", name])
    return replace(source, label=f"{source.label}, detokenized as {name}", read=lambda: documents, identity=identity)


def evaluation_source(data: str | Path, separator: str | None = None, selection: HFSelection | None = None,
                      detokenizer: str | None = None) -> tuple[TextSource, str | None]:
    """The text ``ddlm eval --data`` names, and the detokeniser it is read through.

    A zero-shot corpus's name (unless a local path has that name) streams its split from the Hub with
    its own detokeniser; anything else is resolved as training data is (:func:`resolve_source`).
    ``detokenizer`` (a DETOKENIZERS name) replaces the corpus's.
    """
    if detokenizer is not None:
        check_detokenizer(detokenizer)
    corpus = None if Path(data).exists() else ZERO_SHOT_CORPORA.get(str(data))
    source = corpus.source(separator) if corpus else resolve_source(data, separator, selection)
    name = detokenizer if detokenizer is not None else (corpus.detokenizer if corpus else None)
    return (detokenized(source, name), name) if name not in (None, "none") else (source, name)
