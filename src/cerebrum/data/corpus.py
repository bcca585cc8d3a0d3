"""Text corpora for the language-model families: files, directories, globs and JSONL, streamed.

A `Corpus` is one or more named subsets, each a list of sources and a sampling weight. A
document is a text file, or one line of a JSONL file (its `text_field`). Nothing is read until
it is iterated, and then one document at a time, so a corpus can be far larger than memory.

Splits are by document and deterministic: a document's id (its path, or path:line for JSONL)
is hashed (BLAKE2b) to a number in [0, 1); below `validation` it belongs to the validation
split, below `validation + test` to the test split, else to train. The split of a document
never depends on the order of files, on other documents, or on the machine.

`documents(split, seed, epoch)` visits a subset's documents in an order shuffled
deterministically from (seed, epoch): files are permuted, and documents pass through a
shuffle buffer. `stream(split, seed)` mixes the subsets by weight, forever (training);
evaluation reads each subset's split once (`documents`).

The default corpus (no download): the Python standard library's source files of the running
interpreter (about 1,800 files, 31 MB on CPython 3.11), real text that exists on every machine.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "validation", "test")
SHUFFLE_BUFFER = 256


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


@dataclass
class Source:
    """Where a subset's documents come from: paths (files, directories searched recursively
    for `suffixes`, glob patterns) and, for .jsonl files, the field that holds the text."""

    paths: list[str]
    text_field: str = "text"
    suffixes: tuple[str, ...] = (".txt", ".md", ".py", ".jsonl", ".json", ".rst", ".c", ".h")
    _files: list[Path] | None = field(default=None, repr=False)

    def files(self) -> list[Path]:
        """The matching files, sorted (resolved once)."""
        if self._files is None:
            found: set[Path] = set()
            for pattern in self.paths:
                path = Path(pattern).expanduser()
                if path.is_file():
                    found.add(path)
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
            self._files = sorted(found)
        return self._files

    def read(self, path: Path) -> Iterator[Document]:
        """The documents of one file (one per file, or one per JSONL line)."""
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{number + 1}: not JSON ({err.msg})") from None
                    text = record.get(self.text_field) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{number + 1}: no string field "
                                         f"{self.text_field!r}")
                    yield Document(f"{path}:{number + 1}", text)
        else:
            yield Document(str(path), path.read_text(encoding="utf-8", errors="replace"))


class Corpus:
    """Named subsets of documents with sampling weights (see the module docstring).

    Args:
        subsets: {name: Source or list of paths}; a plain list of paths is one subset "main".
        weights: {name: weight > 0} for mixing (default equal).
        validation, test: the fractions of documents held out (by hash of their ids).
    """

    def __init__(self, subsets, weights: dict[str, float] | None = None, *,
                 validation: float = 0.01, test: float = 0.01, text_field: str = "text"):
        if isinstance(subsets, (str, os.PathLike)):
            subsets = [subsets]
        if isinstance(subsets, (list, tuple)):
            subsets = {"main": subsets}
        if not isinstance(subsets, dict) or not subsets:
            raise ValueError("subsets must be a non-empty dict {name: paths} or a list of paths")
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

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={self.weights[n]:g}" for n in self.subsets)
        return f"Corpus({parts}, validation={self.validation}, test={self.test})"

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")

    def documents(self, split: str = "train", *, subset: str | None = None, seed: int = 0,
                  epoch: int = 0, shuffle: bool = True) -> Iterator[Document]:
        """The documents of one split (of one subset, or all subsets in turn), streamed."""
        self._check_split(split)
        names = list(self.subsets) if subset is None else [subset]
        for name in names:
            source = self.subsets[name]
            files = list(source.files())
            rng = random.Random(f"{seed}/{epoch}/{name}")
            if shuffle:
                rng.shuffle(files)
            buffer: list[Document] = []
            for path in files:
                for doc in source.read(path):
                    if split_of(doc.id, self.validation, self.test) != split:
                        continue
                    if not shuffle:
                        yield doc
                        continue
                    buffer.append(doc)
                    if len(buffer) >= SHUFFLE_BUFFER:
                        yield buffer.pop(rng.randrange(len(buffer)))
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
                raise ValueError(f"subset {name!r} has no documents in the {split} split")


def default_corpus(*, validation: float = 0.01, test: float = 0.01) -> Corpus:
    """The Python standard library's sources of the running interpreter (no download)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = Source([str(stdlib / "**" / "*.py")])
    source._files = sorted(p for p in stdlib.rglob("*.py")
                           if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    return Corpus({"python-stdlib": source}, validation=validation, test=test)
