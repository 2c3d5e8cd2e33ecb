"""Tests of ddlm.data: reading corpora, the token cache and the batch loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddlm.data import BatchLoader, TokenizedCorpus, default_cache_dir, read_documents, tokenize_corpus
from ddlm.errors import DDLMError
from tests import conftest


class ByteTokenizer:
    """Stand-in tokenizer: ids 0..255 are UTF-8 bytes; mask 256, eos 257, pad 258."""

    kind = "bytes"
    vocab_size = 259
    mask_id, eos_id, pad_id = 256, 257, 258

    def __init__(self, fingerprint: str = "bytes-v1") -> None:
        self._fingerprint = fingerprint
        self.encode_calls = 0

    def encode(self, text: str) -> list[int]:
        self.encode_calls += 1
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return self._fingerprint


class Reiterable:
    """An iterable that calls ``make`` afresh on each pass, as a streamed data set does."""

    def __init__(self, make) -> None:
        self.make = make

    def __iter__(self):
        return self.make()


def stream_corpus(n: int) -> TokenizedCorpus:
    """A corpus whose token at offset i is i, so a row's first token is its offset."""
    return TokenizedCorpus(np.arange(n, dtype=np.uint16), np.array([0], dtype=np.int64))


def doc_corpus(lengths: list[int], eos: int = 257) -> TokenizedCorpus:
    """Documents of the given lengths (eos included); document d holds tokens d, d, ..., eos."""
    docs = [[d % 200] * (length - 1) + [eos] for d, length in enumerate(lengths)]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return TokenizedCorpus(np.array(sum(docs, []), dtype=np.uint16), starts)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DDLMError], *words: str) -> None:
    message = str(excinfo.value)
    assert message and "\n" not in message
    for word in words:
        assert word in message


# --- sources ---------------------------------------------------------------------------


def test_read_txt_file_keeps_text_exactly(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("héllo\r\nworld\n".encode())
    assert read_documents(path) == ["héllo\r\nworld\n"]


def test_read_folder_sorted_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not text", encoding="utf-8")
    assert read_documents(tmp_path) == ["first", "second", "third"]


def test_read_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": "one", "id": 1}), "", "   ", json.dumps({"text": "two\nlines"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_documents(path) == ["one", "two\nlines"]


def test_separator_splits_strips_newlines_and_drops_empty(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("\n<|endoftext|>A story.\nEnd.\n<|endoftext|>\n\nB\n<|endoftext|>", encoding="utf-8")
    assert read_documents(path, separator="<|endoftext|>") == ["A story.\nEnd.", "B"]


def test_separator_applies_to_jsonl_texts(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": "a|b"}) + "\n" + json.dumps({"text": "c"}), encoding="utf-8")
    assert read_documents(path, separator="|") == ["a", "b", "c"]


def test_missing_path_error(tmp_path: Path) -> None:
    with pytest.raises(DDLMError) as excinfo:
        read_documents(tmp_path / "nope.txt")
    assert_one_line_error(excinfo, "nope.txt", "does not exist")


def test_folder_without_txt_files_error(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DDLMError) as excinfo:
        read_documents(tmp_path)
    assert_one_line_error(excinfo, "no .txt files")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DDLMError) as excinfo:
        read_documents(path)
    assert_one_line_error(excinfo, "empty.txt", "no text")


def test_empty_after_separator_error(tmp_path: Path) -> None:
    path = tmp_path / "seps.txt"
    path.write_text("<|endoftext|>\n<|endoftext|>", encoding="utf-8")
    with pytest.raises(DDLMError) as excinfo:
        read_documents(path, separator="<|endoftext|>")
    assert_one_line_error(excinfo, "no text")


def test_invalid_utf8_error_names_file_and_offset(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"abc\xffdef")
    with pytest.raises(DDLMError) as excinfo:
        read_documents(tmp_path)
    assert_one_line_error(excinfo, "bad.txt", "offset 3", "re-save it as UTF-8")


@pytest.mark.parametrize(
    ("line", "problem"),
    [("{not json", "not valid JSON"), ('{"body": "x"}', '"text"'), ('{"text": 3}', '"text"'), ("[1]", '"text"')],
)
def test_bad_jsonl_line_error_names_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DDLMError) as excinfo:
        read_documents(path)
    assert_one_line_error(excinfo, "line 3", "bad.jsonl", problem)


# --- cache -----------------------------------------------------------------------------


def test_tokenize_appends_eos_and_records_starts(tmp_path: Path) -> None:
    corpus = tokenize_corpus(["ab", "é"], ByteTokenizer(), tmp_path)
    assert corpus.tokens.dtype == np.uint16
    assert corpus.tokens.tolist() == [97, 98, 257, 0xC3, 0xA9, 257]
    assert corpus.doc_starts.tolist() == [0, 3]
    assert len(corpus) == 6


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    tokenizer = ByteTokenizer()
    tokenizer.vocab_size, tokenizer.eos_id = 70000, 69999
    assert tokenize_corpus(["a"], tokenizer, tmp_path).tokens.tolist() == [97, 69999]
    assert tokenize_corpus(["a"], tokenizer, tmp_path).tokens.dtype == np.uint32


def test_cache_hit_does_no_tokenisation(tmp_path: Path) -> None:
    docs = ["first document", "second"]
    first = tokenize_corpus(docs, ByteTokenizer(), tmp_path)
    tokenizer = ByteTokenizer()
    second = tokenize_corpus(docs, tokenizer, tmp_path)
    assert tokenizer.encode_calls == 0
    assert isinstance(second.tokens, np.memmap)
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.doc_starts, second.doc_starts)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_cache_key_changes_with_content_and_fingerprint(tmp_path: Path) -> None:
    tokenize_corpus(["abc"], ByteTokenizer(), tmp_path)
    for docs, fingerprint in [(["abd"], "bytes-v1"), (["ab", "c"], "bytes-v1"), (["abc"], "bytes-v2")]:
        tokenizer = ByteTokenizer(fingerprint)
        tokenize_corpus(docs, tokenizer, tmp_path)
        assert tokenizer.encode_calls == len(docs)
    assert len(list(tmp_path.glob("*.tokens.bin"))) == 4


