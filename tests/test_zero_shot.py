"""Zero-shot perplexity corpora (ddlm.data.zero_shot), offline: the detokenisers against examples written by hand
from their rules, the corpus table through a stand-in for ``datasets.load_dataset``, and ``ddlm eval`` end to end."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.data import zero_shot
from ddlm.data.zero_shot import DETOKENIZERS, ZERO_SHOT_CORPORA, evaluation_source
from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Autoregressive
from ddlm.tokenizers import CharTokenizer

datasets = pytest.importorskip("datasets")

EXAMPLES = {  # (detokeniser, before, after), each after worked out by hand from the rules
    "ptb": [
        ("the company 's shares", "the company's shares"),
        ("they do n't know", "they don't know"),
        ("the players ' union", "the players' union"),
        ("a <unk> index", "a ? index"),
        ("one\\/two", "one/two"),
        ("rose N N N points to $ N million", "rose 1 1 1 points to $1 million"),
        ("the # N bonds", "the #1 bonds"),
        ("ends with N", "ends with N"),  # N is a number only between spaces
    ],
    "wikitext": [
        (" = = Gameplay = = \n", " == Gameplay ==\n"),
        ("a 1 @,@ 000 @-@ year span of 2 @.@ 5 days", "a 1,000-year span of 2.5 days"),
        ("He said : yes ; no , maybe ! ok ? so . next", "He said: yes; no, maybe! ok? so. next"),
        ('( born 1990 ) and [ 1 ] and { x } and " quoted "', '(born 1990) and [1] and {x} and "quoted"'),
        ("it 's 5 \N{DEGREE SIGN} C", "it's 5\N{DEGREE SIGN}C"),
        ("the players ' ball", "the players' ball"),
        ("line one \n two", "line one\ntwo"),
        ("about N people", "about 1 people"),
    ],
    "lm1b": [
        ("see http : / / example.com now", "see http://example.com now"),
        ("He 's here .", "He's here."),
        ("Why ? Because !", "Why? Because!"),
        ('He said " yes " , ( maybe ) [ no ] $ 5 and \N{POUND SIGN} 3 : a / b ; c',
         'He said "yes", (maybe) [no] $5 and \N{POUND SIGN}3: a/b; c'),
        ("He ran . She sat . ", "He ran. She sat. "),
    ],
    "lambada": [("  \N{LEFT DOUBLE QUOTATION MARK}Hi,\N{RIGHT DOUBLE QUOTATION MARK} she said.  ", '\n"Hi," she said.')],
    "scientific_papers": [("we 're here , see ( ref ) at 3 @.@ 5 \N{POUND SIGN} 2",
                           "we're here, see (ref) at 3.5 \N{POUND SIGN}2")],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_detokenizers_undo_the_tokenisation_their_rules_describe(name):
    for before, after in EXAMPLES[name]:
        assert DETOKENIZERS[name](before) == after, before


def test_the_table_holds_the_papers_corpora_with_their_splits():
    assert set(ZERO_SHOT_CORPORA) == {"ptb", "wikitext2", "wikitext103", "lm1b", "lambada", "ag_news", "pubmed", "arxiv"}
    for corpus in ZERO_SHOT_CORPORA.values():
        assert corpus.detokenizer in DETOKENIZERS
        assert corpus.split == ("test" if corpus.name in ("lm1b", "ag_news", "lambada") else "validation")
    assert ZERO_SHOT_CORPORA["wikitext103"].config == "wikitext-103-raw-v1"
    assert ZERO_SHOT_CORPORA["ptb"].field == "sentence" and ZERO_SHOT_CORPORA["arxiv"].field == "article"


class FakeHub:
    """A stand-in for ``datasets.load_dataset`` serving ``rows`` and recording each call."""

    def __init__(self, rows: list[dict]):
        self.rows, self.calls = rows, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return iter(self.rows)


@pytest.mark.parametrize("name", sorted(ZERO_SHOT_CORPORA))
def test_a_corpus_name_streams_its_split_from_the_hub_detokenised(name, monkeypatch):
    corpus = ZERO_SHOT_CORPORA[name]
    texts = ["it 's a 1 @,@ 000 N ( x ) test", "we do n't <unk> ."]
    hub = FakeHub([{corpus.field: text, "other": 0} for text in texts])
    monkeypatch.setattr(datasets, "load_dataset", hub)
    source, detokenizer = evaluation_source(name)
    assert detokenizer == corpus.detokenizer and source.kind == "hf" and name in source.label
    detokenize = DETOKENIZERS[corpus.detokenizer] or (lambda text: text)
    assert list(source.read()) == [detokenize(text) for text in texts]
    if corpus.parquet_export:  # a loading script on the Hub: its Parquet export, the configuration as a folder
        export = {"revision": "refs/convert/parquet", "data_dir": corpus.config}
        assert hub.calls == [((corpus.path,), {"split": corpus.split, "streaming": True, **export})]
    else:
        assert hub.calls == [((corpus.path, corpus.config), {"split": corpus.split, "streaming": True})]
    other = "none" if corpus.detokenizer != "none" else "ptb"
    assert evaluation_source(name, detokenizer=other)[0].identity != source.identity  # cached apart


@pytest.mark.parametrize("exported", ["whole", "partial"])
def test_a_corpus_from_the_parquet_export_reads_only_its_configuration(tmp_path, exported):
    """The real ``datasets.load_dataset`` on a local folder laid out as the Hub's Parquet export (CONFIG/SPLIT/0000.parquet,
    no configuration names): pubmed's validation split, not arXiv's nor pubmed's training split. A split over the
    export's size limit is a folder partial-SPLIT holding its start; it is read as that split."""
    pyarrow, parquet = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    prefix = "partial-" if exported == "partial" else ""
    for config, split in (("pubmed", "validation"), ("arxiv", "validation"), ("pubmed", "train")):
        (tmp_path / config / (prefix + split)).mkdir(parents=True)
        table = pyarrow.table({"article": [f"{config} {split} {i} @-@ 1" for i in range(2)], "abstract": ["-", "-"]})
        parquet.write_table(table, tmp_path / config / (prefix + split) / "0000.parquet")
    corpus = dataclasses.replace(ZERO_SHOT_CORPORA["pubmed"], path=str(tmp_path))
    assert corpus.parquet_export
    assert list(corpus.source().read()) == ["pubmed validation 0 @-@ 1", "pubmed validation 1 @-@ 1"]


