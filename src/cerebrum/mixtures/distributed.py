"""Distributed EM over torch.distributed: every process (rank) holds a shard of the data.

Nothing here is home-made communication: each operation is one torch.distributed collective on
the default process group (gloo on CPU, nccl on GPU), which the caller initialised (torchrun
plus `init_process_group`). What a classical fit exchanges:

- its totals once (sample count, weighted sum and total weight: the centre of the fitting
  coordinates and the normaliser of the mean log-likelihood must be global);
- the random generator's state once per fit, broadcast from rank 0, so every rank draws the
  same numbers wherever a single process would draw them (k-means++, random starts, HMM mixture
  splitting); draws that concern local rows use a per-rank generator seeded from it;
- the initialisation sample: at most `INIT_SAMPLE_ROWS` rows gathered from all ranks, in
  proportion to their shares, on which k-means++ seeding runs identically on every rank (below
  that many rows in total the sample is the whole data in rank order, so the seeds equal those
  of one process on the concatenated data); the Lloyd steps that follow run on all the data,
  their sums all-reduced;
- every EM iteration, the sufficient statistics, all-reduced (sum) before the M step; the M
  step then runs redundantly on every rank from identical sums, so every rank ends with
  identical parameters without a broadcast;
- rarely, the worst-explained samples of every rank, when a dead component must be re-seeded.

Shapes: N rows on this rank, D features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cerebrum.mixtures._data import Chunk

#: Rows gathered from all ranks for k-means++ seeding (a uniform sample when there are more).
INIT_SAMPLE_ROWS = 1 << 16


def communicator(distributed: bool | None) -> Communicator | None:
    """The communicator of the default process group when the fit should be distributed.

    `distributed=None` (the default of `fit`) detects an initialised process group of more than
    one process; True insists on one (a ValueError names what is missing); False fits this
    process's data alone even inside a group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return None
    active = dist.is_available() and dist.is_initialized()
    if distributed and not active:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group: run under "
            "torchrun and call torch.distributed.init_process_group() first"
        )
    if not active or (distributed is None and dist.get_world_size() == 1):
        return None
    return Communicator()