def test_incomplete_cache_is_rebuilt(tmp_path: Path) -> None:
    tokenize_corpus(["abc"], ByteTokenizer(), tmp_path)
    (starts,) = tmp_path.glob("*.starts.npy")
    starts.unlink()  # as after a crash between the two writes
    tokenizer = ByteTokenizer()
    assert tokenize_corpus(["abc"], tokenizer, tmp_path).tokens.tolist() == [97, 98, 99, 257]
    assert tokenizer.encode_calls == 1


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDLM_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("DDLM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "ddlm"


def test_split_takes_last_fraction_as_valid() -> None:
    corpus = doc_corpus([4, 3, 3])  # starts 0, 4, 7; 10 tokens
    train, valid = corpus.split(0.2)
    assert (len(train), len(valid)) == (8, 2)
    assert train.tokens.tolist() == corpus.tokens[:8].tolist()
    assert valid.tokens.tolist() == corpus.tokens[8:].tolist()
    assert train.doc_starts.tolist() == [0, 4, 7]
    assert valid.doc_starts.tolist() == [0]  # the cut document continues in valid

    train, valid = corpus.split(0.3)  # cut exactly at a document start
    assert train.doc_starts.tolist() == [0, 4]
    assert valid.doc_starts.tolist() == [0]
    assert valid.tokens.tolist() == corpus.tokens[7:].tolist()

    train, valid = corpus.split(0.0)
    assert (len(train), len(valid), valid.doc_starts.tolist()) == (10, 0, [])


def test_split_fraction_out_of_range() -> None:
    with pytest.raises(DDLMError) as excinfo:
        stream_corpus(10).split(1.0)
    assert_one_line_error(excinfo, "[0, 1)")


def test_identity_keys_the_cache_and_a_hit_reads_no_documents(tmp_path: Path) -> None:
    def stream():
        yield from ["one", "", "two"]

    first = tokenize_corpus(Reiterable(stream), ByteTokenizer(), tmp_path, identity="hf:x")
    assert first.tokens.tolist() == [111, 110, 101, 257, 257, 116, 119, 111, 257]
    assert first.doc_starts.tolist() == [0, 4, 5]

    def unreadable():
        raise AssertionError("a cache hit must not read the documents")
        yield

    again = tokenize_corpus(Reiterable(unreadable), ByteTokenizer(), tmp_path, identity="hf:x")
    np.testing.assert_array_equal(again.tokens, first.tokens)
    other = tokenize_corpus(["abc"], ByteTokenizer(), tmp_path, identity="hf:y")
    assert other.tokens.tolist() == [97, 98, 99, 257]


def test_empty_stream_error_leaves_no_cache(tmp_path: Path) -> None:
    with pytest.raises(DDLMError) as excinfo:
        tokenize_corpus(iter([]), ByteTokenizer(), tmp_path, identity="empty")
    assert_one_line_error(excinfo, "no documents")
    assert not list(tmp_path.iterdir())


def test_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    tokenize_corpus(["abc", "de"], ByteTokenizer(), tmp_path)
    (tokens,) = tmp_path.glob("*.tokens.bin")
    tokens.write_bytes(tokens.read_bytes()[:6])  # the second document lost
    tokenizer = ByteTokenizer()
    assert tokenize_corpus(["abc", "de"], tokenizer, tmp_path).tokens.tolist() == [97, 98, 99, 257, 100, 101, 257]
    assert tokenizer.encode_calls == 2


def test_real_shakespeare_cached_length(shakespeare_path: Path, tmp_path: Path) -> None:
    documents = read_documents(shakespeare_path)
    corpus = tokenize_corpus(documents, ByteTokenizer(), tmp_path)
    cached = tokenize_corpus(documents, ByteTokenizer(), tmp_path)
    assert len(cached) == len(corpus) == shakespeare_path.stat().st_size + 1
    assert int(cached.tokens[-1]) == ByteTokenizer.eos_id


# --- loader ----------------------------------------------------------------------------


def take(loader: BatchLoader, count: int) -> list[torch.Tensor]:
    return [next(loader) for _ in range(count)]


def test_packed_rows_are_slices_and_each_appears_once_per_epoch() -> None:
    n, length = 103, 8
    loader = BatchLoader(stream_corpus(n), batch_size=1, context_length=length, seed=3)
    offsets = set()
    for epoch in range(4):
        starts = []
        while loader.state_dict()["epoch"] == epoch:
            (row,) = next(loader)
            assert row.dtype == torch.long and row.shape == (length,)
            start = int(row[0])
            assert row.tolist() == list(range(start, start + length))
            starts.append(start)
        offset = min(starts)
        assert offset < length
        assert sorted(starts) == list(range(offset, n - length + 1, length))
        offsets.add(offset)
    assert len(offsets) > 1  # the offset changes between epochs


def test_packed_batches_span_epochs() -> None:
    loader = BatchLoader(stream_corpus(40), batch_size=7, context_length=8, seed=0)
    batches = take(loader, 10)
    assert all(b.shape == (7, 8) for b in batches)
    assert loader.state_dict()["epoch"] >= 14  # 70 rows, at most 5 per epoch


def test_padded_rows_hold_whole_documents() -> None:
    lengths = [3, 5, 12, 1, 6]
    corpus = doc_corpus(lengths)
    loader = BatchLoader(corpus, batch_size=5, context_length=8, layout="padded", pad_id=258, seed=1)
    (batch,) = take(loader, 1)
    assert loader.state_dict() == {"seed": 1, "epoch": 1, "position": 0}
    seen = []
    for row in batch.tolist():
        doc = row[0] if row[0] != 257 else 3
        expected = corpus.tokens[corpus.doc_starts[doc] :][: min(lengths[doc], 8)].tolist()
        assert row == expected + [258] * (8 - len(expected))
        if lengths[doc] <= 8:
            assert expected[-1] == 257
        seen.append(doc)
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_same_seed_same_batches_different_seed_different() -> None:
    corpus = stream_corpus(500)
    first = take(BatchLoader(corpus, 4, 16, seed=7), 5)
    again = take(BatchLoader(corpus, 4, 16, seed=7), 5)
    other = take(BatchLoader(corpus, 4, 16, seed=8), 5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_state_dict_round_trip_across_epoch_boundary(layout: str) -> None:
    corpus = doc_corpus([5, 9, 2, 7, 4, 6, 3]) if layout == "padded" else stream_corpus(61)
    make = lambda: BatchLoader(corpus, 3, 6, layout=layout, pad_id=258, seed=11)  # noqa: E731
    original = make()
    take(original, 2)
    state = json.loads(json.dumps(original.state_dict()))
    assert set(state) == {"seed", "epoch", "position"}
    expected = take(original, 6)  # crosses at least two epoch boundaries (~7-10 rows/epoch)
    assert original.state_dict()["epoch"] >= 2
    restored = BatchLoader(corpus, 3, 6, layout=layout, pad_id=258, seed=0)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, take(restored, 6)))


