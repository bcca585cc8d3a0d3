"""Corpora: sources, deterministic splits by document, shuffling, mixing, the default corpus,
cutting large files into blocks, skipping binary files, and specifications."""

import collections
import itertools
import json
import logging
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum.data import Corpus, Source, default_corpus, split_blocks, split_of
from cerebrum.data.corpus import SPLITS


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(40):
        (tmp_path / "a" / f"doc{i}.txt").write_text(f"text number {i}\n" * 3)
    (tmp_path / "a" / "skip.bin").write_bytes(b"\x00\x01")
    with open(tmp_path / "chat.jsonl", "w") as out:
        for i in range(60):
            out.write(json.dumps({"text": f"hello {i}", "meta": i}) + "\n")
    return tmp_path


def test_split_is_a_pure_function_of_the_id():
    ids = [f"doc-{i}" for i in range(20000)]
    splits = [split_of(i, 0.1, 0.05) for i in ids]
    assert splits == [split_of(i, 0.1, 0.05) for i in ids]
    counts = collections.Counter(splits)
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.05) < 0.01


def test_splits_partition_the_documents(tree):
    corpus = Corpus([tree / "a", tree / "chat.jsonl"], validation=0.2, test=0.2)
    parts = {s: {d.id for d in corpus.documents(s)} for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 100  # 40 files + 60 lines; .bin skipped
    assert not (parts["train"] & parts["validation"]) and not (parts["train"] & parts["test"])
    assert all(len(p) > 5 for p in parts.values())


def test_jsonl_documents_and_their_errors(tree):
    docs = list(Corpus(tree / "chat.jsonl", validation=0, test=0).documents(shuffle=False))
    assert docs[0].text == "hello 0" and docs[0].id.endswith("chat.jsonl:1")
    bad = tree / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no string field 'text'"):
        list(Corpus(bad, validation=0, test=0).documents())
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not JSON"):
        list(Corpus(bad, validation=0, test=0).documents())


def test_shuffling_is_deterministic_and_changes_with_the_epoch(tree):
    corpus = Corpus(tree / "a", validation=0, test=0)
    first = [d.id for d in corpus.documents(seed=1, epoch=0)]
    assert first == [d.id for d in corpus.documents(seed=1, epoch=0)]
    assert first != [d.id for d in corpus.documents(seed=1, epoch=1)]
    assert sorted(first) == sorted(d.id for d in corpus.documents(shuffle=False))


def test_stream_mixes_subsets_by_weight_and_cycles(tree):
    corpus = Corpus({"files": [tree / "a"], "chat": [tree / "chat.jsonl"]},
                    weights={"files": 3.0, "chat": 1.0}, validation=0, test=0)
    drawn = list(itertools.islice(corpus.stream(seed=0), 400))  # more than either subset
    from_files = sum(d.id.endswith(".txt") for d in drawn)
    assert 0.68 < from_files / 400 < 0.82
    assert [d.id for d in drawn] == [d.id for d in itertools.islice(corpus.stream(seed=0), 400)]


def test_bad_corpora(tree):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list(Corpus(tree / "nothing-*.txt").documents())
    (tree / "empty").mkdir()
    with pytest.raises(ValueError, match="hold no files"):
        list(Corpus(tree / "empty").documents())
    with pytest.raises(ValueError, match="unknown subsets"):
        Corpus({"a": [tree / "a"]}, weights={"b": 1.0})
    with pytest.raises(ValueError, match="split must be one of"):
        list(Corpus(tree / "a").documents("dev"))
    held_out = next(tree / f"h{i}.txt" for i in itertools.count()
                    if split_of(str(tree / f"h{i}.txt"), 0.5, 0.0) == "validation")
    held_out.write_text("only document")
    with pytest.raises(ValueError, match="no documents in the train split"):
        next(Corpus(held_out, validation=0.5, test=0.0).stream())


def test_default_corpus_is_the_standard_library():
    corpus = default_corpus()
    files = corpus.subsets["python-stdlib"].files()
    assert len(files) > 500 and all(f.suffix == ".py" for f in files)
    doc = next(corpus.documents("validation"))
    assert doc.text and doc.id.endswith(".py")
    assert corpus.describe() == str(corpus) == "python-stdlib (default)"
    assert corpus.document_bytes is None and corpus.skipped_files == {}


# Cutting large files into documents, and the held-out tail of a cut file.

LIMIT = 16384


@pytest.fixture
def book(tmp_path):
    """A 200 KB text file of seeded random lines (some with two-byte characters)."""
    rng = random.Random(0)
    words = ["the", "river", "ran", "north", "café", "über", "and", "slowly", "", "x" * 40]
    lines, size = [], 0
    while size < 200_000:
        line = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 25))) + "\n"
        lines.append(line)
        size += len(line.encode())
    path = tmp_path / "book.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def blocks_by_split(corpus, **kw):
    return {s: [d for d in corpus.documents(s, shuffle=False, **kw)] for s in SPLITS}


