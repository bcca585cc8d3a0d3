"""Sequences of unequal length as one tensor of frames plus lengths, padded on demand.

Every sequence model takes its input in any of three forms and turns it, once, into a
`SequenceBatch`: the frames of all sequences concatenated (N, D), and their lengths (B,).
Inference pads per-frame values to (..., B, T) for batched recursions and maps results back to
frames; when all lengths are equal both directions are free views.

Shapes: N frames in total, B sequences, T the longest length, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cerebrum._util.validation import check_finite, to_numeric_tensor


@dataclass
class SequenceBatch:
    """Frames `X` (N, D) of B sequences laid end to end, and `lengths` (B,) int64 (each >= 1)."""

    X: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self):
        self.lengths_list = self.lengths.tolist()
        self.n_sequences = len(self.lengths_list)
        self.max_length = max(self.lengths_list)
        self.equal_lengths = min(self.lengths_list) == self.max_length
        if not self.equal_lengths:
            # flat position b * T + t of every frame in the padded layout
            offsets = torch.arange(self.n_sequences, device=self.X.device) * self.max_length
            starts = torch.cumsum(self.lengths, 0) - self.lengths
            frame = torch.arange(self.n_frames, device=self.X.device)
            owner = torch.repeat_interleave(
                torch.arange(self.n_sequences, device=self.X.device), self.lengths
            )
            self._positions = offsets[owner] + frame - starts[owner]

    @property
    def first_frames(self) -> torch.Tensor:
        """Index (B,) of each sequence's first frame in X."""
        return torch.cumsum(self.lengths, 0) - self.lengths

    @property
    def n_frames(self) -> int:
        return self.X.shape[0]

    def pad(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-frame values (..., N) as (..., B, T), `fill` past each sequence's end."""
        leading = values.shape[:-1]
        if self.equal_lengths:
            return values.reshape(*leading, self.n_sequences, self.max_length)
        padded = values.new_full((*leading, self.n_sequences * self.max_length), fill)
        padded[..., self._positions] = values
        return padded.view(*leading, self.n_sequences, self.max_length)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """(..., B, T) back to per-frame values (..., N)."""
        flat = padded.reshape(*padded.shape[:-2], self.n_sequences * self.max_length)
        return flat if self.equal_lengths else flat[..., self._positions]


def as_sequence_batch(
    X,
    lengths=None,
    *,
    n_features: int,
    dtype: torch.dtype,
    device: torch.device | str,
    owner: str = "this model",
) -> SequenceBatch:
    """Validate sequences given as a (B, T, D) array, a list of (T_i, D) arrays, or an (N, D)
    array of concatenated frames with `lengths` (hmmlearn's convention; no `lengths` means one
    sequence). `lengths` with a (B, T, D) array gives each padded row's true length."""
    if isinstance(X, (list, tuple)):
        if lengths is not None:
            raise ValueError(
                "lengths must be None when X is a list of sequences (their lengths are known)"
            )
        if len(X) == 0:
            raise ValueError("X is an empty list: expected at least one sequence")
        parts = [
            _check_frames(part, n_features, dtype, device, f"X[{index}]", owner)
            for index, part in enumerate(X)
        ]
        frames = torch.cat(parts) if len(parts) > 1 else parts[0]
        sizes = torch.tensor([len(part) for part in parts], device=device)
        return SequenceBatch(frames, sizes)

    tensor = to_numeric_tensor(X, name="X", dtype=dtype, device=device)
    if tensor.ndim == 3:
        batch, n_steps, width = tensor.shape
        _check_width(width, n_features, "X", owner)
        if batch == 0 or n_steps == 0:
            raise ValueError(f"X is empty: got shape {tuple(tensor.shape)}")
        if lengths is None:
            check_finite(tensor, name="X")
            return SequenceBatch(tensor.reshape(-1, width), torch.full((batch,), n_steps,
                                                                        device=device))
        sizes = _check_lengths(lengths, device)
        if len(sizes) != batch or bool((sizes > n_steps).any()):
            raise ValueError(
                f"lengths must give one length <= {n_steps} for each of the {batch} rows of X, "
                f"got {sizes.tolist()}"
            )
        mask = torch.arange(n_steps, device=device) < sizes.unsqueeze(1)
        frames = tensor[mask]
        check_finite(frames, name="X")
        return SequenceBatch(frames, sizes)

    frames = _check_frames(tensor, n_features, dtype, device, "X", owner)
    if lengths is None:
        return SequenceBatch(frames, torch.tensor([len(frames)], device=device))
    sizes = _check_lengths(lengths, device)
    total = sum(sizes.tolist())  # exact: an int64 sum of huge lengths could wrap
    if total != len(frames):
        raise ValueError(
            f"lengths sum to {total}, but X has {len(frames)} rows: they must be equal"
        )
    return SequenceBatch(frames, sizes)


def _check_width(width: int, n_features: int, name: str, owner: str) -> None:
    if width != n_features:
        raise ValueError(
            f"{name} has {width} features, but {owner} was built with n_features={n_features}"
        )


def _check_frames(part, n_features, dtype, device, name, owner) -> torch.Tensor:
    tensor = to_numeric_tensor(part, name=name, dtype=dtype, device=device)
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_steps, n_features), got an array of shape "
            f"{tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is a sequence of length 0: every sequence needs >= 1 step")
    _check_width(tensor.shape[1], n_features, name, owner)
    check_finite(tensor, name=name)
    return tensor


def _check_lengths(lengths, device) -> torch.Tensor:
    array = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"lengths must be a non-empty 1-D sequence of integers, got shape {array.shape}"
        )
    if array.dtype.kind not in "iu":
        if array.dtype.kind != "f":
            raise TypeError(f"lengths must hold integers, got dtype {array.dtype}")
        whole = np.isfinite(array) & (array == np.round(array))
        if not np.all(whole):  # never truncate 150.7 to 150 silently
            index = int(np.flatnonzero(~whole)[0])
            raise TypeError(f"lengths must hold integers, got lengths[{index}] = "
                            f"{array[index]} (dtype {array.dtype})")
    if np.any(array <= 0):
        index = int(np.flatnonzero(array <= 0)[0])
        raise ValueError(
            f"lengths must be positive: lengths[{index}] = {array[index]} (a sequence of "
            "length 0 has no frames)"
        )
    # a uint64 (or float) above int64's range would wrap to a negative length
    too_long = array > np.iinfo(np.int64).max
    if np.any(too_long):
        index = int(np.flatnonzero(too_long)[0])
        raise ValueError(f"lengths[{index}] = {array[index]} is larger than any sequence "
                         f"can be (at most 2**63 - 1)")
    return torch.as_tensor(array.astype(np.int64), device=device)
