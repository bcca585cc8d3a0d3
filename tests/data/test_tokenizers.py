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


def test_latin1_tokenizers_saved_before_the_standard_scheme_still_work():
    """A BPE saved without an "input" field read bytes as Latin-1 characters: it loads and
    tokenises exactly as it was trained (its merges are over that representation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=297, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([t.encode().decode("latin-1") for t in TEXTS], trainer=trainer)
    tk.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    old = tokenizer_from_dict({"kind": "bpe", "tokenizer": tk.to_str()})
    assert old.input == "latin1" and old.to_transformers_json() is None
    data = "héllo wörld ☃\n".encode() + b"\xff\x80"
    assert old.encode_bytes(data) == tk.encode(data.decode("latin-1"),
                                               add_special_tokens=False).ids
    assert old.decode_bytes(old.encode_bytes(data)) == data
    assert tokenizer_from_dict(old.to_dict()).input == "latin1"


def test_invalid_utf8_bytes_become_their_byte_tokens(bpe):
    ids = bpe.encode_bytes(b"ab\xffcd")
    assert bpe.decode_bytes(ids) == b"ab\xffcd"
    assert bpe._byte_ids[0xFF] in ids


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_transformers_fast_tokenizer_gives_the_same_ids(bpe, kind):
    transformers = pytest.importorskip("transformers")
    ours = bpe if kind == "bpe" else ByteTokenizer()
    from tokenizers import Tokenizer

    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(ours.to_transformers_json()),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    for text in ["def f(x):\n    return x + 1\n", "héllo wörld ☃", "  two  spaces\t", ""]:
        ids = fast(text)["input_ids"]
        assert ids == [ours.bos_id, *ours.encode(text)], text
        assert fast.decode(ids, skip_special_tokens=True) == text