def index_of(doc):
    return int(doc.id.rpartition("#")[2])


def test_a_book_is_cut_on_lines_and_its_end_is_held_out(book):
    corpus = Corpus(book)
    assert corpus.document_bytes == LIMIT
    parts = blocks_by_split(corpus)
    blocks = sorted((d for p in parts.values() for d in p), key=index_of)
    n = len(blocks)
    assert n > 10 and [d.id for d in blocks] == [f"{book}#{i}" for i in range(n)]
    assert "".join(d.text for d in blocks) == book.read_text(encoding="utf-8")
    sizes = [len(d.text.encode()) for d in blocks]
    assert all(size <= LIMIT for size in sizes)
    assert all(d.text.endswith("\n") for d in blocks)
    # each block ends at the *last* newline within the limit: the next line would not fit
    for size, following in zip(sizes[:-1], blocks[1:], strict=True):
        assert size + len(following.text.splitlines(keepends=True)[0].encode()) > LIMIT
    # the held-out text is the file's end: test last, validation before it (1% of n, at least 1)
    n_test, n_val = max(1, round(n * 0.01)), max(1, round(n * 0.01))
    assert [index_of(d) for d in parts["test"]] == list(range(n - n_test, n))
    assert [index_of(d) for d in parts["validation"]] == list(range(n - n_test - n_val,
                                                                     n - n_test))
    assert [index_of(d) for d in parts["train"]] == list(range(n - n_test - n_val))


def test_the_splits_of_cut_files_are_stable_across_calls_and_file_orders(book, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"line {i} of another file\n" for i in range(3000)))
    forward = Corpus([book, other], validation=0.1, test=0.05)
    backward = Corpus([other, book], validation=0.1, test=0.05)
    ids = {s: sorted(d.id for d in forward.documents(s, seed=3)) for s in SPLITS}
    assert all(ids[s] for s in SPLITS)
    assert not set(ids["train"]) & set(ids["validation"])
    assert not set(ids["validation"]) & set(ids["test"])
    assert not set(ids["train"]) & set(ids["test"])
    for corpus, seed in [(forward, 3), (forward, 4), (backward, 0)]:
        assert {s: sorted(d.id for d in corpus.documents(s, seed=seed)) for s in SPLITS} == ids


def test_document_bytes_none_keeps_files_whole(book):
    docs = list(Corpus(book, validation=0, test=0, document_bytes=None).documents())
    assert [d.id for d in docs] == [str(book)]
    assert docs[0].text == book.read_text(encoding="utf-8")


def test_a_line_longer_than_the_block_is_cut_at_the_limit_not_dropped(tmp_path):
    path = tmp_path / "long.txt"
    text = "short\n" + "é" * 3000 + "a" * 1001 + "\nend\r\nmore\r\n" + "b" * 2500
    text += "\n" + "c" * 999 + "\r\n" + "d" * 5  # a CR LF across the limit stays together
    path.write_bytes(text.encode())
    docs = list(Corpus(path, validation=0, test=0, document_bytes=1000).documents(
        shuffle=False))
    assert "".join(d.text for d in docs) == path.read_text(encoding="utf-8")
    assert all(0 < len(d.text.encode()) <= 1000 for d in docs)
    assert docs[0].text == "short\n"  # the long line starts a new block
    assert docs[1].text == "é" * 500  # 1000 bytes of two-byte characters, none split
    assert [d.text for d in docs[-2:]] == ["c" * 999, "\nddddd"]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("ab\r\ncd\r\n\r\nxyz\r\n" * 3 + "é\r\n").encode())
    for limit in range(1, 12):  # a CR LF is never split, whatever the limit
        blocks = [d.text for d in Source([str(crlf)]).read(crlf, document_bytes=limit)]
        assert "".join(blocks) == crlf.read_text(encoding="utf-8")


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from(["a", "b", "é", "€", "😀", "\n", " "]), max_size=300),
       limit=st.integers(1, 40))