def test_without_network_a_corpus_says_how_to_use_a_local_copy(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ptb-text-only/ptb_text_only' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DDLMError) as excinfo:
        list(evaluation_source("ptb")[0].read())
    message = str(excinfo.value)
    assert "\n" not in message and "needs network" in message and "local copy" in message
    assert "save_to_disk('ptb-validation')" in message and "--data ptb-validation --detokenizer ptb" in message


def test_a_local_path_wins_over_a_corpus_name_and_unknown_detokenizers_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ptb").write_text("it 's here", encoding="utf-8")
    source, detokenizer = evaluation_source("ptb")
    assert source.kind == "files" and detokenizer is None and list(source.read()) == ["it 's here"]
    assert list(evaluation_source("ptb", detokenizer="ptb")[0].read()) == ["it's here"]
    with pytest.raises(DDLMError, match="unknown detokenizer 'moses'; choose from ptb, wikitext"):
        evaluation_source("ptb", detokenizer="moses")


# ----- ddlm eval end to end -----

RAW = [" = Title = \n", " The 1 @,@ 000 @-@ year war , fought ( mostly ) at sea , ended . \n",
       " It 's said that N ships sank ; others fled ! \n"] * 4


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A tiny random autoregressive model over printable ASCII (exact likelihoods, no Monte Carlo noise)."""
    tokenizer = CharTokenizer(list(string.printable))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, d_model=16, n_layers=1,
                                    n_heads=2, causal=True))
    process = Autoregressive(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    DiffusionPipeline(model, tokenizer, process, precision="fp32").save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def likelihood(model: Path, data: str, out: Path, *flags: str) -> dict:
    assert main(["eval", "--model", str(model), "--data", data, "--metrics", "likelihood", "--max-sequences", "0",
                 "--no-progress", "--json", str(out), *flags]) == 0
    return json.loads(out.read_text(encoding="utf-8"))["models"][str(model)]["likelihood"]


def test_ddlm_eval_detokenises_a_local_copy_as_the_corpus_name_would(model_dir, tmp_path, monkeypatch):
    """The same figures for: the text detokenised by hand first; a local file and a saved data set read with
    --detokenizer wikitext; the corpus name wikitext2 served by a stand-in Hub. Perplexity is exp(nats/token)."""
    monkeypatch.setenv("DDLM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "raw.txt").write_text("".join(RAW), encoding="utf-8")
    (tmp_path / "clean.txt").write_text(zero_shot.detokenize_wikitext("".join(RAW)), encoding="utf-8")
    datasets.Dataset.from_dict({"text": ["".join(RAW)]}).save_to_disk(str(tmp_path / "saved"))
    reference = likelihood(model_dir, str(tmp_path / "clean.txt"), tmp_path / "clean.json")
    assert reference["perplexity"] == pytest.approx(torch.tensor(reference["nats_per_token"]).exp().item())
    for data in ("raw.txt", "saved"):
        scored = likelihood(model_dir, str(tmp_path / data), tmp_path / f"{data}.json", "--detokenizer", "wikitext")
        assert scored == reference
    monkeypatch.setattr(datasets, "load_dataset", FakeHub([{"text": "".join(RAW)}]))
    assert likelihood(model_dir, "wikitext2", tmp_path / "hub.json") == reference
    assert likelihood(model_dir, str(tmp_path / "raw.txt"), tmp_path / "none.json") != reference  # not detokenised
