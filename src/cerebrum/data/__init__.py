"""Data that ships with the library and readers for users' files.

`load_arrays` reads numeric files for the classical models; `Corpus` / `default_corpus`
stream text for the language models; `ByteTokenizer` / `BPETokenizer` turn it into tokens.
"""

from cerebrum.data.arrays import load_arrays
from cerebrum.data.corpus import (
    Corpus,
    Document,
    Source,
    default_corpus,
    split_blocks,
    split_of,
)
from cerebrum.data.tokenizers import BPETokenizer, ByteTokenizer, tokenizer_from_dict

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "Document",
    "Source",
    "default_corpus",
    "load_arrays",
    "split_blocks",
    "split_of",
    "tokenizer_from_dict",
]
