"""Text corpora for the language-model families: files, directories, globs and JSONL, streamed.

A `Corpus` is one or more named subsets, each a list of sources and a sampling weight. Nothing
is read until it is iterated, and then one document at a time, so a corpus can be far larger
than memory.

Documents. One line of a JSONL file (its `text_field`) is a document, id "path:line". A text
file of at most `document_bytes` bytes (16 KiB by default) is one document, id "path". A larger
text file is cut into blocks of at most `document_bytes` bytes, id "path#index" (from 0): a
block ends at the last newline within the limit; where a single line is longer than the
limit, the block is that line's first `document_bytes` bytes (moved back to the start of a
UTF-8 character, and off the middle of a CR LF), so no text is dropped: the blocks of a file,
concatenated, are exactly its text. `document_bytes=None` keeps every file whole. Sizes are
bytes as stored (the file's size decides whether it is cut) and blocks end at LF bytes, so a
file with CR-only line ends is cut as one long line. Text is decoded as UTF-8 with universal
newlines (CR LF and CR read as LF), as `Path.read_text` does.
Cutting streams the file (memory of about one block), once to count its blocks (remembered
while the file's size and mtime stay the same) and again to read them.

Splits are by document and deterministic, never dependent on the order of files, on other
files, or on the machine:
- A whole file and a JSONL line: the document's id is hashed (BLAKE2b, `split_of`) to a
  number in [0, 1); below `validation` it belongs to the validation split, below
  `validation + test` to the test split, else to train.
- A file cut into n blocks: its held-out text is its end. The last `max(1, round(n * test))`
  blocks are test (none if test == 0), the `max(1, round(n * validation))` blocks before them
  validation (none if validation == 0), the rest train (`split_blocks`; Python's round, half
  to even). Should that leave no train block, the larger held-out count is lowered (never
  below 1). So one book gives train, validation and test text.
- A file cut into fewer blocks than that needs (3 when both fractions are > 0, 2 when one is)
  goes to one split as a whole, by the hash of its path, like an uncut file: a directory of
  files slightly over the limit then still splits as it did.

Binary and undecodable files. A file is binary if its first 8 KiB hold a NUL byte, and
undecodable if it is not strict UTF-8 (`Source.undecodable="skip"`, the default; "replace"
reads bad bytes as U+FFFD instead, the default corpus's established reading). Found in a
directory or by a glob, such a file is skipped: its first 8 KiB are checked when the file list
is resolved (one warning per source, with the count and an example; `Corpus.skipped_files`
lists them), and a file whose bad bytes lie further in is skipped (and warned about) when first
read, before any of its text is used. A file named explicitly that is binary or undecodable is
an error, as is an undecodable JSONL line ("path:line"). A subset that holds no text (no
files, every file skipped, only empty files, only blank JSONL) is a one-line ValueError naming
its paths.

`documents(split, seed, epoch)` visits a subset's documents in an order shuffled
deterministically from (seed, epoch): files are permuted, and documents pass through a
shuffle buffer. `stream(split, seed)` mixes the subsets by weight, forever (training);
evaluation reads each subset's split once (`documents`).

A corpus remembers how it was specified: `to_dict()` is JSON (subsets with their paths,
suffixes, text_field and undecodable policy, weights, fractions, document_bytes; the default
corpus as {"default": true, ...}), `Corpus.from_dict` rebuilds it, `describe()` names it.

The default corpus (no download): the Python standard library's source files of the running
interpreter (about 1,800 files, 31 MB on CPython 3.11), real text that exists on every machine,
kept whole (`document_bytes=None`) so that its hash split and benchmark figures stay as they
were.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

SPLITS = ("train", "validation", "test")
SHUFFLE_BUFFER = 256
DOCUMENT_BYTES = 16384
SNIFF_BYTES = 8192
UNDECODABLE = ("skip", "replace")
_READ_CHUNK = 1 << 16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One document: a stable id and its text."""

    id: str
    text: str


