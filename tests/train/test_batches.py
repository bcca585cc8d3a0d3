"""TokenBatches: rows cut from the document stream, the row shuffle buffer, exact resume."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum.data import ByteTokenizer, Corpus
from cerebrum.train.batches import TokenBatches


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(20):  # documents of several rows each, each with its own letter
        (root / f"doc{i}.txt").write_text(chr(ord("a") + i) * (40 + 7 * i))
    return Corpus(str(root), validation=0, test=0)


def batches(corpus, **kw):
    return TokenBatches(corpus, ByteTokenizer(), batch_size=4, seq_len=16, **kw)


def documents_per_batch(stream, n_batches=30):
    """Mean number of distinct documents (letters) a batch's rows come from."""
    letters = set(range(ord("a"), ord("a") + 20))
    counts = []
    for _ in range(n_batches):
        rows = next(stream)
        counts.append(len({t for t in rows.flatten().tolist() if t in letters}))
    return sum(counts) / len(counts)


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(0, 60), buffer=st.integers(2, 20), seed=st.integers(0, 1000))
def test_shuffle_buffer_is_a_bounded_permutation(n_rows, buffer, seed, tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    (root / "d.txt").write_text("x")
    stream = TokenBatches(Corpus(str(root), validation=0, test=0), ByteTokenizer(),
                          batch_size=1, seq_len=4, seed=seed, shuffle_rows=buffer)
    rows = [[i] for i in range(n_rows)]
    out = list(stream._shuffled(iter(rows)))
    assert sorted(out) == rows  # every row exactly once
    # a row can leave the buffer no earlier than `buffer - 1` places before it arrived
    assert all(row < position + buffer for position, (row,) in enumerate(out))
    if n_rows > 2 * buffer:
        assert out != rows
    again = list(stream._shuffled(iter(rows)))
    assert again == out  # seeded


def test_no_shuffle_keeps_the_stream_order(corpus):
    plain = batches(corpus)
    rows = torch.cat([next(plain) for _ in range(5)])
    stream = batches(corpus)._row_stream()
    assert rows.tolist() == [next(stream).tolist() for _ in range(20)]


def test_shuffled_batches_mix_more_documents(corpus):
    plain = documents_per_batch(batches(corpus))
    shuffled = documents_per_batch(batches(corpus, shuffle_rows=64))
    assert shuffled > plain + 1.0, (plain, shuffled)


def test_shuffled_resume_continues_the_same_batches(corpus):
    straight = batches(corpus, shuffle_rows=32, seed=3)
    expected = [next(straight) for _ in range(7)]
    resumed = batches(corpus, shuffle_rows=32, seed=3)
    resumed.load_state_dict({"drawn": 4, "seed": 3, "shuffle_rows": 32})
    for want in expected[4:]:
        assert torch.equal(next(resumed), want)
    assert resumed.state_dict() == straight.state_dict()


def test_resume_with_another_shuffle_buffer_is_an_error(corpus):
    state = batches(corpus, shuffle_rows=32).state_dict()
    with pytest.raises(ValueError, match="shuffle_rows 32 differs from this run's 0"):
        batches(corpus).load_state_dict(state)


@pytest.mark.parametrize(("bad", "error"), [(-1, ValueError), (1.5, TypeError),
                                            (True, TypeError), ("8", TypeError)])
def test_bad_shuffle_rows(corpus, bad, error):
    with pytest.raises(error, match="shuffle_rows must be"):
        batches(corpus, shuffle_rows=bad)
