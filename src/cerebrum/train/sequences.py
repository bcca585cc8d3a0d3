"""Batches of in-memory sequences for the engine, with a position that can be saved and restored.

The sequences are one padded tensor x (B, T, D) with their lengths (B,) (a `SequenceBatch`,
padded). `split_sequences` holds out a validation share of them; `SequenceBatches` then goes
through the training sequences epoch after epoch: each epoch a seeded permutation of them, cut
into batches of `batch_size` (the last one of an epoch may be smaller). A batch is a dict
    {"x": (b, T_b, D) trimmed to the longest of its sequences, "lengths": (b,) int64,
     "epoch": the 0-based epoch, an int}.

Everything random is a function of the seed (NumPy's SeedSequence, so the split and the order
do not depend on the device), and an epoch's order is a function of the seed and the epoch
alone: the state is the number of batches drawn, and `load_state_dict` goes straight there.

Shapes: B sequences, T the longest length, D features, b sequences in a batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cerebrum._util.validation import check_positive_int

#: spawn keys of the streams drawn from one seed
_SPLIT, _ORDER, _OTHER = 0, 1, 2


def derived_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the stream `key` of `seed` (independent streams from one seed)."""
    sequence = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(_OTHER, *key))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def split_sequences(n_sequences: int, validation_split: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of n_sequences: a seeded permutation, the first
    round(validation_split * n) held out (none of a single sequence). A split that would hold
    out every sequence is refused rather than quietly trained on fewer than asked."""
    n_sequences = check_positive_int(n_sequences, name="n_sequences")
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) % 2**64, spawn_key=(_SPLIT,)))
    order = rng.permutation(n_sequences)
    n_val = 0 if n_sequences == 1 else round(validation_split * n_sequences)
    if n_val >= n_sequences:
        raise ValueError(
            f"validation_split={validation_split!r} holds out all {n_sequences} sequences "
            f"(round({validation_split!r} * {n_sequences}) = {n_val}), leaving none to train "
            "on: use a smaller validation_split or more sequences")
    return order[n_val:], order[:n_val]


class SequenceBatches:
    """An endless iterator of batches of the training sequences (see the module docstring).

    Args:
        x: (B, T, D) padded sequences (on the training device).
        lengths: (B,) their lengths.
        indices: which of the B sequences to train on (the others are held out).
        batch_size: sequences per batch.
        seed: seeds the order of every epoch.
    """

    def __init__(self, x: torch.Tensor, lengths: torch.Tensor, indices, *, batch_size: int,
                 seed: int):
        if x.dim() != 3 or lengths.shape != x.shape[:1]:
            raise ValueError(f"x must be (B, T, D) with lengths (B,), got {tuple(x.shape)} and "
                             f"{tuple(lengths.shape)}")
        self.x, self.lengths = x, lengths
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or len(self.indices) == 0:
            raise ValueError("indices must name at least one sequence to train on")
        self.batch_size = check_positive_int(batch_size, name="batch_size")
        self.seed = int(seed)
        self._lengths_cpu = lengths.detach().cpu().numpy()
        self.drawn = 0
        self._order: tuple[int, torch.Tensor, np.ndarray] | None = None  # (epoch, on device, cpu)

    @property
    def n_sequences(self) -> int:
        return len(self.indices)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_sequences / self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The number of sequences of each batch of an epoch, in order."""
        full, rest = divmod(self.n_sequences, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def order(self, epoch: int) -> np.ndarray:
        """The training sequences in epoch `epoch`'s order (indices into x)."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed % 2**64,
                                                           spawn_key=(_ORDER, int(epoch))))
        return self.indices[rng.permutation(self.n_sequences)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        epoch, k = divmod(self.drawn, self.batches_per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = self.order(epoch)
            self._order = (epoch, torch.as_tensor(order, device=self.x.device), order)
        _, on_device, on_cpu = self._order
        window = slice(k * self.batch_size, (k + 1) * self.batch_size)
        idx = on_device[window]
        top = int(self._lengths_cpu[on_cpu[window]].max())
        self.drawn += 1
        return {"x": self.x[idx, :top], "lengths": self.lengths[idx], "epoch": epoch}

    @staticmethod
    def count_tokens(batch: dict) -> int:
        """What the engine's tokens/s counts for these batches: frames (valid time steps)."""
        return int(batch["lengths"].sum())

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed, "n_sequences": self.n_sequences,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for name in ("seed", "n_sequences", "batch_size"):
            if state.get(name) != getattr(self, name):
                raise ValueError(f"the checkpoint's data {name} {state.get(name)} differs from "
                                 f"this run's {getattr(self, name)}")
        self.drawn = int(state["drawn"])
        self._order = None