def split_of(doc_id: str, validation: float, test: float) -> str:
    """The split a document id belongs to (a pure function of the id and the fractions)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    if u < validation:
        return "validation"
    return "test" if u < validation + test else "train"


def split_blocks(n: int, validation: float, test: float) -> tuple[int, int, int] | None:
    """How many of a file's n blocks are (train, validation, test), in that order from the
    start of the file; None when n is too small to give every split with a fraction > 0 a
    block and keep one for train (the file then goes to one split whole, by `split_of`)."""
    needed = 1 + (validation > 0) + (test > 0)
    if n < needed:
        return None
    k_val = max(1, round(n * validation)) if validation > 0 else 0
    k_test = max(1, round(n * test)) if test > 0 else 0
    while k_val + k_test > n - 1:
        if k_val >= k_test and k_val > 1:
            k_val -= 1
        else:
            k_test -= 1
    return n - k_val - k_test, k_val, k_test


def _block_range(n: int, split: str, validation: float, test: float,
                 file_id: str) -> tuple[int, int]:
    """The indices [start, stop) of a cut file's blocks that belong to `split`."""
    sizes = split_blocks(n, validation, test)
    if sizes is None:
        return (0, n) if split_of(file_id, validation, test) == split else (0, 0)
    n_train, n_val, _ = sizes
    start = {"train": 0, "validation": n_train, "test": n_train + n_val}[split]
    stop = {"train": n_train, "validation": n_train + n_val, "test": n}[split]
    return start, stop


def _char_cut(buf: bytearray, limit: int) -> int:
    """Where to cut a run of more than `limit` bytes that holds no newline: at the limit, moved
    back to the start of a UTF-8 character (forward where the limit is under one character)
    and off the middle of a CR LF."""
    cut = limit
    while cut > 0 and limit - cut < 3 and buf[cut] & 0xC0 == 0x80:
        cut -= 1
    if cut == 0:
        cut = limit
        while cut < len(buf) and cut - limit < 3 and buf[cut] & 0xC0 == 0x80:
            cut += 1
    if buf[cut - 1] == 0x0D and cut < len(buf) and buf[cut] == 0x0A:
        cut = cut - 1 if cut > 1 else cut + 1  # over the limit only where it is 1 byte
    return cut


def _raw_blocks(handle: BinaryIO, limit: int) -> Iterator[bytes]:
    """The bytes of a file cut into blocks of at most `limit` bytes on newlines (see the
    module docstring), read in chunks: about `limit` + 64 KiB in memory."""
    buf = bytearray()
    eof = False
    chunk = max(limit, _READ_CHUNK)
    while True:
        while not eof and len(buf) <= limit:
            data = handle.read(chunk)
            if data:
                buf += data
            else:
                eof = True
        if len(buf) <= limit:
            if buf:
                yield bytes(buf)
            return
        cut = buf.rfind(b"\n", 0, limit) + 1 or _char_cut(buf, limit)
        yield bytes(buf[:cut])
        del buf[:cut]


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _bad_utf8(err: UnicodeDecodeError, offset: int = 0) -> str:
    return (f"not UTF-8 (byte 0x{err.object[err.start]:02x} at offset "
            f"{offset + err.start})")


