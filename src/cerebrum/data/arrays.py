"""Numeric data from files for the command line: .npy, .npz and .csv.

`load_arrays(path)` returns (X, lengths): X (N, D) float64 and lengths (B,) when the file
describes sequences, else None. Sequences come from
    - a (B, T, D) array in a .npy / .npz file (B sequences of T steps);
    - an .npz file holding "X" and "lengths" (hmmlearn's convention);
    - a sequence-id column (`sequence_column`, a CSV header name or a 0-based index): each run
      of consecutive rows with the same id is one sequence, and the column is dropped;
    - explicit `lengths`.
CSV files may have one header row (detected: a first row that is not all numbers).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv")


def load_arrays(path, *, key: str | None = None, sequence_column=None, lengths=None):
    """(X (N, D) float64, lengths (B,) int64 or None) from a .npy, .npz or .csv file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of "
                         f"{', '.join(SUFFIXES)}")
    file_lengths = None
    if suffix == ".csv":
        values, header = _read_csv(path)
    elif suffix == ".npy":
        values, header = _as_float(np.load(path, allow_pickle=False), path), None
    else:
        values, file_lengths, header = _read_npz(path, key), None, None
        with np.load(path, allow_pickle=False) as archive:
            if "lengths" in archive.files and key != "lengths":
                file_lengths = archive["lengths"]
    if sequence_column is not None:
        if values.ndim != 2:
            raise ValueError(f"{path}: a sequence column needs a 2-D table, got shape "
                             f"{values.shape}")
        values, file_lengths = _split_by_column(values, header, sequence_column, path)
    if values.ndim == 3:
        B, T, D = values.shape
        file_lengths = np.full(B, T) if file_lengths is None else file_lengths
        values = values.reshape(B * T, D)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"{path}: expected (N, D) or (B, T, D) numbers, got shape "
                         f"{values.shape}")
    if lengths is not None:
        file_lengths = lengths
    if file_lengths is not None:
        file_lengths = np.asarray(file_lengths, dtype=np.int64).ravel()
    return values, file_lengths


def _as_float(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{path}: expected real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        names = [n for n in archive.files if n != "lengths"]
        if key is None:
            if "X" in archive.files:
                key = "X"
            elif len(names) == 1:
                key = names[0]
            else:
                raise ValueError(f"{path} holds arrays {', '.join(archive.files)}: name the one "
                                 "to use with --key (or store it as 'X')")
        if key not in archive.files:
            raise ValueError(f"{path} has no array {key!r}; it holds "
                             f"{', '.join(archive.files)}")
        return _as_float(archive[key], path)


def _read_csv(path: Path):
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path} is empty")
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise ValueError(f"{path}: rows have different numbers of columns ({sorted(widths)})")
    try:
        values = np.array([[float(c) for c in row] for row in rows], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: not all cells are numbers ({err})") from None
    if values.size == 0:
        raise ValueError(f"{path} has a header but no rows")
    return values, header


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _split_by_column(values, header, column, path):
    if isinstance(column, str) and not column.lstrip("-").isdigit():
        if header is None or column not in header:
            raise ValueError(f"{path}: no column named {column!r}"
                             + (f"; columns: {', '.join(header)}" if header else
                                " (the file has no header row)"))
        index = header.index(column)
    else:
        index = int(column)
        if not -values.shape[1] <= index < values.shape[1]:
            raise ValueError(f"{path}: column index {index} is out of range for "
                             f"{values.shape[1]} columns")
    ids = values[:, index]
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(ids)]])
    return np.delete(values, index, axis=1), np.diff(bounds)
