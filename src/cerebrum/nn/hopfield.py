"""Modern Hopfield retrieval (Ramsauer et al., "Hopfield Networks is All You Need", 2021).

One update step of the continuous modern Hopfield network is attention over stored patterns:

    retrieve(q) = softmax(beta * q Xi^T) V

with Xi (S, Dk) the stored patterns (keys) and V (S, Dv) what each pattern returns. For large
beta the softmax concentrates on the stored pattern with the largest q . xi (the nearest one
for patterns of equal norm); beta = 1 / sqrt(Dk) (Transformer attention's scaling) keeps the
logits of random unit-variance vectors of order one, the usual choice for a learned layer.

`HopfieldMemory` is the layer the latent model uses: every position of the hidden sequence
queries S = `hop_mem_slots` learned patterns, independently of the other positions, so it
cannot see the future (or the past): the sequence mixing is the SSM's job.

Shape legend: B batch, T time, D model width, Dk key width, S stored patterns.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def hopfield_retrieve(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """softmax(beta * queries @ keys^T) @ values: queries (..., Dk), keys (S, Dk), values
    (S, Dv) -> (..., Dv). The softmax runs in at least float32."""
    if keys.dim() != 2 or values.dim() != 2 or keys.shape[0] != values.shape[0]:
        raise ValueError(f"keys (S, Dk) and values (S, Dv) must have the same S, got "
                         f"{tuple(keys.shape)} and {tuple(values.shape)}")
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries have width {queries.shape[-1]}, keys {keys.shape[-1]}")
    logits = beta * (queries @ keys.transpose(0, 1))
    weights = torch.softmax(logits.float(), dim=-1).to(values.dtype)
    return weights @ values


class HopfieldMemory(nn.Module):
    """(B, T, D) -> (B, T, D): each position's query W_q x retrieves from `slots` learned
    stored patterns (keys (S, Dk), values (S, D)) with inverse temperature `beta` (default
    1 / sqrt(Dk)); the retrieved value goes through an output projection. Position-wise."""

    def __init__(self, d_model: int, slots: int = 64, *, key_dim: int | None = None,
                 beta: float | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("slots (hop_mem_slots)", slots)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        key_dim = d_model if key_dim is None else key_dim
        self.beta = 1.0 / math.sqrt(key_dim) if beta is None else float(beta)
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        self.query = nn.Linear(d_model, key_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(slots, key_dim))
        self.values = nn.Parameter(torch.randn(slots, d_model) / math.sqrt(d_model))
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        return self.out(hopfield_retrieve(self.query(x), self.keys.to(x.dtype),
                                          self.values.to(x.dtype), self.beta))
