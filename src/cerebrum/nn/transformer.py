"""TimeSeriesTransformer: PyTorch's encoder-decoder Transformer for real-valued sequences.

Learned input and output projections, sinusoidal positions, padding masks from lengths, and a
causal mask on the decoder (and optionally the encoder, for autoregressive context).
Batch-first: src (B, T, input_dim), tgt (B, T', target_dim) -> (B, T', output_dim); without a
tgt the encoder's output projected to output_dim, (B, T, output_dim).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(n_steps: int, d_model: int, *, device=None, dtype=None):
    """(T, d_model) sine/cosine position codes (Vaswani et al.)."""
    position = torch.arange(n_steps, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / d_model))
    codes = torch.zeros(n_steps, d_model, device=device)
    codes[:, 0::2] = torch.sin(position * rate)
    codes[:, 1::2] = torch.cos(position * rate[: d_model // 2])
    return codes.to(dtype) if dtype is not None else codes


def padding_mask(lengths: torch.Tensor | None, n_steps: int) -> torch.Tensor | None:
    """(B, T) True at padded positions (PyTorch's key_padding_mask convention)."""
    if lengths is None:
        return None
    return torch.arange(n_steps, device=lengths.device) >= lengths.unsqueeze(1)


def check_heads(d_model: int, nhead: int) -> None:
    if nhead < 1 or d_model % nhead:
        raise ValueError(f"trans_d_model ({d_model}) must be divisible by trans_nhead ({nhead})")


class TimeSeriesTransformer(nn.Module):
    """Encoder-decoder Transformer over real-valued sequences (see the module docstring)."""

    def __init__(self, input_dim: int, d_model: int, nhead: int, num_layers: int,
                 output_dim: int, *, target_dim: int | None = None, dropout: float = 0.0,
                 causal_encoder: bool = False, decoder: bool = True):
        super().__init__()
        check_heads(d_model, nhead)
        self.d_model = d_model
        self.causal_encoder = causal_encoder
        self.input_proj = nn.Linear(input_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.decoder = None
        if decoder:
            self.target_proj = nn.Linear(target_dim or output_dim, d_model)
            dec_layer = nn.TransformerDecoderLayer(d_model, nhead, 4 * d_model, dropout,
                                                   batch_first=True, norm_first=True)
            self.decoder = nn.TransformerDecoder(dec_layer, num_layers)
        self.output_proj = nn.Linear(d_model, output_dim)

    def _embed(self, x, proj):
        return proj(x) + sinusoidal_positions(x.shape[1], self.d_model, device=x.device,
                                              dtype=x.dtype)

    def encode(self, src: torch.Tensor, src_lengths=None) -> torch.Tensor:
        """Encoder states (B, T, d_model)."""
        T = src.shape[1]
        mask = (nn.Transformer.generate_square_subsequent_mask(T, device=src.device,
                                                               dtype=src.dtype)
                if self.causal_encoder else None)
        return self.encoder(self._embed(src, self.input_proj), mask=mask,
                            src_key_padding_mask=_as_float_mask(padding_mask(src_lengths, T),
                                                                src.dtype))

    def forward(self, src, tgt=None, src_lengths=None, tgt_lengths=None) -> torch.Tensor:
        memory = self.encode(src, src_lengths)
        if tgt is None or self.decoder is None:
            return self.output_proj(memory)
        T_out = tgt.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T_out, device=tgt.device,
                                                                dtype=tgt.dtype)
        out = self.decoder(
            self._embed(tgt, self.target_proj), memory, tgt_mask=causal,
            tgt_key_padding_mask=_as_float_mask(padding_mask(tgt_lengths, T_out), tgt.dtype),
            memory_key_padding_mask=_as_float_mask(padding_mask(src_lengths, src.shape[1]),
                                                   src.dtype),
        )
        return self.output_proj(out)


def _as_float_mask(mask, dtype):
    """Boolean padding masks as additive float masks, matching the float causal masks (PyTorch
    warns when the two kinds are mixed)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