@dataclass
class Source:
    """Where a subset's documents come from: paths (files, directories searched recursively
    for `suffixes`, glob patterns) and, for .jsonl files, the field that holds the text.

    `undecodable`: "skip" (default) skips files that are not strict UTF-8, "replace" reads
    their bad bytes as U+FFFD. `skipped` maps each skipped file to the reason (see the module
    docstring: found when the file list is resolved, or when a file is first read)."""

    paths: list[str]
    text_field: str = "text"
    suffixes: tuple[str, ...] = (".txt", ".md", ".py", ".jsonl", ".json", ".rst", ".c", ".h")
    undecodable: str = "skip"
    skipped: dict[str, str] = field(default_factory=dict, init=False, repr=False,
                                    compare=False)
    _listed: list[Path] | None = field(default=None, init=False, repr=False, compare=False)
    _files: list[Path] | None = field(default=None, init=False, repr=False, compare=False)
    _explicit: set[Path] = field(default_factory=set, init=False, repr=False, compare=False)
    _counts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.undecodable not in UNDECODABLE:
            raise ValueError(f"undecodable must be one of {', '.join(UNDECODABLE)}, got "
                             f"{self.undecodable!r}")
        self.suffixes = tuple(self.suffixes)

    def _list(self) -> list[Path]:
        """The paths' files, sorted, before binary files are skipped."""
        if self._listed is not None:
            return self._listed
        found: set[Path] = set()
        for pattern in self.paths:
            path = Path(pattern).expanduser()
            if path.is_file():
                found.add(path)
                self._explicit.add(path)
            elif path.is_dir():
                found.update(p for p in path.rglob("*")
                             if p.is_file() and p.suffix in self.suffixes)
            else:
                matches = [Path(p) for p in glob.glob(str(path), recursive=True)]
                if not matches:
                    raise FileNotFoundError(f"corpus path {pattern!r} matches no file or "
                                            "directory")
                found.update(p for p in matches if p.is_file())
        if not found:
            raise ValueError(f"corpus paths {self.paths} hold no files with suffixes "
                             f"{', '.join(self.suffixes)}")
        return sorted(found)

    def _sniff(self, path: Path) -> tuple[str | None, bool]:
        """(why the file is skipped or None, whether it is empty), from its first 8 KiB."""
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
        nul = head.find(b"\0")
        if nul >= 0:
            return f"binary (a NUL byte at offset {nul})", False
        if self.undecodable == "skip":
            try:
                codecs.getincrementaldecoder("utf-8")().decode(
                    head, final=len(head) < SNIFF_BYTES)
            except UnicodeDecodeError as err:
                return _bad_utf8(err), False
        return None, not head

    def files(self) -> list[Path]:
        """The matching text files, sorted (resolved once; binary and undecodable files found
        in directories or by globs are skipped, named ones are an error)."""
        if self._files is None:
            kept: list[Path] = []
            empty = 0
            for path in self._list():
                reason, is_empty = self._sniff(path)
                if reason is None:
                    kept.append(path)
                    empty += is_empty
                elif path in self._explicit:
                    raise ValueError(f"corpus file {path} is {reason}; expected UTF-8 text")
                else:
                    self.skipped[str(path)] = reason
            if self.skipped:
                example, reason = next(iter(self.skipped.items()))
                if not kept:
                    raise ValueError(f"corpus paths {self.paths} hold no text files: all "
                                     f"{len(self.skipped)} are binary or not UTF-8 (e.g. "
                                     f"{example}: {reason})")
                log.warning("corpus paths %s: skipped %d binary or non-UTF-8 file(s), e.g. "
                            "%s: %s", self.paths, len(self.skipped), example, reason)
            if kept and empty == len(kept):
                raise ValueError(f"corpus paths {self.paths} hold only empty files "
                                 f"({len(kept)})")
            self._files = kept
        return self._files

    def _skip_late(self, path: Path, reason: str) -> None:
        """A file found binary or undecodable while being read: an error if it was named,
        else skipped from now on (and warned about, once)."""
        if path in self._explicit:
            raise ValueError(f"corpus file {path} is {reason}; expected UTF-8 text")
        self.skipped[str(path)] = reason
        log.warning("corpus paths %s: skipped %s: %s", self.paths, path, reason)

    def block_count(self, path: Path, document_bytes: int) -> int | None:
        """How many blocks a file is cut into (reading it once; remembered while its size
        and mtime stay the same); None if it is skipped as undecodable."""
        if str(path) in self.skipped:
            return None
        stat = path.stat()
        key = (str(path), document_bytes)
        signature = (stat.st_size, stat.st_mtime_ns)
        cached = self._counts.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        n = offset = 0
        with path.open("rb") as handle:
            for raw in _raw_blocks(handle, document_bytes):
                if self.undecodable == "skip":
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        self._skip_late(path, _bad_utf8(err, offset))
                        return None
                n += 1
                offset += len(raw)
        self._counts[key] = (signature, n)
        return n

    def blocks(self, path: Path, document_bytes: int, start: int = 0,
               stop: int | None = None) -> Iterator[Document]:
        """Blocks start..stop-1 of a file cut at `document_bytes` (see the module docstring).
        Call `block_count` first: it checks that the file decodes."""
        errors = "strict" if self.undecodable == "skip" else "replace"
        with path.open("rb") as handle:
            for index, raw in enumerate(_raw_blocks(handle, document_bytes)):
                if stop is not None and index >= stop:
                    return
                if index < start:
                    continue
                try:
                    text = raw.decode("utf-8", errors)
                except UnicodeDecodeError as err:
                    raise ValueError(f"corpus file {path} changed while read: block {index} "
                                     f"is {_bad_utf8(err)}") from None
                yield Document(f"{path}#{index}", _universal_newlines(text))

    def read(self, path: Path, document_bytes: int | None = None) -> Iterator[Document]:
        """The documents of one file: the file, its blocks (a text file larger than
        `document_bytes`), or its JSONL lines; nothing if it is skipped as undecodable."""
        if path.suffix == ".jsonl":
            yield from self._read_jsonl(path)
        elif document_bytes is not None and path.stat().st_size > document_bytes:
            if self.block_count(path, document_bytes) is not None:
                yield from self.blocks(path, document_bytes)
        elif str(path) not in self.skipped:
            if self.undecodable == "replace":
                text = path.read_text(encoding="utf-8", errors="replace")
            else:
                try:
                    text = _universal_newlines(path.read_bytes().decode("utf-8"))
                except UnicodeDecodeError as err:
                    self._skip_late(path, _bad_utf8(err))
                    return
            yield Document(str(path), text)

    def _read_jsonl(self, path: Path) -> Iterator[Document]:
        errors = "strict" if self.undecodable == "skip" else "replace"
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8", errors)
                except UnicodeDecodeError as err:
                    raise ValueError(f"{path}:{number}: {_bad_utf8(err)}") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{number}: no string field {self.text_field!r}")
                yield Document(f"{path}:{number}", text)


