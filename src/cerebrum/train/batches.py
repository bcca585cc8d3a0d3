"""Token batches streamed from a corpus, with a position that can be saved and restored.

Documents (from `Corpus.stream`, mixed by subset weight, endless) are encoded as
<bos> tokens <eos> and laid end to end; the stream is cut into rows of seq_len + 1 tokens
(inputs and the targets shifted by one). With several processes, every process draws the same
global batch of `batch_size * world_size` rows and keeps rows rank, rank + world_size, ...:
the average of the per-process losses is the loss of the global batch, so a data-parallel run
follows the single-process one.

Resuming: the state is the number of global batches drawn; `load_state_dict` rebuilds the
stream and skips that many batches (tokenization only, no model work), which is exact because
the stream is a deterministic function of the corpus, the tokenizer and the seed.

Shapes: B batch_size (per process), T seq_len.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cerebrum.data.corpus import Corpus


class TokenBatches:
    """An endless iterator of (B, T + 1) int64 batches (see the module docstring)."""

    def __init__(self, corpus: Corpus, tokenizer, *, batch_size: int, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, split: str = "train"):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.corpus, self.tokenizer = corpus, tokenizer
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size, self.split = rank, world_size, split
        self.drawn = 0
        self._rows = self._row_stream()

    def _row_stream(self) -> Iterator[list[int]]:
        buffer: list[int] = []
        width = self.seq_len + 1
        for doc in self.corpus.stream(self.split, seed=self.seed):
            buffer.extend([self.tokenizer.bos_id, *self.tokenizer.encode(doc.text),
                           self.tokenizer.eos_id])
            # cut rows by an offset and drop the used part once per document: slicing the
            # buffer row by row would copy a long document's tokens once per row
            start = 0
            while len(buffer) - start >= width:
                yield buffer[start:start + width]
                start += width
            del buffer[:start]

    def _global_batch(self) -> list[list[int]]:
        return [next(self._rows) for _ in range(self.batch_size * self.world_size)]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        rows = self._global_batch()[self.rank::self.world_size]
        self.drawn += 1
        return torch.tensor(rows, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"the checkpoint's data seed {state.get('seed')} differs from "
                             f"this run's {self.seed}")
        self._rows = self._row_stream()
        for _ in range(int(state["drawn"])):
            self._global_batch()
        self.drawn = int(state["drawn"])
