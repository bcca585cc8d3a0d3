"""Samples as a re-iterable of validated chunks: one seam for in-memory and out-of-core data.

EM and k-means only ever loop `for chunk in source`, accumulating sufficient statistics, so the
same code fits an (N, D) array held in memory (one chunk, converted once and kept) and a list of
arrays or a DataLoader streamed from disk (converted chunk by chunk on every pass).

All chunks are centred on the weighted data mean: it costs one subtraction and keeps the
moment-form (GEMM) statistics accurate in float32 when the data sit far from the origin.

In a distributed fit each process holds a shard: `reduce` sums the totals over the processes,
so the centre and the total weight are those of the whole data, and a shard may be empty.

Shapes: N samples (in a chunk), D features.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from cerebrum._util.validation import check_sample_weight, check_samples


@dataclass
class Chunk:
    """One block of samples: `X` (N, D) centred, `weight` (N,) or None for unit weights.

    `cache` holds derived data (its row blocks); an in-memory chunk keeps its cache across EM
    iterations, a streamed chunk is rebuilt on every pass.
    """

    X: torch.Tensor
    weight: torch.Tensor | None
    cache: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    def blocks(self, n_blocks: int) -> list[Chunk]:
        """This chunk split into `n_blocks` row blocks (views), cached with their own caches."""
        key = ("blocks", n_blocks)
        if key not in self.cache:
            rows = -(-self.n_samples // n_blocks)
            self.cache[key] = [
                Chunk(
                    self.X[start : start + rows],
                    None if self.weight is None else self.weight[start : start + rows],
                )
                for start in range(0, self.n_samples, rows)
            ]
        return self.cache[key]

    def weights_or_ones(self) -> torch.Tensor:
        if self.weight is None:
            return torch.ones(self.n_samples, dtype=self.X.dtype, device=self.X.device)
        return self.weight


def is_chunked(X) -> bool:
    """True when `X` is a collection of chunks rather than one array-like of samples."""
    if isinstance(X, (torch.Tensor, np.ndarray)):
        return False
    if isinstance(X, (list, tuple)):
        return len(X) > 0 and all(
            isinstance(item, (torch.Tensor, np.ndarray, list, tuple))
            and np.ndim(item[0] if isinstance(item, (list, tuple)) else item) == 2
            for item in X
        )
    return isinstance(X, Iterable) and not isinstance(X, (str, bytes, dict))


class SampleSource:
    """Validated samples to iterate over, chunk by chunk, any number of times.

    Attributes: `n_samples` (this process's), `total_samples` and `total_weight` (the sum of
    the sample weights, as a float) of the whole data, `center` (D,), `n_features`, `dtype`,
    `device`. `reduce(list of tensors) -> their sums over all processes` makes this one shard
    of distributed data (which may then be empty); None means this process holds it all.
    """

    def __init__(
        self,
        X,
        sample_weight=None,
        *,
        n_features: int,
        dtype: torch.dtype,
        device: torch.device | str,
        owner: str = "this model",
        reduce=None,
    ):
        self.n_features = n_features
        self._reduce = reduce
        self.dtype = dtype
        self.device = torch.device(device)
        self._owner = owner
        self._resident: Chunk | None = None
        if is_chunked(X):
            if iter(X) is X:
                raise TypeError(
                    "X must be an array or a re-iterable of chunks (a list of arrays, a "
                    "DataLoader); got a one-shot iterator, which EM cannot pass over twice"
                )
            if sample_weight is not None and (
                iter(sample_weight) is sample_weight or not isinstance(sample_weight, Iterable)
            ):
                raise TypeError(
                    "with chunked X, sample_weight must be a re-iterable of 1-D arrays, one "
                    "per chunk"
                )
            self._chunks = X
            self._chunk_weights = sample_weight
            self._scan_chunks()
        else:
            X = check_samples(X, n_features=n_features, dtype=dtype, device=device, owner=owner,
                              allow_empty=reduce is not None)
            weight = None
            if sample_weight is not None:
                weight = check_sample_weight(sample_weight, X.shape[0], dtype=dtype, device=device)
            self.n_samples = X.shape[0]
            self._set_totals(*_weighted_sum_and_total(X, weight), X.shape[0])
            self._resident = Chunk(X - self.center, weight)

    def __iter__(self) -> Iterator[Chunk]:
        if self._resident is not None:
            yield self._resident
            return
        for X, weight in self._raw_chunks(validate=False):
            yield Chunk(X - self.center, weight)

    def _set_totals(self, weighted_sum: torch.Tensor, total: torch.Tensor,
                    n_samples: int) -> None:
        count = torch.tensor(float(n_samples), dtype=torch.float64, device=weighted_sum.device)
        if self._reduce is not None:
            weighted_sum, total, count = self._reduce(
                [weighted_sum.double(), total.double(), count])
        self.total_samples = int(count)
        if self.total_samples == 0:  # every shard of a distributed fit was empty
            raise ValueError("X is empty on every process: no process holds a sample")
        self.total_weight = float(total)
        if self.total_weight <= 0:
            raise ValueError(
                "sample_weight sums to zero: at least one sample needs a positive weight"
            )
        self.center = (weighted_sum / total).to(self.dtype)

    def _scan_chunks(self) -> None:
        """First pass: validate every chunk and compute the totals and the centre."""
        n_samples = 0
        weighted_sum = torch.zeros(self.n_features, dtype=torch.float64, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for X, weight in self._raw_chunks(validate=True):
            n_samples += X.shape[0]
            chunk_sum, chunk_total = _weighted_sum_and_total(X, weight)
            weighted_sum += chunk_sum.double()
            total += chunk_total.double()
        if n_samples == 0 and self._reduce is None:
            raise ValueError("X is empty: the chunks hold no samples")
        self.n_samples = n_samples
        self._set_totals(weighted_sum, total, n_samples)

    def _raw_chunks(self, *, validate: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        weights = iter(self._chunk_weights) if self._chunk_weights is not None else None
        for index, item in enumerate(self._chunks):
            X, weight = _split_chunk(item, index)
            if weights is not None:
                if weight is not None:
                    raise ValueError(
                        "sample_weight was given twice: as an argument and inside chunk "
                        f"{index} of X"
                    )
                weight = next(weights, None)
                if weight is None:
                    raise ValueError(
                        f"sample_weight has fewer entries than X has chunks (none for chunk "
                        f"{index})"
                    )
            name = f"X[chunk {index}]"
            if validate:
                X = check_samples(
                    X,
                    n_features=self.n_features,
                    dtype=self.dtype,
                    device=self.device,
                    name=name,
                    owner=self._owner,
                )
                if weight is not None:
                    weight = check_sample_weight(
                        weight, X.shape[0], dtype=self.dtype, device=self.device
                    )
            else:
                X = torch.as_tensor(X).to(device=self.device, dtype=self.dtype)
                if weight is not None:
                    weight = torch.as_tensor(weight).to(device=self.device, dtype=self.dtype)
            yield X, weight


def _split_chunk(item, index: int):
    """A chunk is an array, or a 1- or 2-tuple (X,) / (X, weight) as a DataLoader yields them."""
    if isinstance(item, (list, tuple)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise ValueError(
            f"chunk {index} of X must be an array or an (X, sample_weight) pair, got a "
            f"sequence of length {len(item)}"
        )
    return item, None


def _weighted_sum_and_total(
    X: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if weight is None:
        return X.sum(0), torch.tensor(float(X.shape[0]), dtype=X.dtype, device=X.device)
    return weight @ X, weight.sum()
