"""Minimal PNG writing and reading for RGB uint8 images, with the standard library only.

The project has no image library among its dependencies; the MVoT strips (generated grid-world
trajectories) need only 8-bit RGB, so this writes the simplest valid PNG: signature, IHDR (8-bit,
colour type 2), one zlib-compressed IDAT with filter byte 0 on every row, IEND, each chunk with
its CRC-32. `read_png` reads back exactly what `write_png` writes (and any 8-bit RGB PNG whose
rows use filter 0); it exists so the writer is tested by a round trip.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from cerebrum._util.files import write_bytes_atomically

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(image) -> bytes:
    """The PNG bytes of an (H, W, 3) uint8 RGB image."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got shape {array.shape} "
                         f"dtype {array.dtype}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"image must not be empty, got shape {array.shape}")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = np.concatenate([np.zeros((height, 1), np.uint8),
                           np.ascontiguousarray(array).reshape(height, width * 3)], axis=1)
    return (SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + _chunk(b"IEND", b""))


def write_png(path, image) -> Path:
    """Write an (H, W, 3) uint8 RGB image to `path` as PNG (atomically); returns the path."""
    return write_bytes_atomically(path, encode_png(image))


def read_png(path) -> np.ndarray:
    """Read an 8-bit RGB PNG whose rows are unfiltered (what `write_png` writes) -> (H, W, 3)
    uint8."""
    data = Path(path).read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = len(SIGNATURE), b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(
                ">I", data[pos + 8 + length:pos + 12 + length])[0]:
            raise ValueError(f"{path}: chunk {kind!r} fails its CRC")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None or header[2:5] != (8, 2, 0):
        raise ValueError(f"{path}: only 8-bit RGB PNGs are read, header {header}")
    width, height = header[:2]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    if rows[:, 0].any():
        raise ValueError(f"{path}: filtered rows are not supported")
    return rows[:, 1:].reshape(height, width, 3).copy()
