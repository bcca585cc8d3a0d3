"""Single-file persistence: tensors as safetensors, everything else as JSON metadata.

A Cerebrum file is a safetensors file whose metadata holds one JSON document under the key
"cerebrum": the format name and version, the kind of object ("model", "manager" or "brain") and
a record per model (its family, config, fitted attributes and the prefix of its tensors).
Loading parses that JSON and the raw tensor bytes, and never unpickles, so a file from a
stranger cannot run code. Writing goes to a temporary file in the same directory, is flushed
to disk and renamed over the target, so a crash mid-save leaves the old file as it was.

Record layout (JSON):
    model:   {"family": "gmm", "config": {...}, "summary": {...}, "tensors": "<prefix>"}
    manager: {"class": "MMMan" | "MM", "family": name or null, "config": {...} or null,
              "models": [{"id": 0 | "abcdef", "model": <model record>}, ...]}
    brain:   {"class": "Cerebrum" | "MMM", "entries": [{"id": "...", "entry": <record>}, ...]}
A model's tensors are its `state_dict()` under "<prefix>.<name>".
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cerebrum._util.files import write_bytes_atomically
from cerebrum._util.validation import check_device
from cerebrum.brain import registry
from cerebrum.exceptions import CerebrumFileError

FORMAT = "cerebrum"
VERSION = 1
KINDS = ("model", "manager", "brain")
#: A safetensors header larger than this is not ours (guards against reading junk lengths).
_MAX_HEADER_BYTES = 100 << 20


# --------------------------------------------------------------------------- model records


def model_record(model: nn.Module, prefix: str, tensors: dict) -> dict:
    """The JSON record of a model of a registered family; its tensors go into `tensors`."""
    record = model_header(model, prefix)
    for name, value in model.state_dict().items():
        # a copy each: tied weights share storage, which safetensors refuses to write
        tensors[f"{prefix}.{name}"] = value.detach().cpu().clone()
    return record


def model_header(model: nn.Module, prefix: str) -> dict:
    """The JSON record of a model of a registered family, its tensors to be found under
    `prefix` (a training checkpoint holds the same record for the same reader)."""
    family = registry.family_of(model)
    if family is None:
        raise TypeError(
            f"cannot save a {type(model).__name__}: it belongs to no registered family "
            f"(registered: {', '.join(registry.names())}); register one with "
            "cerebrum.brain.registry.register"
        )
    return {
        "family": family.name,
        "config": dataclasses.asdict(family.config_of(model)),
        "summary": _jsonable(family.summary(model)),
        "tensors": prefix,
    }


def model_from_record(record: dict, tensors: dict, *, source: str, device=None) -> nn.Module:
    """Rebuild a model from its record and tensors (`source` names the file in errors)."""
    device = check_device(device)
    try:
        family = registry.get(record["family"])
        config = family.make_config(record["config"])
        prefix = record["tensors"] + "."
    except (KeyError, TypeError, ValueError) as err:
        raise CerebrumFileError(f"{source}: bad model record: {err}") from None
    model = family.build(config, device=device)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CerebrumFileError(
            f"{source}: the tensors do not fit a {family.name} model with config "
            f"{record['config']}: {err}"
        ) from None
    family.restore_summary(model, record.get("summary", {}))
    return model


def _jsonable(value):
    """Plain JSON types from fitted attributes (NumPy scalars, tuples, tensors)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # NumPy scalar
        return value.item()
    return value


# --------------------------------------------------------------------------- files


def write_file(path, kind: str, record: dict, tensors: dict) -> Path:
    """Atomically write one object (`kind` in KINDS) as a Cerebrum file; returns the path."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    header = {"format": FORMAT, "version": VERSION, "kind": kind, "record": record}
    return write_bytes_atomically(
        path, save_safetensors(tensors, metadata={FORMAT: json.dumps(header)}))


def read_file(path, *, expect: tuple[str, ...] = KINDS, device=None):
    """(kind, record, tensors) of a Cerebrum file, checked before anything is trusted."""
    device = check_device(device)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    header = _read_header(data, path)
    kind = header.get("kind")
    if kind not in expect:
        raise CerebrumFileError(
            f"{path} holds a {kind!r}, but a {' or '.join(map(repr, expect))} was expected"
        )
    try:
        tensors = load_safetensors(data)
    except SafetensorError as err:
        raise CerebrumFileError(f"{path} is damaged: {err}") from None
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return kind, header["record"], tensors


def _read_header(data: bytes, path: Path) -> dict:
    """The Cerebrum header, or a CerebrumFileError saying what the file is not."""
    if len(data) == 0:
        raise CerebrumFileError(f"{path} is empty: not a Cerebrum file")
    if len(data) < 8:
        raise CerebrumFileError(f"{path} is truncated ({len(data)} bytes): not a Cerebrum file")
    (size,) = struct.unpack("<Q", data[:8])
    looks_pickled = data[:1] == b"\x80" or data[:2] == b"PK"
    if size > _MAX_HEADER_BYTES or 8 + size > len(data):
        what = ("a pickle or torch.save file, which Cerebrum never loads (it could run code)"
                if looks_pickled else "truncated or not a safetensors file")
        raise CerebrumFileError(f"{path} is not a Cerebrum file: {what}")
    try:
        raw = json.loads(data[8:8 + size])
        header = json.loads(raw["__metadata__"][FORMAT])
    except (ValueError, KeyError, TypeError):
        raise CerebrumFileError(
            f"{path} is not a Cerebrum file: a safetensors file without Cerebrum metadata"
            if data[8:9] == b"{" else f"{path} is not a Cerebrum file"
        ) from None
    if header.get("format") != FORMAT or not isinstance(header.get("record"), dict):
        raise CerebrumFileError(f"{path} is not a Cerebrum file: unexpected metadata")
    if header.get("version") != VERSION:
        raise CerebrumFileError(
            f"{path} was written by format version {header.get('version')}; this Cerebrum "
            f"reads version {VERSION}"
        )
    return header
