"""Numeric data from files for the command line: .npy, .npz and .csv.

`load_arrays(path)` returns (X, lengths): X (N, D) float64 and lengths (B,) when the file
describes sequences, else None. Sequences come from
    - a (B, T, D) array in a .npy / .npz file (B sequences of T steps);
    - an .npz file holding "X" and "lengths" (hmmlearn's convention);
    - a sequence-id column (`sequence_column`, a CSV header name or a 0-based index): each run
      of consecutive rows with the same id is one sequence, and the column is dropped;
    - explicit `lengths`.
CSV files may have one header row (detected: a first row that is not all numbers).
Files that cannot be read (truncated, not the format their name says, unreadable) raise a
ValueError naming the file; `key` is refused for a file that holds a single array.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv")


def load_arrays(path, *, key: str | None = None, sequence_column=None, lengths=None):
    """(X (N, D) float64, lengths (B,) int64 or None) from a .npy, .npz or .csv file."""
    path = Path(path)
    if not path.is_file():
        what = " (a directory)" if path.is_dir() else ""
        raise FileNotFoundError(f"no such file: {path}{what}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of "
                         f"{', '.join(SUFFIXES)}")
    if key is not None and suffix != ".npz":
        raise ValueError(f"--key / key={key!r} names an array inside an .npz file, but {path} "
                         f"is a {suffix} file with a single table: leave the key out")
    try:
        return _load(path, suffix, key, sequence_column, lengths)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError,
            csv.Error) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ValueError(f"cannot read {path}: {reason}") from None


def _load(path: Path, suffix: str, key, sequence_column, lengths):
    file_lengths = None
    if suffix == ".csv":
        values, header = _read_csv(path)
    elif suffix == ".npy":
        values, header = _as_float(_np_load(path), path), None
    else:
        values, file_lengths, header = _read_npz(path, key), None, None
        with _np_load(path) as archive:
            if "lengths" in archive.files and key != "lengths":
                file_lengths = _as_lengths(_member(archive, "lengths", path), path)
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
        file_lengths = _as_lengths(lengths, "lengths")
    if file_lengths is not None:
        file_lengths = np.asarray(file_lengths, dtype=np.int64).ravel()
    return values, file_lengths


def _np_load(path: Path):
    """np.load without pickles: an array for .npy, an archive for .npz, or a ValueError with
    the file's name (numpy's own messages do not name it)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"cannot read {path} as a NumPy {path.suffix} file (truncated or not "
                         f"that format): {err}") from None
    archive = isinstance(loaded, np.lib.npyio.NpzFile)
    if archive != (path.suffix.lower() == ".npz"):
        if archive:
            loaded.close()
        raise ValueError(f"{path} is {'an .npz archive' if archive else 'a single .npy array'}"
                         f", not what its {path.suffix} name says: rename it")
    return loaded


def _member(archive, name: str, path: Path) -> np.ndarray:
    """One array of an .npz archive (a truncated archive fails here, not at opening)."""
    try:
        return archive[name]
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, OSError) as err:
        raise ValueError(f"cannot read array {name!r} of {path} (truncated or damaged): "
                         f"{err}") from None


def _as_lengths(values, where) -> np.ndarray:
    """Sequence lengths as int64, refusing fractions and values int64 cannot hold (a uint64
    or float array would otherwise wrap or be truncated silently)."""
    array = np.asarray(values).ravel()
    if array.dtype.kind not in "iuf" or array.dtype == bool:
        raise ValueError(f"{where}: sequence lengths must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        bad = array[~(np.isfinite(array) & (array == np.round(array)))][0]
        raise ValueError(f"{where}: sequence lengths must be whole numbers, got {bad}")
    if array.size and (array.max() > np.iinfo(np.int64).max or array.min() < 0):
        bad = array.max() if array.max() > np.iinfo(np.int64).max else array.min()
        raise ValueError(f"{where}: sequence lengths must be between 0 and 2**63 - 1, "
                         f"got {bad}")
    return array.astype(np.int64)


def _as_float(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{path}: expected real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with _np_load(path) as archive:
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
        return _as_float(_member(archive, key, path), path)


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
