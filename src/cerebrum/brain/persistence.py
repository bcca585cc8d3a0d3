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

Nothing is built from a file before it is checked: the metadata must have the layout above
(ids unique), the SHA-256 of the metadata and the tensors (stored next to the metadata under
"cerebrum.sha256"; files written before it existed load without) must match, no parameter
may hold NaN, and each model's tensors must have exactly the names, shapes and dtypes
its config declares, compared against a skeleton of the model built on PyTorch's "meta"
device (which allocates nothing), so a small file cannot make the loader allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import stat
import struct
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode

from cerebrum._util.files import write_bytes_atomically
from cerebrum._util.validation import check_device
from cerebrum.brain import registry
from cerebrum.exceptions import CerebrumFileError

FORMAT = "cerebrum"
VERSION = 1
KINDS = ("model", "manager", "brain")
#: A safetensors header larger than this is not ours (guards against reading junk lengths).
_MAX_HEADER_BYTES = 100 << 20
#: The metadata key of the content hash: SHA-256 over the "cerebrum" metadata text and every
#: tensor (name, dtype, shape, bytes) in name order. SHA-256 was the fastest of sha256,
#: blake2b, sha1 and md5 measured on 500 MB of tensors (0.35 s, with the CPU's SHA
#: instructions; the safetensors serialisation itself took 1.8 s).
HASH_KEY = "cerebrum.sha256"


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
    """Rebuild a model from its record and tensors (`source` names the file in errors).

    The record is checked first, then the tensors under its prefix against a skeleton built
    on the meta device (names, shapes, dtypes): a config that declares sizes the tensors do
    not have is refused before anything is allocated."""
    device = check_device(device)
    check_model_record(record, source=source)
    try:
        family = registry.get(record["family"])
        config = family.make_config(record["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CerebrumFileError(f"{source}: bad model record: {err}") from None
    prefix = record["tensors"] + "."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    _check_state_fits_config(family, config, state, source=source, prefix=prefix)
    model = family.build(config, device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CerebrumFileError(
            f"{source}: the tensors do not fit a {family.name} model with config "
            f"{record['config']}: {err}"
        ) from None
    family.restore_summary(model, record.get("summary", {}))
    return model


def check_model_record(record, *, source: str, where: str = "model record") -> None:
    """A CerebrumFileError unless `record` has a model record's layout (before any use)."""
    expect_json(record, dict, where, source)
    for field, kind in (("family", str), ("config", dict), ("tensors", str)):
        if field not in record:
            raise CerebrumFileError(f"{source}: bad {where}: it has no {field!r}")
        expect_json(record[field], kind, f"{where}'s {field!r}", source)
    if "summary" in record:
        expect_json(record["summary"], dict, f"{where}'s 'summary'", source)


def expect_json(value, kind: type, what: str, source: str):
    """`value` when it is a `kind` (JSON object, array, string), else a CerebrumFileError."""
    if not isinstance(value, kind):
        raise CerebrumFileError(
            f"{source}: bad file metadata: the {what} must be a JSON {_JSON_NAMES[kind]}, "
            f"got {_json_type(value)}"
        )
    return value


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer"}


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _JSON_NAMES.items():
        if isinstance(value, kind):
            return f"a JSON {name} ({json.dumps(value)[:60]})"
    return type(value).__name__


def _check_state_fits_config(family, config, state: dict, *, source: str, prefix: str):
    """Compare the tensors of one model with the names, shapes and dtypes its config declares,
    using a skeleton built on the meta device (nothing allocated)."""
    # A count in the config (layers, heads) could make even the skeleton huge in Python
    # objects: stop once it registers far more tensors and modules than the file holds.
    limit = 4 * len(state) + 1000
    try:
        with torch.device("meta"), _SkipInitialisation(), _registration_limit(limit):
            skeleton = family.build(config, device=None)
    except _TooManyRegistrations:
        raise CerebrumFileError(
            f"{source}: the config of the {family.name} model under {prefix[:-1]!r} "
            f"({dataclasses.asdict(config)}) declares more than {limit} tensors and modules, "
            f"but the file holds {len(state)} tensors for it"
        ) from None
    except (TypeError, ValueError) as err:
        raise CerebrumFileError(f"{source}: bad model record: {err}") from None
    except (RuntimeError, NotImplementedError):
        return  # a family that cannot build on the meta device: load_state_dict checks
    expected = skeleton.state_dict()
    fields = dataclasses.asdict(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(prefix + k for k in missing[:5])}"] if missing else []) \
            + ([f"unexpected {', '.join(prefix + k for k in unexpected[:5])}"]
               if unexpected else [])
        raise CerebrumFileError(
            f"{source}: the tensors do not fit a {family.name} model with config {fields}: "
            f"{'; '.join(parts)}"
        )
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise CerebrumFileError(
                f"{source}: tensor {prefix}{name} is {_describe(got)}, but a {family.name} "
                f"model with config {fields} needs {_describe(want)}"
            )
    for name, _ in skeleton.named_parameters():
        _check_no_nan(state[name], f"{prefix}{name}", source)


def _check_no_nan(tensor: torch.Tensor, name: str, source: str) -> None:
    """A parameter never holds NaN (infinities are allowed: the log of a probability of 0 is
    -inf). Buffers may: some families mark "not set yet" with NaN."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor.reshape(-1))  # NaN propagates: one cheap pass
    if math.isnan(float(low)) or math.isnan(float(high)):
        count = int(torch.isnan(tensor).sum())
        raise CerebrumFileError(f"{source} is damaged: tensor {name} holds {count} NaN "
                                "value(s)")


class _SkipInitialisation(TorchFunctionMode):
    """While a skeleton is built on the meta device: random factories become `empty` and
    initialisers return their tensor untouched. The values of a skeleton are never read,
    and PyTorch's Python meta kernels (random ops, eye, but also arange and arithmetic)
    import sympy on first use, 1.5-4 s once per process: this keeps the classical families
    (parameters made by zeros and randn) clear of it; a family whose constructor computes
    on tensors (rotary tables) pays it on its first load."""

    _FACTORIES = (torch.randn, torch.rand, torch.eye)
    _KEEP = ("dtype", "device", "layout", "requires_grad")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._FACTORIES:
            kept = {k: v for k, v in kwargs.items() if k in self._KEEP}
            if func is torch.eye:  # eye(n, m=n)
                size = (args[0], args[1] if len(args) > 1 else kwargs.get("m", args[0]))
            else:
                size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(
                    args[0], int) else args)
            return torch.empty(size, **kept)
        name = getattr(func, "__name__", "")
        if name.endswith("_") and (getattr(func, "__module__", "") == "torch.nn.init"
                                   or name in self._RANDOM_METHODS):
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)

    _RANDOM_METHODS = frozenset({"normal_", "uniform_", "random_", "exponential_",
                                 "bernoulli_", "cauchy_", "log_normal_", "geometric_"})


class _TooManyRegistrations(Exception):
    """Raised inside a skeleton's construction that registers more than its limit."""


@contextlib.contextmanager
def _registration_limit(limit: int):
    """Raise _TooManyRegistrations once this thread registers more than `limit` parameters,
    buffers and submodules (global module hooks; other threads are not counted)."""
    thread = threading.get_ident()
    count = 0

    def hook(*_):
        nonlocal count
        if threading.get_ident() == thread:
            count += 1
            if count > limit:
                raise _TooManyRegistrations

    handles = [register(hook) for register in (
        module_hooks.register_module_parameter_registration_hook,
        module_hooks.register_module_buffer_registration_hook,
        module_hooks.register_module_module_registration_hook,
    )]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} of shape {tuple(tensor.shape)}"


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
    header = json.dumps({"format": FORMAT, "version": VERSION, "kind": kind, "record": record})
    metadata = {FORMAT: header, HASH_KEY: content_hash(header, tensors)}
    return write_bytes_atomically(path, save_safetensors(tensors, metadata=metadata))


def content_hash(header: str, tensors: dict) -> str:
    """SHA-256 (hex) of the metadata text and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            flat = tensor.cpu().contiguous().reshape(-1)
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def read_file(path, *, expect: tuple[str, ...] = KINDS, device=None):
    """(kind, record, tensors) of a Cerebrum file, checked before anything is trusted."""
    device = check_device(device)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the file to read must be a path (str or os.PathLike), got "
                        f"{type(path).__name__} {path!r}")
    path = Path(path)
    data = _read_bytes(path)
    header, text, stored_hash = _read_header(data, path)
    kind = header.get("kind")
    if kind not in expect:
        raise CerebrumFileError(
            f"{path} holds a {kind!r}, but a {' or '.join(map(repr, expect))} was expected"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise CerebrumFileError(f"{path} is damaged: {err}") from None
    if stored_hash is not None and content_hash(text, tensors) != stored_hash:
        raise CerebrumFileError(
            f"{path} is damaged: its content does not match the SHA-256 stored in it (the "
            "file was corrupted or edited after it was written)"
        )
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return kind, header["record"], tensors


def _tensor_prefixes(record) -> set[str]:
    """The tensor prefixes the model records inside a (JSON) record declare."""
    if isinstance(record, dict):
        found = {record["tensors"]} if isinstance(record.get("tensors"), str) else set()
        for value in record.values():
            found |= _tensor_prefixes(value)
        return found
    if isinstance(record, list):
        return set().union(*map(_tensor_prefixes, record)) if record else set()
    return set()


def check_every_tensor_is_claimed(record, tensors: dict, source) -> None:
    """Refuse a tensor that no model of the (checked) record owns: the tensors must be
    exactly the models' ones, and an extra one means the file was edited or written by
    something else. The loaders call it once the record's own checks have passed."""
    prefixes = tuple(p + "." for p in _tensor_prefixes(record))
    stray = sorted(name for name in tensors if not name.startswith(prefixes))
    if stray:
        raise CerebrumFileError(
            f"{source} is damaged: tensor(s) {', '.join(stray[:5])} belong to no model in it")


def _read_bytes(path: Path) -> bytes:
    """The bytes of a regular file, or an error that names the path and what it is."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except OSError as err:
        raise CerebrumFileError(f"cannot read {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe " \
            "or socket)"
        raise FileNotFoundError(f"no such file: {path} is {what}, not a Cerebrum file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CerebrumFileError(f"cannot read {path}: {err.strerror or err}") from None


def _read_header(data: bytes, path: Path) -> tuple[dict, str, str | None]:
    """(the Cerebrum header, its text, the stored content hash or None), or a
    CerebrumFileError saying what the file is not."""
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
        metadata = json.loads(data[8:8 + size])["__metadata__"]
        text = metadata[FORMAT]
        header = json.loads(text)
    except (ValueError, KeyError, TypeError, IndexError):
        raise CerebrumFileError(
            f"{path} is not a Cerebrum file: a safetensors file without Cerebrum metadata"
            if data[8:9] == b"{" else f"{path} is not a Cerebrum file"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CerebrumFileError(f"{path} is not a Cerebrum file: unexpected metadata "
                                f"({_json_type(header)})")
    if header.get("version") != VERSION:
        raise CerebrumFileError(
            f"{path} was written by format version {header.get('version')}; this Cerebrum "
            f"reads version {VERSION}"
        )
    expect_json(header.get("record"), dict, "file's record", str(path))
    unknown = sorted(set(metadata) - {FORMAT, HASH_KEY})
    if unknown:  # e.g. a damaged hash key, which would otherwise turn the check off
        raise CerebrumFileError(f"{path} is damaged: unexpected metadata key(s) "
                                f"{', '.join(map(repr, unknown))}")
    stored_hash = metadata.get(HASH_KEY)
    if stored_hash is not None and not (
            isinstance(stored_hash, str) and len(stored_hash) == 64):
        raise CerebrumFileError(f"{path} is damaged: its stored SHA-256 is not a hash")
    return header, text, stored_hash