class Communicator:
    """Collectives on the default process group, for tensors on any device (they travel on the
    backend's device: the current CUDA device for nccl, the CPU otherwise)."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    # ------------------------------------------------------------------ sums

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The element-wise sums over all ranks of `tensors`, in one all-reduce per dtype
        (tensors of a dtype are flattened into one buffer: one collective, not one each)."""
        by_dtype: dict[torch.dtype, list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_dtype.setdefault(tensor.dtype, []).append(index)
        result: list[torch.Tensor | None] = [None] * len(tensors)
        for indices in by_dtype.values():
            flat = torch.cat([tensors[i].reshape(-1).to(self.device) for i in indices])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for i in indices:
                size = tensors[i].numel()
                result[i] = flat[offset:offset + size].view(tensors[i].shape).to(
                    tensors[i].device)
                offset += size
        return result

    def reduce_stats(self, stats):
        """Statistics with `map_sums` (GaussianStats, HMMStats) summed over all ranks."""
        return stats.map_sums(self.all_reduce_sum)

    def sum_int(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return int(tensor)

    # ------------------------------------------------------------------ randomness

    def synchronise(self, generator: torch.Generator) -> torch.Generator:
        """`generator` with rank 0's state on every rank (in place; returned for chaining)."""
        state = generator.get_state().to(self.device)
        dist.broadcast(state, src=0)
        generator.set_state(state.cpu())
        return generator

    def local_generator(self, shared: torch.Generator) -> torch.Generator:
        """A generator for this rank's own rows, seeded from `shared` (one draw from it on
        every rank, so the shared generators stay in step) and the rank."""
        seed = int(torch.randint(2**62, (1,), generator=shared, device=shared.device))
        return torch.Generator(device=shared.device).manual_seed(seed + self.rank)

    # ------------------------------------------------------------------ gathering rows

    def all_gather(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each of `tensors` (n_rank, ...) concatenated over the ranks in rank order, on every
        rank; the ranks may hold different numbers of rows (zero included)."""
        counts = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        counts[self.rank] = tensors[0].shape[0]
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        counts = counts.tolist()
        longest = max(counts)
        gathered = []
        for tensor in tensors:
            padded = tensor.new_zeros((longest, *tensor.shape[1:]), device=self.device)
            padded[: tensor.shape[0]] = tensor.to(self.device)
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded)
            gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
                            .to(tensor.device))
        return gathered

    def gather_lowest(self, scores: torch.Tensor, rows: torch.Tensor, n_rows: int):
        """The `n_rows` rows with the lowest scores over all ranks, given each rank's own
        lowest (scores (n,), rows (n, D)); identical on every rank."""
        scores, rows = self.all_gather(scores, rows)
        keep = torch.topk(scores, min(n_rows, len(scores)), largest=False).indices
        return scores[keep], rows[keep]

    def gather_sample(self, source, generator: torch.Generator,
                      n_rows: int = INIT_SAMPLE_ROWS) -> RowSample:
        """A sample of at most `n_rows` rows of the whole data (with their weights), the same
        on every rank: all rows in rank order when there are no more, else a uniform sample
        without replacement, each rank contributing in proportion to its rows."""
        counts = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        counts[self.rank] = source.n_samples
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        total = int(counts.sum())
        if total <= n_rows:
            picks = torch.arange(source.n_samples, device=source.device)
        else:
            local = self.local_generator(generator)
            # shares by largest remainder, computed identically on every rank
            exact = counts.double() * n_rows / total
            shares = exact.floor().long()
            remainder = n_rows - int(shares.sum())
            shares[torch.argsort(exact - shares, descending=True)[:remainder]] += 1
            mine = int(shares[self.rank])
            picks = torch.randperm(source.n_samples, generator=local,
                                   device=source.device)[:mine].sort().values
        rows, weights = _rows_at(source, picks)
        rows, weights = self.all_gather(rows, weights)
        return RowSample(rows, weights)


def _rows_at(source, picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of `source` at the sorted indices `picks` (n, D), with their weights (n,)."""
    rows = torch.empty(len(picks), source.n_features, dtype=source.dtype, device=source.device)
    weights = torch.empty(len(picks), dtype=source.dtype, device=source.device)
    offset = 0
    for chunk in source:
        inside = (picks >= offset) & (picks < offset + chunk.n_samples)
        rows[inside] = chunk.X[picks[inside] - offset]
        weights[inside] = chunk.weights_or_ones()[picks[inside] - offset]
        offset += chunk.n_samples
    return rows, weights


@dataclass
class RowSample:
    """Rows held in memory (already in the fitting coordinates) that k-means++ seeding and
    random picks iterate over like a `SampleSource` of one chunk."""

    X: torch.Tensor
    weight: torch.Tensor

    def __post_init__(self):
        self.n_samples, self.n_features = self.X.shape
        self.dtype, self.device = self.X.dtype, self.X.device

    def __iter__(self) -> Iterator[Chunk]:
        yield Chunk(self.X, self.weight)


def empty_shard_as_rows(X, n_features: int):
    """An empty shard given as None or an empty list, as a (0, D) array: a rank of a
    distributed fit may hold no data and still takes part in every collective."""
    if X is None or (isinstance(X, (list, tuple)) and len(X) == 0):
        return np.zeros((0, n_features))
    return X


def is_empty_shard(X) -> bool:
    """Whether `X` holds no data: None, an empty list, or an array of zero rows."""
    return X is None or len(X) == 0


def shard_bounds(n_rows: int, lengths, rank: int, world_size: int):
    """This rank's share of a table of `n_rows` rows: (start, stop, its lengths or None).

    Rows are split into contiguous, near-equal slices; sequences (`lengths`) are never cut:
    each rank takes the whole sequences whose first frame falls in its row slice, so frames are
    balanced to within one sequence. A rank may get nothing (more ranks than sequences).
    """
    if lengths is None:
        return rank * n_rows // world_size, (rank + 1) * n_rows // world_size, None
    lengths = [int(n) for n in lengths]
    if sum(lengths) != n_rows:
        raise ValueError(f"lengths sum to {sum(lengths)}, but the data have {n_rows} rows: "
                         "they must be equal")
    starts, position = [], 0
    for length in lengths:
        starts.append(position)
        position += length
    lower, upper = rank * n_rows // world_size, (rank + 1) * n_rows // world_size
    mine = [i for i, first in enumerate(starts) if lower <= first < upper]
    if not mine:  # an empty slice where the next rank's sequences begin
        first = next((start for start in starts if start >= lower), n_rows)
        return first, first, []
    return starts[mine[0]], starts[mine[-1]] + lengths[mine[-1]], [lengths[i] for i in mine]
