"""Corpora: sources, deterministic splits by document, shuffling, mixing, the default corpus."""

import collections
import itertools
import json

import pytest

from cerebrum.data import Corpus, default_corpus, split_of


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
