"""Token batches streamed from a corpus, with a position that can be saved and restored.

Documents (from `Corpus.stream`, mixed by subset weight, endless) are encoded as
<bos> tokens <eos> and laid end to end; the stream is cut into rows of seq_len + 1 tokens
(inputs and the targets shifted by one). Consecutive rows mostly come from one document, so a
batch of them is a poor sample of the corpus; with `shuffle_rows=N` rows go through a shuffle
buffer of N rows (each new row takes the place of one drawn at random, seeded), so a batch
mixes about N / rows-per-document documents. With several processes, every process draws the same
global batch of `batch_size * world_size` rows and keeps rows rank, rank + world_size, ...:
the average of the per-process losses is the loss of the global batch, so a data-parallel run
follows the single-process one.

Resuming: the state is the number of global batches drawn; `load_state_dict` rebuilds the
stream and skips that many batches (tokenization only, no model work), which is exact because
the stream is a deterministic function of the corpus, the tokenizer and the seed.

Shapes: B batch_size (per process), T seq_len.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from cerebrum._util.validation import check_positive_int
from cerebrum.data.corpus import Corpus


class TokenBatches:
    """An endless iterator of (B, T + 1) int64 batches (see the module docstring)."""

    def __init__(self, corpus: Corpus, tokenizer, *, batch_size: int, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, split: str = "train",
                 shuffle_rows: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        shuffle_rows = check_positive_int(shuffle_rows, name="shuffle_rows", minimum=0)
        self.corpus, self.tokenizer = corpus, tokenizer
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.shuffle_rows = shuffle_rows
        self.rank, self.world_size, self.split = rank, world_size, split
        self.drawn = 0
        self._rows = self._shuffled(self._row_stream())

    def _shuffled(self, rows: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """rows through a shuffle buffer of `shuffle_rows` rows (unchanged when 0)."""
        if self.shuffle_rows <= 1:
            yield from rows
            return
        rng = random.Random(self.seed)
        buffer: list[torch.Tensor] = []
        for row in rows:
            if len(buffer) < self.shuffle_rows:
                buffer.append(row)
                continue
            i = rng.randrange(self.shuffle_rows)
            yield buffer[i]
            buffer[i] = row
        rng.shuffle(buffer)  # a finite corpus stream (never in training: the stream is endless)
        yield from buffer

    def _row_stream(self) -> Iterator[torch.Tensor]:
        """Rows of seq_len + 1 token ids (int32: a large shuffle buffer stays small)."""
        buffer: list[int] = []
        width = self.seq_len + 1
        for doc in self.corpus.stream(self.split, seed=self.seed):
            buffer.extend([self.tokenizer.bos_id, *self.tokenizer.encode(doc.text),
                           self.tokenizer.eos_id])
            # cut rows by an offset and drop the used part once per document: slicing the
            # buffer row by row would copy a long document's tokens once per row
            start = 0
            while len(buffer) - start >= width:
                yield torch.tensor(buffer[start:start + width], dtype=torch.int32)
                start += width
            del buffer[:start]

    def _global_batch(self) -> list[torch.Tensor]:
        return [next(self._rows) for _ in range(self.batch_size * self.world_size)]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        rows = self._global_batch()[self.rank::self.world_size]
        self.drawn += 1
        return torch.stack(rows).long()

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed, "shuffle_rows": self.shuffle_rows}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"the checkpoint's data seed {state.get('seed')} differs from "
                             f"this run's {self.seed}")
        if state.get("shuffle_rows", 0) != self.shuffle_rows:
            raise ValueError(f"the checkpoint's shuffle_rows {state.get('shuffle_rows', 0)} "
                             f"differs from this run's {self.shuffle_rows}")
        self._rows = self._shuffled(self._row_stream())
        for _ in range(int(state["drawn"])):
            self._global_batch()
        self.drawn = int(state["drawn"])