def test_load_state_dict_rejects_foreign_state() -> None:
    loader = BatchLoader(stream_corpus(50), 2, 10)
    with pytest.raises(DDLMError) as excinfo:
        loader.load_state_dict({"seed": 0, "epoch": 0, "position": 1000})
    assert_one_line_error(excinfo, "does not fit")


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_rank_slices_are_disjoint_and_cover_the_global_batch(layout: str) -> None:
    corpus = stream_corpus(400) if layout == "packed" else doc_corpus(list(range(2, 30)))
    options = dict(layout=layout, pad_id=258, seed=5)
    whole = take(BatchLoader(corpus, 6, 8, **options), 4)
    parts = [take(BatchLoader(corpus, 2, 8, rank=r, world_size=3, **options), 4) for r in range(3)]
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([p[step] for p in parts]), batch)
    if layout == "packed":  # packed rows are distinct, so the rank slices are disjoint
        firsts = [set(p[0][:, 0].tolist()) for p in parts]
        assert not (firsts[0] & firsts[1] or firsts[0] & firsts[2] or firsts[1] & firsts[2])


def test_eval_batches_cover_all_rows_in_order() -> None:
    loader = BatchLoader(stream_corpus(45), 2, 8, seed=9)
    batches = list(loader.iter_eval_batches(2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert torch.cat(batches)[:, 0].tolist() == [0, 8, 16, 24, 32]
    assert loader.state_dict() == {"seed": 9, "epoch": 0, "position": 0}

    padded = BatchLoader(doc_corpus([3, 4, 5]), 2, 4, layout="padded", pad_id=258)
    rows = torch.cat(list(padded.iter_eval_batches())).tolist()
    assert rows == [[0, 0, 257, 258], [1, 1, 1, 257], [2, 2, 2, 2]]


def test_short_corpus_error() -> None:
    with pytest.raises(DDLMError) as excinfo:
        BatchLoader(stream_corpus(10), 2, 16)
    assert_one_line_error(excinfo, "10 tokens", "context_length 16", "smaller context_length")


def test_corpus_of_exactly_one_row() -> None:
    loader = BatchLoader(stream_corpus(16), 3, 16)
    assert all(b.tolist() == [list(range(16))] * 3 for b in take(loader, 3))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"layout": "rows"}, "layout"), ({"rank": 2, "world_size": 2}, "rank"), ({"layout": "padded"}, "pad_id")],
)
def test_bad_loader_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(DDLMError) as excinfo:
        BatchLoader(stream_corpus(100), 2, 8, **kwargs)
    assert_one_line_error(excinfo, word)


@pytest.mark.parametrize("fixture", ["gpt2_dir", "tinystories_dir"])
def test_a_missing_data_set_skips_saying_what_it_is_and_how_to_get_it(fixture, tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DATA_DIR", tmp_path)
    with pytest.raises(pytest.skip.Exception) as skipped:
        getattr(conftest, fixture).__wrapped__()
    reason = str(skipped.value)
    assert "licence" in reason and "hf download" in reason and str(tmp_path) in reason and "DDLM_DATA_DIR" in reason
