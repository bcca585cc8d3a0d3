"""GPT: the decoder-only Transformer baseline every language-model family is compared with.

Pre-norm blocks with RMSNorm, rotary position embeddings on queries and keys, causal
`scaled_dot_product_attention` (flash / memory-efficient kernels where PyTorch has them),
a SwiGLU feed-forward, and input embeddings tied to the output head. Generation keeps a
key/value cache per layer and samples with temperature, top-k and top-p.

Options for small models, all off by default (a model saved without them loads as it was):
- `mlp="relu2"`: a ReLU(x)^2 feed-forward of width 4C in place of SwiGLU (the same parameters
  and products, fewer element-wise passes; So et al.'s Primer).
- `zero_init_residual`: the layers that write into the residual stream (attention and
  feed-forward output projections) start at zero, so every block starts as the identity
  (as torchvision's option of that name does for ResNets).
- `qk_norm`: queries and keys RMS-normalised per head before the rotation, which bounds the
  attention logits (as OLMo 2, Gemma 3 and the modded-nanogpt speedruns do).
- `bigram_buckets`: a hashed table of (previous token, token) embeddings added to the token
  embedding: capacity that costs a lookup, not matrix products, which is what a model
  trained on a few CPU minutes is short of. Its rows start at zero, so it starts as the plain
  model.

The file imports nothing but torch, on purpose: the Hugging Face export (`cerebrum.hf`) ships
it verbatim as the exported model's code, so it must run where Cerebrum is not installed.

Shapes: B batch, T tokens, V vocab_size, C n_embd, H n_head, Dh = C / H.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

MLPS = ("swiglu", "relu2")


def check_positive_int(value, *, name: str, minimum: int = 1) -> int:
    """`value` as an int when it is an integer >= minimum (TypeError / ValueError naming it
    otherwise). The same as `cerebrum._util.validation.check_positive_int`, copied here
    because this file must stand alone (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Architecture. The default is the small config `bench/lm.py` trains on a CPU."""

    vocab_size: int = 259
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    rope_base: float = 10000.0
    mlp: str = "swiglu"
    zero_init_residual: bool = False
    qk_norm: bool = False
    bigram_buckets: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name=name))
        object.__setattr__(self, "bigram_buckets", check_positive_int(
            self.bigram_buckets, name="bigram_buckets", minimum=0))
        for name in ("qk_norm", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {', '.join(MLPS)}, got {self.mlp!r}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head "
                             f"({self.n_head}) with an even head size (rotary pairs)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(n_positions: int, head_dim: int, base: float, device=None):
    """cos, sin (T, Dh/2) for rotary embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(n_positions, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (even, odd) of x (B, H, T, Dh) by position-dependent angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.n_embd // c.n_head
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.dropout = c.dropout
        self.qk_norm = c.qk_norm

    def forward(self, x, cos, sin, cache=None):
        """x (B, T, C); cache: a dict holding past "k", "v" (B, H, T_past, Dh), updated."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - T
        if past == 0:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:  # new queries see every cached key and the new keys up to themselves
            allowed = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        hidden = 32 * math.ceil(8 * c.n_embd / 3 / 32)
        self.gate_up = nn.Linear(c.n_embd, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, c.n_embd, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, -1)
        return self.down(F.silu(gate) * up)


class ReLU2(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.up = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.down = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


class BigramHash(nn.Module):
    """Embeddings of (previous token, token) pairs, hashed into `buckets` rows.

    forward(idx (B, T), previous (B, 1)) -> (B, T, C), where `previous` is the token before
    idx[:, 0] (`vocab_size` when there is none: a sequence's start)."""

    #: Odd multiplier of the multiplicative hash (2^32 / golden ratio); the bucket is taken
    #: from the product's high bits, which depend on every bit of the pair.
    MULTIPLIER = 2654435761

    def __init__(self, vocab_size: int, buckets: int, dim: int):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.table = nn.Embedding(buckets, dim)

    def bucket(self, idx: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([previous, idx[:, :-1]], 1)
        pair = prev * (self.vocab_size + 1) + idx
        # int64 products wrap around for very large vocabularies: still a fixed function of
        # the pair on every device, which is all a hash needs
        return (pair * self.MULTIPLIER >> 16) % self.buckets

    def forward(self, idx: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.table(self.bucket(idx, previous))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(c.n_embd), Attention(c)
        self.norm2 = RMSNorm(c.n_embd)
        self.mlp = SwiGLU(c) if c.mlp == "swiglu" else ReLU2(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """Decoder-only Transformer language model (see the module docstring)."""

    def __init__(self, config: GPTConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = GPTConfig(**kwargs) if config is None else config
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.bigram = (BigramHash(c.vocab_size, c.bigram_buckets, c.n_embd)
                       if c.bigram_buckets else None)
        cos, sin = rotary_tables(c.block_size, c.n_embd // c.n_head, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled residual projections (GPT-2)
            if name.endswith(("proj.weight", "down.weight")):
                if c.zero_init_residual:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.table.weight)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list | None = None, start: int = 0):
        """idx (B, T) int64 -> logits (B, T, V), and the mean cross-entropy (nats per token)
        when targets (B, T) are given (-100 entries are ignored). With `caches` (one dict
        per layer) the call continues a generation at position `start`."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds the model's context "
                             f"(block_size={self.config.block_size})")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx, self._previous_tokens(idx, caches, start))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i])
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def _previous_tokens(self, idx, caches, start) -> torch.Tensor:
        """The token before idx[:, 0] for the bigram table, (B, 1): the last token of the
        previous cached call when continuing a generation, else the start marker."""
        if caches is not None and start > 0:
            previous = caches[0]["last_token"]
        else:
            previous = torch.full_like(idx[:, :1], self.config.vocab_size)
        if caches is not None:
            caches[0]["last_token"] = idx[:, -1:]
        return previous

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens: (B, T + max_new_tokens).
        temperature 0 is greedy decoding."""
        check_positive_int(max_new_tokens, name="max_new_tokens", minimum=0)
        if idx.shape[1] + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds the model's context (block_size="
                             f"{self.config.block_size})")
        self.eval()
        caches = [{} for _ in self.blocks]
        logits, _ = self(idx, caches=caches)
        out = idx
        for _ in range(max_new_tokens):
            token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            out = torch.cat([out, token], 1)
            logits, _ = self(token, caches=caches, start=out.shape[1] - 1)
        return out


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row of logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, -1)
    if top_p is not None:
        sorted_probs, order = probs.sort(-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice)
    return torch.multinomial(probs, 1, generator=generator)
