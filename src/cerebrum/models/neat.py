"""NEAT's byte-level network (seed 003): a byte transformer whose components switch on and off.

Shapes: B batch, T bytes (tokens of the byte tokenizer, 259 ids), P patches (the most of any
row), D `n_embd` (latent / byte-transformer width), Dl `local_dim` (BLT's local width).

V = `vocab_size`: 259 (bytes); with MVoT (`cerebrum.models.mvot`) ids from 259 up are image
markers and image codes, embedded and predicted like bytes (the logits below are (B, T, V)).

Every switch off: a plain causal byte transformer, embed (B, T, D) -> `n_layer` blocks ->
RMSNorm -> tied head (B, T, 259).

`use_blt_processor` (Byte Latent Transformer):
1. entropy model: a small causal byte GPT (`entropy_model`, trained first, then frozen) gives
   the next-byte entropies (B, T); `cerebrum.nn.patching` turns them into patch starts (B, T)
   (or space / fixed-stride patching, which need no entropy model); patch ids (B, T).
2. local encoder: byte embedding + hash n-gram embeddings (n = ngram_min..ngram_max) (B, T, Dl)
   -> `n_local_encoder_layers` causal blocks (B, T, Dl) -> cross-attention pooling: one query
   per patch, initialised from the mean of its bytes' states (B, P, D), attending to the
   bytes of its own patch only -> patch vectors (B, P, D).
3. latent transformer: `n_layer` causal blocks over the patches (B, P, D).
4. local decoder: byte i cross-attends to [null, latent_0 .. latent_{p(i)-1}] (B, P, D): a
   learned null vector and the latent outputs of the patches that end before byte i's
   patch starts (p(i) its patch), added to the encoder's byte state (B, T, Dl) ->
   `n_local_decoder_layers` causal blocks -> RMSNorm -> head (B, T, 259).
   The logits of byte i depend on bytes <= i only: the patch starts of positions <= i
   depend on bytes < i; patch q < p(i) holds bytes < i; the local blocks are causal.

`use_titans_memory`: the attention of the (latent or byte) transformer becomes sliding-window
attention (`attention_window` positions: the short-term memory) with `n_persistent` learned
persistent-memory tokens, and a neural long-term memory (`cerebrum.nn.titans.NeuralMemory`)
reads the stream at the input of the second block (the first when there is one block: after
a block of attention its keys and values carry local context, which a byte alone lacks):
"mal" (memory as a layer, the default: x + M(x), the variant that streams exactly and costs
one memory pass) or "mag" (memory as a gate: that block's attention output is multiplied by
sigmoid(M(x))). `use_sliding_window` alone gives the same attention without the long-term
memory: the "window only" baseline of the recall task.

Engineering switches: `mixed_precision` runs the network under bf16 autocast (weights stay
float32; the memory's inner updates run in float32), `gradient_checkpointing` recomputes
every block in the backward pass, `dynamic_component_activation` makes the memory's writes
selective (a position whose surprise, the inner-gradient norm, is below
`surprise_threshold` leaves the memory untouched, and a chunk without one skips its update).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from cerebrum.models.gpt import GPT, GPTConfig, RMSNorm
from cerebrum.nn.hash_ngrams import HashNgramEmbedding
from cerebrum.nn.patching import (
    SCHEMES,
    calibrate_threshold,
    mean_patch_size,
    next_token_entropies,
    patch_ids,
    patch_starts,
)
from cerebrum.nn.titans import NeuralMemory, SlidingWindowAttention

TITANS_MODES = ("mal", "mag")
VOCAB = 259


def _int(config, name, minimum=1):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _number(config, name, low=None, positive=False):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass(frozen=True, kw_only=True)
class NEATConfig:
    """The network's architecture and switches (module docstring)."""

    vocab_size: int = VOCAB
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    use_blt_processor: bool = False
    use_titans_memory: bool = False
    use_sliding_window: bool = False
    mixed_precision: bool = False
    gradient_checkpointing: bool = False
    dynamic_component_activation: bool = False
    # BLT
    patching: str = "entropy"
    patch_size: float = 4.0
    max_patch_length: int = 16
    patch_threshold: float | None = None
    local_dim: int = 64
    local_heads: int = 2
    n_local_encoder_layers: int = 1
    n_local_decoder_layers: int = 1
    ngram_min: int = 3
    ngram_max: int = 8
    ngram_buckets: int = 4096
    entropy_layers: int = 2
    entropy_dim: int = 64
    # Titans
    titans_mode: str = "mal"
    attention_window: int = 64
    n_persistent: int = 4
    memory_dim: int = 32
    memory_hidden: int = 64
    memory_depth: int = 2
    memory_chunk: int = 16
    memory_max_grad_norm: float = 1.0
    memory_theta_max: float = 0.5
    memory_forget_bias: float = -8.0
    surprise_threshold: float = 0.05

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd", "max_patch_length",
                     "local_dim", "local_heads", "ngram_min", "ngram_max", "ngram_buckets",
                     "entropy_layers", "entropy_dim", "attention_window", "memory_dim",
                     "memory_hidden", "memory_chunk"):
            _int(self, name)
        for name in ("n_local_encoder_layers", "n_local_decoder_layers", "n_persistent"):
            _int(self, name, 0)
        if self.vocab_size < VOCAB:  # bytes first; ids from 259 up are image tokens (MVoT)
            raise ValueError(f"NEAT reads bytes: vocab_size must be >= {VOCAB}, got "
                             f"{self.vocab_size}")
        for name in ("use_blt_processor", "use_titans_memory", "use_sliding_window",
                     "mixed_precision",
                     "gradient_checkpointing", "dynamic_component_activation"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.patching not in SCHEMES:
            raise ValueError(f"patching must be one of {', '.join(SCHEMES)}, got "
                             f"{self.patching!r}")
        _number(self, "patch_size")
        if self.patch_size < 1:
            raise ValueError(f"patch_size (the target mean patch size) must be >= 1, got "
                             f"{self.patch_size}")
        if self.patch_threshold is not None:
            _number(self, "patch_threshold")
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must be <= ngram_max "
                             f"({self.ngram_max})")
        if self.titans_mode not in TITANS_MODES:
            raise ValueError(f"titans_mode must be one of {', '.join(TITANS_MODES)}, got "
                             f"{self.titans_mode!r}")
        if self.memory_depth not in (1, 2):
            raise ValueError(f"memory_depth must be 1 or 2, got {self.memory_depth!r}")
        for name in ("memory_max_grad_norm", "memory_theta_max"):
            _number(self, name, positive=True)
        _number(self, "memory_forget_bias")
        _number(self, "surprise_threshold", low=0)
        if (self.use_titans_memory or self.use_sliding_window) and (
                self.attention_window > self.block_size):
            raise ValueError(f"attention_window ({self.attention_window}) is larger than the "
                             f"context (block_size={self.block_size})")
        for width, heads, what in ((self.n_embd, self.n_head, "n_embd"),
                                   (self.local_dim, self.local_heads, "local_dim")):
            if width % heads or (width // heads) % 2:
                raise ValueError(f"{what} ({width}) must be a multiple of its heads ({heads}) "
                                 "with an even head size (rotary pairs)")

    @property
    def needs_entropy_model(self) -> bool:
        """Whether the patching reads next-byte entropies."""
        return self.use_blt_processor and self.patching in ("entropy", "monotonic")


class MLP(nn.Module):
    """ReLU(x)^2 feed-forward of width 4C: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim,
                                                                          bias=False)

    def forward(self, x):
        """(B, T, C) -> (B, T, C)."""
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    """Pre-norm block: (sliding-window) attention and MLP; `gate` (B, T, C) multiplies the
    attention output by its sigmoid (Titans' memory as a gate)."""

    def __init__(self, dim, n_head, window=None, n_persistent=0):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = SlidingWindowAttention(dim, n_head, window, n_persistent)
        self.mlp = MLP(dim)

    def forward(self, x, gate=None):
        """(B, T, C) -> (B, T, C)."""
        a = self.attn(self.norm1(x))
        if gate is not None:
            a = a * torch.sigmoid(gate)
        x = x + a
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    """`n_layer` blocks over a sequence (bytes or patches), with Titans' memory when asked:
    (B, N, C) -> (B, N, C)."""

    def __init__(self, c: NEATConfig, dim: int, n_layer: int, n_head: int, *,
                 titans: bool):
        super().__init__()
        windowed = titans or c.use_sliding_window
        window = c.attention_window if windowed else None
        persistent = c.n_persistent if windowed else 0
        self.blocks = nn.ModuleList(Block(dim, n_head, window, persistent)
                                    for _ in range(n_layer))
        self.memory = self.memory_norm = None
        self.mode = c.titans_mode
        self.memory_at = min(1, n_layer - 1)  # the block whose input the memory reads
        self.checkpointing = c.gradient_checkpointing
        if titans:
            self.memory_norm = RMSNorm(dim)
            self.memory = NeuralMemory(
                dim, c.memory_dim, c.memory_hidden, c.memory_depth, c.memory_chunk,
                c.memory_max_grad_norm, c.memory_theta_max,
                c.surprise_threshold if c.dynamic_component_activation else None,
                c.memory_forget_bias)

    def forward(self, x):
        """(B, N, C) -> (B, N, C)."""
        for i, block in enumerate(self.blocks):
            g = None
            if self.memory is not None and i == self.memory_at:
                m, _ = self.memory(self.memory_norm(x))
                if self.mode == "mal":
                    x = x + m.to(x.dtype)
                else:
                    g = m.to(x.dtype)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, g, use_reentrant=False)
            else:
                x = block(x, g)
        return x


def _heads(x, n_head):
    B, N, C = x.shape
    return x.view(B, N, n_head, C // n_head).transpose(1, 2)


def cross_attention(q, k, v, allowed, n_head):
    """Multi-head attention of q (B, Nq, C) over k, v (B, Nk, C) where allowed (B, Nq, Nk)
    -> (B, Nq, C). Every row must allow at least one key."""
    out = F.scaled_dot_product_attention(_heads(q, n_head), _heads(k, n_head),
                                         _heads(v, n_head), attn_mask=allowed.unsqueeze(1))
    return out.transpose(1, 2).reshape(q.shape)


class NEATNetwork(nn.Module):
    """The byte model (module docstring). forward(ids (B, T), targets=None) ->
    (logits (B, T, 259), mean cross-entropy or None)."""

    def __init__(self, config: NEATConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = NEATConfig(**kwargs) if config is None else config
        D, Dl = c.n_embd, c.local_dim
        theta = math.nan if c.patch_threshold is None else float(c.patch_threshold)
        # the calibrated entropy threshold (NaN until calibrated): saved with the weights
        self.register_buffer("threshold", torch.tensor(theta))
        # how many batches the threshold is the mean calibration of (0: fixed or not yet)
        self.register_buffer("calibrations", torch.tensor(0))
        self.entropy_model = None
        if c.needs_entropy_model:
            self.entropy_model = GPT(GPTConfig(
                vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.entropy_layers,
                n_head=2, n_embd=c.entropy_dim, mlp="relu2"))
        if c.use_blt_processor:
            self.byte_embed = nn.Embedding(c.vocab_size, Dl)
            self.ngrams = HashNgramEmbedding(Dl, c.ngram_buckets,
                                             tuple(range(c.ngram_min, c.ngram_max + 1)))
            self.encoder = nn.ModuleList(Block(Dl, c.local_heads)
                                         for _ in range(c.n_local_encoder_layers))
            self.pool_init = nn.Linear(Dl, D, bias=False)
            self.pool_kv = nn.Linear(Dl, 2 * D, bias=False)
            self.pool_out = nn.Linear(D, D, bias=False)
            self.latent = Backbone(c, D, c.n_layer, c.n_head, titans=c.use_titans_memory)
            self.null_patch = nn.Parameter(torch.zeros(D))
            self.decode_q = nn.Linear(Dl, Dl, bias=False)
            self.decode_kv = nn.Linear(D, 2 * Dl, bias=False)
            self.decode_out = nn.Linear(Dl, Dl, bias=False)
            self.decoder = nn.ModuleList(Block(Dl, c.local_heads)
                                         for _ in range(c.n_local_decoder_layers))
            self.norm = RMSNorm(Dl)
            self.head = nn.Linear(Dl, c.vocab_size, bias=False)
        else:
            self.embed = nn.Embedding(c.vocab_size, D)
            self.backbone = Backbone(c, D, c.n_layer, c.n_head, titans=c.use_titans_memory)
            self.norm = RMSNorm(D)
            self.head = nn.Linear(D, c.vocab_size, bias=False)
            self.head.weight = self.embed.weight  # tied
        for name, module in self.named_modules():
            if name.startswith("entropy_model"):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)) and not name.startswith(
                    ("ngrams", "latent.memory", "backbone.memory")):
                nn.init.normal_(module.weight, std=0.02)
        #: What the last forward did: mean patch size, memory writes (profiling).
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ patching

    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) next-byte entropies H(x_i) from the entropy model (no gradient)."""
        if self.entropy_model is None:
            raise ValueError(f"patching {self.config.patching!r} uses no entropy model")
        with torch.no_grad():
            return next_token_entropies(self.entropy_model(ids)[0].float())

    def patch_starts(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool patch starts of ids under the configured scheme. An entropy scheme
        whose threshold is not calibrated yet patches with the fixed stride
        round(patch_size)."""
        c = self.config
        stride = max(1, round(c.patch_size))
        if c.patching == "space":
            return patch_starts(scheme="space", ids=ids, max_patch_length=c.max_patch_length)
        if c.patching == "fixed" or math.isnan(float(self.threshold)):
            return patch_starts(scheme="fixed", ids=ids, stride=stride,
                                max_patch_length=c.max_patch_length)
        return patch_starts(scheme=c.patching, entropies=self.entropies(ids),
                            threshold=float(self.threshold),
                            max_patch_length=c.max_patch_length)

    @torch.no_grad()
    def calibrate(self, ids: torch.Tensor, *, accumulate: bool = False) -> float:
        """Set the entropy threshold so that ids (B, T) are cut into patches of
        `patch_size` bytes on average (`cerebrum.nn.patching.calibrate_threshold`).
        `accumulate`: the threshold becomes the mean of this batch's and the earlier
        accumulated calibrations' thresholds (`calibrations` counts them)."""
        theta = calibrate_threshold(self.entropies(ids), self.config.patch_size,
                                    scheme=self.config.patching,
                                    max_patch_length=self.config.max_patch_length)
        n = int(self.calibrations) if accumulate and not math.isnan(
            float(self.threshold)) else 0
        theta = (float(self.threshold) * n + theta) / (n + 1) if n else theta
        self.threshold.fill_(theta)
        self.calibrations.fill_(n + 1)
        return theta

    # ------------------------------------------------------------------ forward

    def _blocks(self, blocks, x):
        for block in blocks:
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        """ids (B, T) -> (logits (B, T, 259) float32, mean cross-entropy or None)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, T) token ids, got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's context "
                             f"(block_size={self.config.block_size})")
        with torch.autocast(ids.device.type, dtype=torch.bfloat16,
                            enabled=self.config.mixed_precision):
            if self.config.use_blt_processor:
                h = self._blt(ids)
            else:
                h = self.backbone(self.embed(ids))
                memory = self.backbone.memory
                if memory is not None:
                    self.last_stats = {**memory.last_stats}
            logits = self.head(self.norm(h)).float()
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100)

    def _blt(self, ids):
        c = self.config
        B = ids.shape[0]
        starts = self.patch_starts(ids)
        pid = patch_ids(starts)  # (B, T)
        P = int(pid.max()) + 1
        h = self._blocks(self.encoder, self.byte_embed(ids) + self.ngrams(ids))  # (B, T, Dl)
        # pooling: one query per patch from the mean of its bytes, attending to them
        member = pid.unsqueeze(1) == torch.arange(P, device=ids.device)[None, :, None]
        counts = member.sum(-1, keepdim=True)  # (B, P, 1)
        mean = torch.bmm(member.to(h.dtype), h) / counts.clamp(min=1).to(h.dtype)
        query = self.pool_init(mean)  # (B, P, D)
        k, v = self.pool_kv(h).chunk(2, -1)
        allowed = member | (counts == 0)  # an empty (padding) patch may look anywhere
        patches = query + self.pool_out(cross_attention(query, k, v, allowed, c.n_head))
        latent = self.latent(patches)  # (B, P, D)
        memory = self.latent.memory
        self.last_stats = {"mean_patch_size": mean_patch_size(starts),
                           **({} if memory is None else memory.last_stats)}
        # decoder: byte i sees the null vector and the latent outputs of patches < p(i)
        shifted = torch.cat([self.null_patch.to(latent.dtype).expand(B, 1, -1),
                             latent[:, :-1]], 1)  # (B, P, D)
        dk, dv = self.decode_kv(shifted).chunk(2, -1)
        visible = torch.arange(P, device=ids.device)[None, None, :] <= pid.unsqueeze(-1)
        h = h + self.decode_out(cross_attention(self.decode_q(h), dk, dv, visible,
                                                c.local_heads))
        return self._blocks(self.decoder, h)

    def entropy_loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The entropy model's mean next-byte cross-entropy (its training phase)."""
        if self.entropy_model is None:
            raise ValueError("this configuration has no entropy model")
        return self.entropy_model(ids, targets)[1]