def test_cutting_keeps_all_text_and_ends_blocks_at_the_last_newline(tmp_path_factory, text,
                                                                    limit):
    path = tmp_path_factory.mktemp("cut") / "f.txt"
    path.write_bytes(text.encode())
    blocks = [d.text for d in Source([str(path)]).read(path, document_bytes=limit)]
    if len(text.encode()) <= limit:
        assert blocks == [text]  # small files stay whole
        return
    assert "".join(blocks) == text
    position = 0
    for block in blocks:
        size = len(block.encode())
        position += len(block)
        rest = text[position:]
        assert block and (size <= limit or len(block) == 1)  # over only for one wide character
        if not rest:
            continue
        if block.endswith("\n"):  # the last newline within the limit: the next does not fit
            newline = rest.find("\n")
            reach = rest if newline < 0 else rest[:newline + 1]
            assert size + len(reach.encode()) > limit
        else:  # a piece of a line longer than the limit, cut at the limit (whole characters)
            assert "\n" not in block and size > limit - 4


def test_split_blocks_follows_the_rule_and_keeps_a_train_block():
    assert split_blocks(100, 0.01, 0.01) == (98, 1, 1)
    assert split_blocks(100, 0.1, 0.05) == (85, 10, 5)
    assert split_blocks(13, 0.01, 0.0) == (12, 1, 0)
    assert split_blocks(2, 0.01, 0.01) is None and split_blocks(2, 0.01, 0.0) == (1, 1, 0)
    assert split_blocks(1, 0.0, 0.0) == (1, 0, 0)
    for validation, test in [(0.01, 0.01), (0.45, 0.45), (0.3, 0.0), (0.0, 0.6), (0.2, 0.5)]:
        needed = 1 + (validation > 0) + (test > 0)
        for n in range(needed, 60):
            n_train, n_val, n_test = split_blocks(n, validation, test)
            assert n_train + n_val + n_test == n and n_train >= 1
            assert (n_val >= 1) == (validation > 0) and (n_test >= 1) == (test > 0)
            rule = (max(1, round(n * validation)) if validation else 0,
                    max(1, round(n * test)) if test else 0)
            if sum(rule) < n:
                assert (n_val, n_test) == rule


