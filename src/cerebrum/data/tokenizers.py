"""Tokenizers for the language models: raw bytes, and byte-level BPE trained locally.

Both map any byte string to token ids and back exactly (`encode_bytes` / `decode_bytes`);
`encode(text)` is `encode_bytes(text.encode("utf-8"))`. Special tokens come after the ordinary
ones: <pad>, <bos>, <eos>. A tokenizer serialises to a JSON-able dict (`to_dict`) that is saved
inside the model's file, and `tokenizer_from_dict` rebuilds it.

BPE uses the `tokenizers` library (Hugging Face's Rust implementation) with a byte-level
alphabet: the input bytes are presented to it as Latin-1 characters (one character per byte),
so arbitrary bytes, not only valid UTF-8, survive the round trip.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIALS = ("<pad>", "<bos>", "<eos>")


class ByteTokenizer:
    """One token per byte (ids 0..255), then the specials (256 <pad>, 257 <bos>, 258 <eos>)."""

    kind = "bytes"

    def __init__(self):
        self.vocab_size = 256 + len(SPECIALS)
        self.pad_id, self.bos_id, self.eos_id = 256, 257, 258

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(i for i in ids if i < 256)

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


class BPETokenizer:
    """Byte-level BPE (see the module docstring). Build with `BPETokenizer.train(texts,
    vocab_size)` or from a saved dict."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tk = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id, self.bos_id, self.eos_id = (tokenizer.token_to_id(s) for s in SPECIALS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, *,
              min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from `texts` (any iterable of strings, streamed)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(SPECIALS):
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIALS)} (bytes + specials), "
                             f"got {vocab_size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(SPECIALS), min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(
            (_as_latin1(t.encode("utf-8")) for t in texts), trainer=trainer)
        tokenizer.add_special_tokens(list(SPECIALS))
        return cls(tokenizer)

    def encode_bytes(self, data: bytes) -> list[int]:
        return self._tk.encode(_as_latin1(data), add_special_tokens=False).ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        specials = {self.pad_id, self.bos_id, self.eos_id}
        text = self._tk.decode([i for i in ids if i not in specials],
                               skip_special_tokens=True)
        # A token sequence a model generated can hold half of a byte's two-character encoding
        # (a lone lead byte): the decoder gives U+FFFD there, which becomes b"?" here.
        return text.encode("latin-1", errors="replace")

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": self._tk.to_str()}


def _as_latin1(data: bytes) -> str:
    return data.decode("latin-1")


def tokenizer_from_dict(data: dict):
    """Rebuild a tokenizer saved with `to_dict`."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(data["tokenizer"]))
    raise ValueError(f"unknown tokenizer {kind!r}; expected 'bytes' or 'bpe'")
