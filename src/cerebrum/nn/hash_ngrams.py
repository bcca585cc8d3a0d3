"""Hash n-gram embeddings of bytes (BLT's local-encoder input).

For each n in `ns` (3..8 by default) the n-gram ending at position i, ids[i-n+1 .. i], is
hashed with a polynomial hash

    h_n(i) = sum_{j=0}^{n-1} (ids[i-j] + 1) * BASE^j  mod MODULUS

(positions before the sequence count as 0, so real tokens are 1..V), and its bucket
h_n(i) mod buckets_n indexes a table of its own for each n. The hash is computed by rolling
over n: h_n = h_{n-1} + (ids[i-n+1] + 1) * BASE^(n-1), so all n cost one pass each. The
embedding of position i is the sum over n of table_n[bucket_n(i)], (B, T) -> (B, T, C). It
depends on ids[i-7 .. i] only (causal, and unchanged when bytes are appended).
"""

from __future__ import annotations

import torch
from torch import nn

#: A prime above the 260 symbols (259 tokens + "before the start").
BASE = 257
#: The Mersenne prime 2^31 - 1: products stay below 2^40, exact in int64.
MODULUS = 2**31 - 1


def ngram_hashes(ids: torch.Tensor, ns=(3, 4, 5, 6, 7, 8)) -> dict[int, torch.Tensor]:
    """{n: (B, T) int64 polynomial hash of the n-gram ending at each position}."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be (B, T), got shape {tuple(ids.shape)}")
    values = ids.long() + 1
    h = torch.zeros_like(values)
    out, power = {}, 1
    for n in range(1, max(ns) + 1):
        shifted = torch.nn.functional.pad(values, (n - 1, 0))[:, :values.shape[1]]
        h = (h + shifted * power) % MODULUS
        power = power * BASE % MODULUS
        if n in ns:
            out[n] = h
    return out


class HashNgramEmbedding(nn.Module):
    """Sum of hashed n-gram embeddings, one table per n (module docstring).

    Args:
        dim: embedding width C.
        buckets: rows per table (an int for every n, or one per n).
        ns: the n-gram lengths.
    """

    def __init__(self, dim: int, buckets=4096, ns=(3, 4, 5, 6, 7, 8)):
        super().__init__()
        ns = tuple(int(n) for n in ns)
        if not ns or min(ns) < 1:
            raise ValueError(f"ns must be positive n-gram lengths, got {ns!r}")
        sizes = (buckets,) * len(ns) if isinstance(buckets, int) else tuple(buckets)
        if len(sizes) != len(ns) or min(sizes) < 1:
            raise ValueError(f"buckets must be a positive int or one per n ({len(ns)}), got "
                             f"{buckets!r}")
        self.ns, self.sizes = ns, sizes
        self.tables = nn.ModuleList(nn.Embedding(s, dim) for s in sizes)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)

    def buckets(self, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """{n: (B, T) table row of each position's n-gram}."""
        hashes = ngram_hashes(ids, self.ns)
        return {n: hashes[n] % size for n, size in zip(self.ns, self.sizes, strict=True)}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) summed n-gram embeddings."""
        rows = self.buckets(ids)
        return sum(table(rows[n]) for n, table in zip(self.ns, self.tables, strict=True))