def test_a_file_of_too_few_blocks_goes_to_one_split_by_its_path(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("a" * 9 + "\n" + "b" * 9 + "\n")
    corpus = Corpus(path, validation=0.3, test=0.3, document_bytes=10)
    parts = {s: [d.id for d in corpus.documents(s)] for s in SPLITS}
    home = split_of(str(path), 0.3, 0.3)
    assert sorted(parts[home]) == [f"{path}#0", f"{path}#1"]
    assert sum(len(p) for p in parts.values()) == 2


# Binary, undecodable and empty files.


def test_binary_and_undecodable_files_are_skipped_and_counted(tmp_path, caplog):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha\n")
    (docs / "b.md").write_text("beta\n" * 5000)  # cut into blocks
    (docs / "nul.txt").write_bytes(b"text then \x00 binary")
    (docs / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (docs / "late.txt").write_bytes(b"ok\n" * 4000 + b"\xff\n")  # bad byte past 8 KiB
    (docs / "late_big.txt").write_bytes(b"ok\n" * 9000 + b"\xfe\n")  # cut, bad near its end
    corpus = Corpus(docs, validation=0, test=0, document_bytes=4096)
    with caplog.at_level(logging.WARNING, logger="cerebrum.data.corpus"):
        assert sorted(Path(p).name for p in corpus.skipped_files) == ["latin1.txt", "nul.txt"]
        assert len(caplog.records) == 1 and "skipped 2" in caplog.records[0].getMessage()
        ids = {d.id for d in corpus.documents()}
        assert {Path(i.partition("#")[0]).name for i in ids} == {"a.txt", "b.md"}
        assert sorted(Path(p).name for p in corpus.skipped_files) == [
            "late.txt", "late_big.txt", "latin1.txt", "nul.txt"]
        assert "binary" in corpus.skipped_files[str(docs / "nul.txt")]
        assert "not UTF-8" in corpus.skipped_files[str(docs / "late.txt")]
        assert {d.id for d in corpus.documents(seed=1)} == ids  # skipped again, same documents
        assert len(caplog.records) == 3  # once at resolution, once per file found late
    globbed = Corpus(str(docs / "*.txt"), validation=0, test=0, document_bytes=None)
    assert [Path(d.id).name for d in globbed.documents()] == ["a.txt"]


@pytest.mark.parametrize("name, content", [("nul.txt", b"\x00\x01\x02"),
                                           ("latin1.txt", "naïve".encode("latin-1")),
                                           ("late.txt", b"ok\n" * 4000 + b"\xff")])
def test_a_named_binary_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"corpus file .*{name} is (binary|not UTF-8)"):
        list(Corpus(path, document_bytes=None).documents())


def test_undecodable_bytes_can_be_replaced_instead(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    corpus = Corpus({"main": Source([str(path)], undecodable="replace")}, validation=0, test=0)
    assert [d.text for d in corpus.documents()] == ["caf\ufffd\n"]
    with pytest.raises(ValueError, match="undecodable must be one of skip, replace, got 'x'"):
        Source([str(path)], undecodable="x")


def test_empty_corpora_are_one_line_errors_naming_the_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    for i in range(3):
        (tmp_path / "empty" / f"e{i}.txt").write_text("")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "x.txt").write_bytes(b"\x00" * 10)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    cases = [(tmp_path / "empty", "hold only empty files"),
             (tmp_path / "empty" / "e0.txt", "hold only empty files"),
             (tmp_path / "binary", "hold no text files: all 1 are binary or not UTF-8"),
             (tmp_path / "blank.jsonl", "hold no documents with text")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            list(Corpus(path).documents())
        assert str(path) in str(err.value) and "\n" not in str(err.value)


# Specifications: to_dict / from_dict / describe, and document_bytes validation.


def test_to_dict_and_from_dict_rebuild_the_same_corpus(tree, book):
    corpus = Corpus({"files": Source([str(tree / "a")], suffixes=(".txt",)),
                     "chat": [tree / "chat.jsonl"], "book": [book]},
                    weights={"files": 3.0}, validation=0.2, test=0.1, document_bytes=8192)
    spec = json.loads(json.dumps(corpus.to_dict()))
    assert spec["document_bytes"] == 8192 and spec["weights"] == {
        "files": 3.0, "chat": 1.0, "book": 1.0}
    assert spec["subsets"]["files"] == {"paths": [str(tree / "a")], "suffixes": [".txt"],
                                        "text_field": "text", "undecodable": "skip"}
    rebuilt = Corpus.from_dict(spec)
    assert rebuilt.to_dict() == spec
    for split in SPLITS:
        ids = [d.id for d in corpus.documents(split, seed=5)]
        assert ids and ids == [d.id for d in rebuilt.documents(split, seed=5)]
    assert corpus.describe() == (f"files (weight 3): {tree / 'a'}; chat (weight 1): "
                                 f"{tree / 'chat.jsonl'}; book (weight 1): {book}")
    assert Corpus([book]).describe() == str(book)


def test_the_default_corpus_round_trips_as_default():
    corpus = default_corpus(validation=0.02)
    spec = corpus.to_dict()
    assert spec == {"default": True, "validation": 0.02, "test": 0.01, "document_bytes": None}
    rebuilt = Corpus.from_dict(json.loads(json.dumps(spec)))
    assert rebuilt.describe() == "python-stdlib (default)" and rebuilt.to_dict() == spec
    assert Corpus.from_dict({"default": True}).to_dict() == {**spec, "validation": 0.01}
    ids = [d.id for d in corpus.documents("validation", shuffle=False)]
    assert ids and ids == [d.id for d in rebuilt.documents("validation", shuffle=False)]


@pytest.mark.parametrize("spec, key", [
    ([1], "dict"),
    ({"subsets": {"m": {"paths": ["x"]}}, "bogus": 1}, "'bogus'"),
    ({"subsets": {}}, "'subsets'"),
    ({"subsets": {"m": {"paths": []}}}, "'subsets.m.paths'"),
    ({"subsets": {"m": ["x"]}}, "'subsets.m'"),
    ({"subsets": {"m": {"paths": ["x"], "color": 1}}}, "'subsets.m': unknown key 'color'"),
    ({"subsets": {"m": {"paths": ["x"], "suffixes": ".txt"}}}, "'subsets.m.suffixes'"),
    ({"subsets": {"m": {"paths": ["x"], "undecodable": "ignore"}}}, "'subsets.m.undecodable'"),
    ({"subsets": {"m": {"paths": ["x"]}}, "weights": {"m": "3"}}, "'weights'"),
    ({"subsets": {"m": {"paths": ["x"]}}, "validation": "0.1"}, "'validation'"),
    ({"subsets": {"m": {"paths": ["x"]}}, "document_bytes": 0}, "'document_bytes'"),
    ({"default": False}, "'default'"),
    ({"default": True, "subsets": {}}, "'subsets'"),
])
def test_invalid_specs_name_the_bad_key(spec, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        Corpus.from_dict(spec)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "16384"])
def test_document_bytes_must_be_a_positive_int_or_none(tree, bad):
    message = f"document_bytes must be a positive int or None, got {bad!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        Corpus(tree / "a", document_bytes=bad)
    corpus = Corpus(tree / "a", document_bytes=None)
    with pytest.raises(ValueError, match=re.escape(message)):
        corpus.document_bytes = bad
    assert corpus.document_bytes is None
