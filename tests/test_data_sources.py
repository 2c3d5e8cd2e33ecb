"""Where corpora come from: the built-in corpus, local files, and Hugging Face data sets (local only)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ddlm.cli import main
from ddlm.data import (
    BUILTIN_HELD_OUT_FRACTION,
    HFSelection,
    builtin_text,
    files,
    held_out_corpus,
    resolve_source,
    tokenize_corpus,
    tokenize_source,
)
from ddlm.errors import DDLMError
from ddlm.tokenizers import CharTokenizer, load_tokenizer
from ddlm.training import load_config, prepare_training
from ddlm.training.config import DataSettings
from ddlm.training.run import load_corpora

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def one_line_error(excinfo: pytest.ExceptionInfo[DDLMError], *words: str) -> None:
    message = str(excinfo.value)
    assert message and "\n" not in message
    for word in words:
        assert word in message, message


# --- the built-in corpus -----------------------------------------------------------------


def test_builtin_shakespeare_is_the_documented_file() -> None:
    text = builtin_text("shakespeare")
    data = text.encode("utf-8")
    assert len(data) == 1_115_394
    assert hashlib.sha256(data).hexdigest() == SHAKESPEARE_SHA256
    assert len(set(text)) == 65
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_builtin_name_resolves_to_one_document_and_is_recorded_by_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = resolve_source("shakespeare")
    assert (source.label, source.kind) == ("shakespeare", "builtin")
    assert source.read() == [builtin_text("shakespeare")]


def test_a_local_path_of_the_same_name_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("shakespeare").write_text("my own text", encoding="utf-8")
    source = resolve_source("shakespeare")
    assert (source.kind, source.label) == ("files", str(tmp_path / "shakespeare"))
    assert source.read() == ["my own text"]


def test_an_unknown_name_says_what_it_may_be(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DDLMError) as excinfo:
        resolve_source("shakespear")
    one_line_error(excinfo, "shakespear", "does not exist", "shakespeare", "hf:NAME")


def test_eval_name_means_exactly_the_text_training_holds_out(tmp_path) -> None:
    assert BUILTIN_HELD_OUT_FRACTION == DataSettings().valid_fraction
    text = builtin_text("shakespeare")
    tokenizer = CharTokenizer.from_texts([text])
    config = load_config()
    train, valid = load_corpora(config, tokenizer, "shakespeare", None, tmp_path)
    held_out = held_out_corpus(resolve_source("shakespeare"), tokenizer, tmp_path)
    np.testing.assert_array_equal(np.asarray(held_out.tokens), np.asarray(valid.tokens))
    np.testing.assert_array_equal(np.asarray(held_out.doc_starts), np.asarray(valid.doc_starts))
    # 1,115,394 characters + eos; the last round(10%) of those 1,115,395 tokens: 111,539 characters and eos.
    assert len(held_out) == 111_540 and len(train) + len(held_out) == len(text) + 1
    assert tokenizer.decode(np.asarray(held_out.tokens[:-1]).tolist()) == text[-111_539:]
    assert int(held_out.tokens[-1]) == tokenizer.eos_id


def test_other_sources_are_evaluated_whole(tmp_path) -> None:
    path = tmp_path / "valid.txt"
    path.write_text("held-out text", encoding="utf-8")
    tokenizer = CharTokenizer.from_texts(["held-out text"])
    corpus = held_out_corpus(resolve_source(path), tokenizer, tmp_path / "cache")
    assert tokenizer.decode(np.asarray(corpus.tokens).tolist()) == "held-out text"


# --- Hugging Face data sets, built locally in the test --------------------------------------


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")


TEXTS = ["The first story.", "  ", "A second one,\nwith two lines.", "Third."]


def test_saved_dataset_folder_is_read_by_its_column(datasets, tmp_path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"id": list(range(4)), "text": TEXTS}).save_to_disk(str(folder))
    source = resolve_source(folder)
    assert (source.kind, source.label) == ("saved-dataset", str(folder.resolve()))
    expected = [TEXTS[0], TEXTS[2], TEXTS[3]]  # whitespace-only documents are dropped, as in files
    assert list(source.read()) == expected
    tokenizer = CharTokenizer.from_texts(TEXTS)
    corpus = tokenize_source(source, tokenizer, tmp_path / "cache")
    reference = tokenize_corpus(expected, tokenizer, tmp_path / "reference")
    np.testing.assert_array_equal(np.asarray(corpus.tokens), np.asarray(reference.tokens))


def test_saved_dataset_dict_picks_the_split_and_field(datasets, tmp_path) -> None:
    folder = tmp_path / "dict"
    train = datasets.Dataset.from_dict({"body": ["train a", "train b"]})
    valid = datasets.Dataset.from_dict({"body": ["valid a"]})
    datasets.DatasetDict({"train": train, "validation": valid}).save_to_disk(str(folder))
    read = lambda split: list(resolve_source(folder, hf=HFSelection(None, split, "body")).read())  # noqa: E731
    assert read("train") == ["train a", "train b"]
    assert read("validation") == ["valid a"]
    with pytest.raises(DDLMError) as excinfo:
        read("test")
    one_line_error(excinfo, "'test'", "['train', 'validation']", "data.hf_split")
    with pytest.raises(DDLMError) as excinfo:
        resolve_source(folder).read()
    one_line_error(excinfo, "no column 'text'", "body", "data.hf_field")


def test_separator_splits_dataset_rows(datasets, tmp_path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a<|endoftext|>b", "c"]}).save_to_disk(str(folder))
    assert list(resolve_source(folder, separator="<|endoftext|>").read()) == ["a", "b", "c"]


@pytest.fixture
def json_dataset(tmp_path) -> Path:
    """A data-set folder of JSON-lines files, one per split, that `load_dataset` reads offline."""
    folder = tmp_path / "jsonset"
    folder.mkdir()
    for split, texts in {"train": TEXTS, "validation": ["Held out."]}.items():
        lines = [json.dumps({"text": text, "n": i}) for i, text in enumerate(texts)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_hf_source_streams_through_load_dataset(datasets, json_dataset, tmp_path) -> None:
    name = f"hf:{json_dataset}"
    source = resolve_source(name)
    assert (source.label, source.kind) == (name, "hf")
    assert list(source.read()) == [TEXTS[0], TEXTS[2], TEXTS[3]]
    assert list(source.read()) == [TEXTS[0], TEXTS[2], TEXTS[3]]  # a second pass streams again
    assert list(resolve_source(name, hf=HFSelection(split="validation")).read()) == ["Held out."]
    tokenizer = CharTokenizer.from_texts(TEXTS)
    corpus = tokenize_source(source, tokenizer, tmp_path / "cache")
    for path in json_dataset.iterdir():
        path.unlink()  # the cache is keyed by the name and settings: a hit streams nothing
    again = tokenize_source(resolve_source(name), tokenizer, tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(corpus.tokens))
    other_split = resolve_source(name, hf=HFSelection(split="validation"))
    assert other_split.identity != source.identity


def test_hf_source_errors_are_one_line(datasets, json_dataset) -> None:
    with pytest.raises(DDLMError) as excinfo:
        list(resolve_source(f"hf:{json_dataset}", hf=HFSelection(split="test")).read())
    one_line_error(excinfo, "data.hf_split")
    with pytest.raises(DDLMError) as excinfo:
        list(resolve_source(f"hf:{json_dataset}", hf=HFSelection(field="body")).read())
    one_line_error(excinfo, "row 0", "'body'", "data.hf_field")
    with pytest.raises(DDLMError) as excinfo:
        resolve_source("hf:")
    one_line_error(excinfo, "hf:roneneldan/TinyStories")


def test_hub_name_without_network_is_a_one_line_error(datasets) -> None:
    assert datasets.config.HF_HUB_OFFLINE, "conftest must switch the Hub off for the tests"
    with pytest.raises(DDLMError) as excinfo:
        list(resolve_source("hf:ddlm-tests/no-such-dataset").read())
    one_line_error(excinfo, "'ddlm-tests/no-such-dataset'", "network", "save_to_disk")


@pytest.mark.parametrize("hub", ["silent", "answers", "offline mode"])
def test_a_hub_that_does_not_answer_fails_at_once_not_after_the_retries_of_datasets(datasets, monkeypatch, hub) -> None:
    """A machine without network (and without HF_HUB_OFFLINE) asks the Hub once; datasets would retry for 26 s."""
    import huggingface_hub

    served = [{"text": "A story."}]

    def dataset_info(self, name, **kwargs):
        if hub == "offline mode":
            pytest.fail("in offline mode nothing is asked of the Hub")
        if hub == "silent":
            raise ConnectionError("[Errno -2] Name or service not known")  # the transport's error, whatever its type

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", hub == "offline mode")
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: iter(served))
    if hub == "silent":
        with pytest.raises(DDLMError) as excinfo:
            list(resolve_source("hf:someone/stories").read())
        one_line_error(excinfo, "'someone/stories'", "does not answer", "save_to_disk")
    else:
        assert list(resolve_source("hf:someone/stories").read()) == ["A story."]


def test_missing_datasets_package_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(DDLMError) as excinfo:
        list(resolve_source("hf:roneneldan/TinyStories").read())
    one_line_error(excinfo, "datasets", 'pip install "ddlm[hf]"')


# --- training and evaluation on named sources --------------------------------------------


def test_a_fresh_run_reads_its_corpus_file_once(tmp_path, monkeypatch) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(builtin_text("shakespeare")[:5000], encoding="utf-8")
    reads = []
    read_text = files._read_text
    monkeypatch.setattr(files, "_read_text", lambda path: reads.append(path) or read_text(path))
    prepare_training(load_config("tiny"), tmp_path / "run", data=corpus, device="cpu",
                     cache_dir=tmp_path / "cache", show_progress=False)
    assert reads == [corpus]


def train(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """``ddlm train`` (a new run with the tiny preset, unless resumed) and its stderr."""
    preset = [] if "--resume" in args else ["--preset", "tiny"]
    code = main(["train", *preset, "--no-progress", "--cache-dir", str(tmp_path / "cache"), *args])
    return code, capsys.readouterr().err


def test_train_without_data_uses_the_builtin_corpus_resumes_and_evaluates(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDLM_CACHE_DIR", str(tmp_path / "cache"))  # where eval caches its tokens
    code, err = train(["--out", "run", "--max-steps", "2"], tmp_path, capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "built-in corpus" in line]
    assert len(notes) == 1 and "'shakespeare'" in notes[0]
    run = json.loads(Path("run/run.json").read_text(encoding="utf-8"))
    assert (run["data"], run["valid"]) == ("shakespeare", None)

    code, err = train(["--out", "run", "--resume", "--max-steps", "3"], tmp_path, capsys)
    assert code == 0, err
    assert "built-in corpus" not in err
    assert json.loads(Path("run/training_summary.json").read_text(encoding="utf-8"))["steps"] == 3

    code = main(["eval", "--model", "run", "--data", "shakespeare", "--metrics", "likelihood", "--draws", "2",
                 "--max-sequences", "4", "--no-progress"])
    assert code == 0
    assert "| run |" in capsys.readouterr().out


@pytest.fixture
def stories(tmp_path) -> Path:
    """A JSON-lines data set with a train and a validation split, enough for a few tiny batches."""
    folder = tmp_path / "stories"
    folder.mkdir()
    for split, numbers in {"train": range(120), "validation": range(120, 150)}.items():
        lines = [json.dumps({"text": f"story {i}: once upon a time."}) for i in numbers]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_train_on_a_dataset_by_name_evaluate_and_resume_from_the_token_cache(
    datasets, stories, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("DDLM_CACHE_DIR", str(tmp_path / "eval-cache"))
    name = f"hf:{stories}"
    code, err = train(["--data", name, "--valid", name, "--out", str(tmp_path / "run"), "--max-steps", "2"],
                      tmp_path, capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert (run["data"], run["valid"]) == (name, name)
    assert run["run_config"]["data"]["hf_split"] == "train"
    tokenizer = load_tokenizer(tmp_path / "run")
    assert set(tokenizer.decode(list(range(tokenizer.vocab_size - 3)))) == set("".join(
        json.loads(line)["text"] for line in (stories / "train.jsonl").read_text(encoding="utf-8").splitlines()))
    report = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tmp_path / "run"), "--data", name, "--metrics", "likelihood", "--draws", "1",
                 "--max-sequences", "0", "--no-progress", "--json", str(report)])
    assert code == 0
    validation_chars = sum(len(f"story {i}: once upon a time.") for i in range(120, 150))
    scored = json.loads(report.read_text(encoding="utf-8"))["models"][str(tmp_path / "run")]["likelihood"]
    assert 0 < validation_chars - scored["bytes"] < 32  # the validation split, in whole rows of 32 tokens
    shutil.rmtree(stories)  # resuming reads the token cache: the data set is not streamed again
    code, err = train(["--out", str(tmp_path / "run"), "--resume", "--max-steps", "3"], tmp_path, capsys)
    assert code == 0, err


def test_train_on_an_unreachable_dataset_is_a_one_line_cli_error(datasets, tmp_path, capsys) -> None:
    code, err = train(["--data", "hf:ddlm-tests/no-such-dataset", "--out", str(tmp_path / "run")], tmp_path, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: cannot load Hugging Face data set 'ddlm-tests/no-such-dataset'")


def test_a_dataset_loading_script_is_a_one_line_cli_error(datasets, tmp_path, capsys) -> None:
    script = tmp_path / "scripted"
    script.mkdir()
    (script / "scripted.py").write_text("import datasets\n", encoding="utf-8")  # datasets 4 and later refuse to run it
    code, err = train(["--data", f"hf:{script}", "--out", str(tmp_path / "run")], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "Dataset scripts are no longer supported" in err and "refs/convert/parquet" in err