def _check_document_bytes(value) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"document_bytes must be a positive int or None, got {value!r}")


def _brief_paths(paths: list[str], most: int = 3) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


class Corpus:
    """Named subsets of documents with sampling weights (see the module docstring).

    Args:
        subsets: {name: Source or list of paths}; a plain list of paths is one subset "main".
        weights: {name: weight > 0} for mixing (default equal).
        validation, test: the fractions held out (documents by hash of their ids; the last
            blocks of a cut file).
        text_field: the JSONL field that holds the text (for subsets given as paths).
        document_bytes: text files larger than this many bytes are cut into blocks of at most
            this size on line boundaries (a positive int), or None to keep files whole.
    """

    def __init__(self, subsets, weights: dict[str, float] | None = None, *,
                 validation: float = 0.01, test: float = 0.01, text_field: str = "text",
                 document_bytes: int | None = DOCUMENT_BYTES):
        if isinstance(subsets, (str, os.PathLike)):
            subsets = [subsets]
        if isinstance(subsets, (list, tuple)):
            subsets = {"main": subsets}
        if not isinstance(subsets, dict) or not subsets:
            raise ValueError(f"a corpus (subsets) must be a path, a list of paths or a "
                             f"non-empty dict {{name: paths}}, got {type(subsets).__name__}"
                             + (f" of shape {subsets.shape}" if hasattr(subsets, "shape")
                                else ""))
        self.subsets = {
            name: src if isinstance(src, Source)
            else Source([str(p) for p in ([src] if isinstance(src, (str, os.PathLike))
                                          else src)], text_field=text_field)
            for name, src in subsets.items()
        }
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.subsets))
        if unknown:
            raise ValueError(f"weights name unknown subsets {unknown}; subsets: "
                             f"{', '.join(self.subsets)}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.subsets}
        if any(not w > 0 for w in self.weights.values()):
            raise ValueError(f"subset weights must be > 0, got {self.weights}")
        if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
            raise ValueError(f"validation and test fractions must be in [0, 1) with a sum "
                             f"below 1, got {validation} and {test}")
        self.validation, self.test = validation, test
        self.document_bytes = document_bytes
        self._default = False

    @property
    def document_bytes(self) -> int | None:
        """Text files larger than this are cut into blocks of at most this many bytes; None
        keeps files whole."""
        return self._document_bytes

    @document_bytes.setter
    def document_bytes(self, value: int | None) -> None:
        self._document_bytes = _check_document_bytes(value)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={self.weights[n]:g}" for n in self.subsets)
        return (f"Corpus({parts}, validation={self.validation}, test={self.test}, "
                f"document_bytes={self.document_bytes})")

    def describe(self) -> str:
        """What the corpus is, in one line: "python-stdlib (default)", or its paths (by
        subset, with weights where they differ), for messages such as "scored the validation
        split of <corpus>"."""
        if self._default:
            return "python-stdlib (default)"
        if len(self.subsets) == 1:
            return _brief_paths(next(iter(self.subsets.values())).paths)
        equal = len(set(self.weights.values())) == 1
        return "; ".join(
            f"{name}{'' if equal else f' (weight {self.weights[name]:g})'}: "
            f"{_brief_paths(src.paths)}" for name, src in self.subsets.items())

    __str__ = describe

    @property
    def skipped_files(self) -> dict[str, str]:
        """{path: reason} of the binary or undecodable files skipped so far, all subsets
        (resolves the file lists; files undecodable past their first 8 KiB join when read)."""
        skipped: dict[str, str] = {}
        for source in self.subsets.values():
            source.files()
            skipped.update(source.skipped)
        return skipped

    def to_dict(self) -> dict:
        """The corpus's specification as JSON-able data, for `Corpus.from_dict`."""
        spec = {"validation": self.validation, "test": self.test,
                "document_bytes": self.document_bytes}
        if self._default:
            return {"default": True, **spec}
        return {"subsets": {name: {"paths": list(src.paths), "suffixes": list(src.suffixes),
                                   "text_field": src.text_field,
                                   "undecodable": src.undecodable}
                            for name, src in self.subsets.items()},
                "weights": dict(self.weights), **spec}

    @classmethod
    def from_dict(cls, spec: dict) -> Corpus:
        """The corpus `to_dict` described (the default corpus from this machine's standard
        library); ValueError naming the bad key for an invalid dict."""
        if not isinstance(spec, dict):
            raise ValueError(f"a corpus spec must be a dict, got {type(spec).__name__}")
        common = {"validation", "test", "document_bytes"}
        allowed = common | ({"default"} if "default" in spec else {"subsets", "weights"})
        for key in spec:
            if key not in allowed:
                raise ValueError(f"corpus spec: unknown key {key!r}; expected "
                                 f"{', '.join(sorted(allowed))}")
        fractions = {}
        for key in ("validation", "test"):
            value = spec.get(key, 0.01)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"corpus spec: {key!r} must be a number in [0, 1), got "
                                 f"{value!r}")
            fractions[key] = value
        document_bytes = spec.get("document_bytes",
                                  None if "default" in spec else DOCUMENT_BYTES)
        try:
            _check_document_bytes(document_bytes)
        except ValueError as err:
            raise ValueError(f"corpus spec: 'document_bytes': {err}") from None
        if "default" in spec:
            if spec["default"] is not True:
                raise ValueError(f"corpus spec: 'default' must be true, got "
                                 f"{spec['default']!r}")
            corpus = default_corpus(**fractions)
            corpus.document_bytes = document_bytes
            return corpus
        subsets = spec.get("subsets")
        if not isinstance(subsets, dict) or not subsets:
            raise ValueError(f"corpus spec: 'subsets' must be a non-empty dict {{name: "
                             f"{{paths, ...}}}}, got {subsets!r}")
        sources = {name: cls._source_from(name, sub) for name, sub in subsets.items()}
        weights = spec.get("weights", {})
        if not isinstance(weights, dict) or any(
                isinstance(w, bool) or not isinstance(w, (int, float))
                for w in weights.values()):
            raise ValueError(f"corpus spec: 'weights' must be a dict {{name: number}}, got "
                             f"{weights!r}")
        return cls(sources, weights, document_bytes=document_bytes, **fractions)

    @staticmethod
    def _source_from(name, sub) -> Source:
        where = f"corpus spec: 'subsets.{name}"
        if not isinstance(sub, dict):
            raise ValueError(f"{where}' must be a dict with 'paths', got {sub!r}")
        allowed = ("paths", "suffixes", "text_field", "undecodable")
        for key in sub:
            if key not in allowed:
                raise ValueError(f"{where}': unknown key {key!r}; expected "
                                 f"{', '.join(allowed)}")
        paths = sub.get("paths")
        if (not isinstance(paths, list) or not paths
                or not all(isinstance(p, str) for p in paths)):
            raise ValueError(f"{where}.paths' must be a non-empty list of strings, got "
                             f"{paths!r}")
        kwargs = {}
        if "suffixes" in sub:
            suffixes = sub["suffixes"]
            if not isinstance(suffixes, list) or not all(isinstance(s, str) for s in suffixes):
                raise ValueError(f"{where}.suffixes' must be a list of strings, got "
                                 f"{suffixes!r}")
            kwargs["suffixes"] = tuple(suffixes)
        for key in ("text_field", "undecodable"):
            if key in sub:
                if not isinstance(sub[key], str):
                    raise ValueError(f"{where}.{key}' must be a string, got {sub[key]!r}")
                kwargs[key] = sub[key]
        if kwargs.get("undecodable", "skip") not in UNDECODABLE:
            raise ValueError(f"{where}.undecodable' must be one of {', '.join(UNDECODABLE)}, "
                             f"got {kwargs['undecodable']!r}")
        return Source(list(paths), **kwargs)

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")

    def _file_documents(self, source: Source, path: Path, split: str,
                        seen: list[bool]) -> Iterator[Document]:
        """The documents of one file in `split`; sets seen[0] when the file holds text
        (in any split). Files and blocks of other splits are not read."""
        document_bytes = self.document_bytes
        if path.suffix == ".jsonl":
            for doc in source.read(path):
                seen[0] = seen[0] or bool(doc.text)
                if split_of(doc.id, self.validation, self.test) == split:
                    yield doc
            return
        size = path.stat().st_size
        if document_bytes is None or size <= document_bytes:
            if str(path) in source.skipped:
                return
            seen[0] = seen[0] or size > 0
            if split_of(str(path), self.validation, self.test) == split:
                yield from source.read(path)
            return
        n = source.block_count(path, document_bytes)
        if n is None:
            return
        seen[0] = True
        start, stop = _block_range(n, split, self.validation, self.test, str(path))
        if start < stop:
            yield from source.blocks(path, document_bytes, start, stop)

    def documents(self, split: str = "train", *, subset: str | None = None, seed: int = 0,
                  epoch: int = 0, shuffle: bool = True) -> Iterator[Document]:
        """The documents of one split (of one subset, or all subsets in turn), streamed."""
        self._check_split(split)
        if subset is not None and subset not in self.subsets:
            raise ValueError(f"subset must be one of {', '.join(self.subsets)}, got {subset!r}")
        names = list(self.subsets) if subset is None else [subset]
        for name in names:
            source = self.subsets[name]
            files = list(source.files())
            rng = random.Random(f"{seed}/{epoch}/{name}")
            if shuffle:
                rng.shuffle(files)
            buffer: list[Document] = []
            seen = [False]
            for path in files:
                for doc in self._file_documents(source, path, split, seen):
                    if not shuffle:
                        yield doc
                        continue
                    buffer.append(doc)
                    if len(buffer) >= SHUFFLE_BUFFER:
                        yield buffer.pop(rng.randrange(len(buffer)))
            if not seen[0]:
                raise ValueError(f"corpus paths {source.paths} hold no documents with text "
                                 "(only empty files, blank JSONL lines or skipped files)")
            rng.shuffle(buffer)
            yield from buffer

    def stream(self, split: str = "train", *, seed: int = 0) -> Iterator[Document]:
        """Documents of all subsets mixed by weight, each subset cycling through epochs:
        an endless, deterministic stream for training."""
        self._check_split(split)
        rng = random.Random(f"mix/{seed}")
        names = list(self.subsets)
        weights = [self.weights[n] for n in names]
        epochs = dict.fromkeys(names, 0)
        iterators = {n: self.documents(split, subset=n, seed=seed) for n in names}
        while True:
            name = rng.choices(names, weights)[0]
            for _ in range(2):
                doc = next(iterators[name], None)
                if doc is not None:
                    yield doc
                    break
                epochs[name] += 1
                iterators[name] = self.documents(split, subset=name, seed=seed,
                                                 epoch=epochs[name])
            else:
                raise ValueError(f"subset {name!r} ({_brief_paths(self.subsets[name].paths)}) "
                                 f"has no documents in the {split} split")


class _StdlibSource(Source):
    """The standard library's .py files, without installed packages (listed when first
    needed)."""

    def _list(self) -> list[Path]:
        if self._listed is None:
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            self._listed = sorted(
                p for p in stdlib.rglob("*.py")
                if "site-packages" not in p.parts and "dist-packages" not in p.parts)
        return self._listed


def default_corpus(*, validation: float = 0.01, test: float = 0.01) -> Corpus:
    """The Python standard library's sources of the running interpreter (no download), files
    kept whole and undecodable bytes replaced, as they always were."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = _StdlibSource([str(stdlib / "**" / "*.py")], undecodable="replace")
    corpus = Corpus({"python-stdlib": source}, validation=validation, test=test,
                    document_bytes=None)
    corpus._default = True
    return corpus
