"""Tokenizers for the language models: raw bytes, and byte-level BPE trained locally.

Both map any byte string to token ids and back exactly (`encode_bytes` / `decode_bytes`);
`encode(text)` is `encode_bytes(text.encode("utf-8"))`. Special tokens come after the ordinary
ones: <pad>, <bos>, <eos>. A tokenizer serialises to a JSON-able dict (`to_dict`) that is saved
inside the model's file, and `tokenizer_from_dict` rebuilds it.

BPE uses the `tokenizers` library (Hugging Face's Rust implementation) as a standard
byte-level BPE (GPT-2's byte alphabet over the text's UTF-8), so the very same tokenizer JSON
loads in Transformers (`PreTrainedTokenizerFast`, see `cerebrum.hf`) and gives the same ids.
Bytes that are not valid UTF-8 still survive the round trip: each becomes the token of its
byte-alphabet symbol (every byte has one), and decoding maps token strings back to bytes
through the alphabet, never through text.

Tokenizers saved before this scheme (no "input" field) presented bytes as Latin-1 characters
to the same kind of BPE; they load and behave as they did ("input": "latin1"), but
Transformers cannot reproduce their ids.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

SPECIALS = ("<pad>", "<bos>", "<eos>")
#: how a BPE tokenizer reads bytes: the text's UTF-8 directly (the standard byte-level BPE),
#: or each byte as a Latin-1 character first (tokenizers saved before the standard scheme)
BPE_INPUTS = ("text", "latin1")


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte 0..255
    (printable Latin-1 bytes stand for themselves, the others are shifted past U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return tuple(symbols[b] for b in range(256))


@functools.cache
def _alphabet_bytes() -> dict[str, int]:
    return {symbol: byte for byte, symbol in enumerate(byte_alphabet())}


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

    def to_transformers_json(self) -> str:
        """This tokenizer as a `tokenizer.json` for Transformers' PreTrainedTokenizerFast: a
        BPE without merges over the byte alphabet, byte b having id b, so that it gives the
        ids `encode` gives, with <bos> first (as `generate` prompts start)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        vocab = {symbol: byte for byte, symbol in enumerate(byte_alphabet())}
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens(list(SPECIALS))
        return _with_bos_template(tokenizer.to_str())


class BPETokenizer:
    """Byte-level BPE (see the module docstring). Build with `BPETokenizer.train(texts,
    vocab_size)` or from a saved dict."""

    kind = "bpe"

    def __init__(self, tokenizer, *, input: str = "text"):
        if input not in BPE_INPUTS:
            raise ValueError(f"input must be one of {', '.join(BPE_INPUTS)}, got {input!r}")
        self._tk = tokenizer
        self.input = input
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id, self.bos_id, self.eos_id = (tokenizer.token_to_id(s) for s in SPECIALS)
        self._byte_ids = [tokenizer.token_to_id(symbol) for symbol in byte_alphabet()]
        self._token_bytes: list[bytes] | None = None  # built on the first decode

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
        tokenizer.train_from_iterator(texts, trainer=trainer)
        tokenizer.add_special_tokens(list(SPECIALS))
        return cls(tokenizer)

    def encode_bytes(self, data: bytes) -> list[int]:
        if self.input == "latin1":
            return self._tk.encode(_as_latin1(data), add_special_tokens=False).ids
        # valid UTF-8 runs go through the BPE as text; each invalid byte, escaped to a lone
        # surrogate U+DC80..U+DCFF by the decoder, becomes its byte-alphabet token
        text = data.decode("utf-8", errors="surrogateescape")
        ids: list[int] = []
        run_start = 0
        for i, char in enumerate(text):
            if "\udc80" <= char <= "\udcff":
                if run_start < i:
                    ids += self._encode_text(text[run_start:i])
                ids.append(self._byte_ids[ord(char) - 0xDC00])
                run_start = i + 1
        if run_start < len(text):
            ids += self._encode_text(text[run_start:])
        return ids

    def _encode_text(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        specials = {self.pad_id, self.bos_id, self.eos_id}
        if self.input == "latin1":
            text = self._tk.decode([i for i in ids if i not in specials],
                                   skip_special_tokens=True)
            # A token sequence a model generated can hold half of a byte's two-character
            # encoding (a lone lead byte): the decoder gives U+FFFD there, b"?" here.
            return text.encode("latin-1", errors="replace")
        table = self._token_table()
        return b"".join(table[i] for i in ids if i not in specials and 0 <= i < len(table))

    def _token_table(self) -> list[bytes]:
        """The bytes each token id stands for (specials: b"")."""
        if self._token_bytes is None:
            to_byte = _alphabet_bytes()
            table = [b""] * self.vocab_size
            for token, i in self._tk.get_vocab().items():
                if token not in SPECIALS:
                    table[i] = bytes(to_byte[symbol] for symbol in token)
            self._token_bytes = table
        return self._token_bytes

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": self._tk.to_str(), "input": self.input}

    def to_transformers_json(self) -> str | None:
        """The tokenizer as a `tokenizer.json` for Transformers' PreTrainedTokenizerFast,
        which then gives the ids `encode` gives, with <bos> first (as `generate` prompts
        start); None for a Latin-1 tokenizer, whose ids Transformers cannot reproduce."""
        if self.input != "text":
            return None
        return _with_bos_template(self._tk.to_str())


def _with_bos_template(tokenizer_json: str) -> str:
    """A tokenizer JSON whose post-processor puts <bos> before every encoded text."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_str(tokenizer_json)
    bos = SPECIALS[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return tokenizer.to_str()


def _as_latin1(data: bytes) -> str:
    return data.decode("latin-1")


def tokenizer_from_dict(data: dict):
    """Rebuild a tokenizer saved with `to_dict`."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(data["tokenizer"]),
                            input=data.get("input", "latin1"))
    raise ValueError(f"unknown tokenizer {kind!r}; expected 'bytes' or 'bpe'")
