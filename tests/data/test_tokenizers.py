"""Tokenizers round-trip arbitrary bytes and survive serialisation."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum.data import BPETokenizer, ByteTokenizer, tokenizer_from_dict

TEXTS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "héllo wörld ☃\n"] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXTS, vocab_size=300, min_frequency=1)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300))
def test_bytes_round_trip_exactly(bpe, data):
    for tokenizer in (ByteTokenizer(), bpe):
        assert tokenizer.decode_bytes(tokenizer.encode_bytes(data)) == data


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_text_round_trips(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert ByteTokenizer().decode(ByteTokenizer().encode(text)) == text


def test_bpe_merges_frequent_sequences_and_serialises(bpe):
    text = "def f(x):\n    return x + 1\n"
    assert len(bpe.encode(text)) < len(text.encode()) / 2
    again = tokenizer_from_dict(bpe.to_dict())
    assert again.encode(text) == bpe.encode(text) and again.vocab_size == bpe.vocab_size
    assert {bpe.pad_id, bpe.bos_id, bpe.eos_id} <= set(range(bpe.vocab_size))
    assert tokenizer_from_dict(ByteTokenizer().to_dict()).vocab_size == 259


def test_specials_are_dropped_when_decoding(bpe):
    for tokenizer in (ByteTokenizer(), bpe):
        ids = [tokenizer.bos_id, *tokenizer.encode("abc"), tokenizer.eos_id]
        assert tokenizer.decode(ids) == "abc"


def test_bad_settings():
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        BPETokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="unknown tokenizer 'sentencepiece'"):
        tokenizer_from_dict({"kind": "sentencepiece"})

@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 299), max_size=40))
def test_any_generated_ids_decode(bpe, ids):
    # a model can emit any ids, among them half of a byte's two-character encoding (a lone
    # lead byte such as 'Ã'): decoding must give bytes and text, never raise
    ids = [i % bpe.vocab_size for i in ids]
    data = bpe.decode_bytes(ids)
    assert isinstance(data, bytes) and isinstance(bpe.decode(ids), str)
    valid = [i for i in ids if i not in (bpe.pad_id, bpe.bos_id, bpe.eos_id)]
    assert len(data) <= sum(len(bpe._tk.id_to_token(i)) for i in valid)
