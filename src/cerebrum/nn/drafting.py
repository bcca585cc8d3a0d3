"""Blocks of seed 000's regression / drafting path: TinyDiffusionBlock and DraftScorer.

Shapes: B batch, P plan steps, L draft tokens, V vocabulary, d model width.
"""

from __future__ import annotations

import torch
from torch import nn

from cerebrum.nn.coders import mlp
from cerebrum.nn.transformer import check_heads, sinusoidal_positions


class TinyDiffusionBlock(nn.Module):
    """One residual denoising step x <- x + alpha * f(x), f an MLP (seed 000: alpha = 0.1)."""

    def __init__(self, dim: int, hidden_dim: int | None = None, alpha: float = 0.1):
        super().__init__()
        self.alpha = alpha
        self.f = mlp([dim, hidden_dim or 2 * dim, dim], activation=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.f(x)


class DraftScorer(nn.Module):
    """Scores a discrete draft against a continuous plan.

    Embeds the draft's tokens, runs a causal decoder that cross-attends to the plan, and returns
    the draft's per-token logits (B, L, V) and its negative log-likelihood (B,) (teacher forced:
    token l is predicted from tokens < l and the plan; token 0 from a learned start). Runs
    under autocast (bf16) on CUDA, as seed 000 describes; plain precision elsewhere.
    """

    def __init__(self, vocab_size: int, plan_dim: int, d_model: int = 64, nhead: int = 4,
                 num_layers: int = 1):
        super().__init__()
        check_heads(d_model, nhead)
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.start = nn.Parameter(torch.zeros(d_model))
        self.plan_proj = nn.Linear(plan_dim, d_model)
        layer = nn.TransformerDecoderLayer(d_model, nhead, 4 * d_model, 0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.to_logits = nn.Linear(d_model, vocab_size)

    def forward(self, drafts: torch.Tensor, plan: torch.Tensor):
        """drafts (B, L) int64, plan (B, P, plan_dim) -> (logits (B, L, V), nll (B,))."""
        B, L = drafts.shape
        inputs = torch.cat([self.start.expand(B, 1, -1), self.embed(drafts[:, :-1])], 1)
        inputs = inputs + sinusoidal_positions(L, self.d_model, device=drafts.device,
                                               dtype=inputs.dtype)
        causal = nn.Transformer.generate_square_subsequent_mask(L, device=drafts.device)
        on_gpu = drafts.device.type == "cuda"
        with torch.autocast(device_type=drafts.device.type, dtype=torch.bfloat16,
                            enabled=on_gpu):
            hidden = self.decoder(inputs, self.plan_proj(plan), tgt_mask=causal)
            logits = self.to_logits(hidden)
        logits = logits.float() if on_gpu else logits
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), drafts,
                                          reduction="none").sum(1)
        return logits, nll
