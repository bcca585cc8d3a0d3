"""MGM: a mixture of geometric experts language model (seed 004).

A decoder-only Transformer whose feed-forward layers are mixtures of geometric experts
(`cerebrum.nn.manifolds.GeometricExpert`: euclidean, hyperbolic, spherical, Poincare,
simplex, complex, Lorentzian, product), routed top-K per token (`cerebrum.nn.routing`), with
a learned working memory that joins the keys and values of every attention layer.

Block (pre-norm, RMSNorm throughout):
    x = x + Attention(RMSNorm(x), memory)
    x = x + MixtureOfExperts(RMSNorm(x))

Attention: `scaled_dot_product_attention` with rotary positions on the token queries and keys.
`qk_norm` RMS-normalises queries and keys (the memory's keys too) per head before the rotation
(as the GPT's option of that name). `zero_init_residual` starts the attention output and the
experts' output projections at zero (every block starts as the identity; the GPT's option).
`hidden_dim` need not be a multiple of `num_heads`: heads have Dh = hidden_dim // num_heads
(the seed's hidden 128 with 12 heads: 12 heads of 10, inner width 120), the projections go
C -> 3 * H * Dh and H * Dh -> C. Rotary acts on the even part of Dh (all of it when Dh is
even). `flash_attention_off` forces PyTorch's math kernel (no flash / memory-efficient kernel).

Working memory: `memory_slots` learned vectors of width `memory_width` (S x W, shared by all
layers); each layer projects them to keys and values (W -> H * Dh each) that are placed before
the token keys. Every token attends to all S slots and to the tokens up to itself. The slots
are parameters, the same for every input, so they carry no information from any token, in
particular none from a later one: causality holds through the memory (tested by perturbing
the future). (The public MGM code writes token states into its memory, which leaks the
future; this does not.)

Experts: `experts_num` experts per layer, types cycling through `manifolds` (the eight by
default: expert j has type manifolds[j % len(manifolds)]); curved experts' initial
curvatures are spread out: the r-th expert of a type starts at magnitude
curvature_range[0] * (curvature_range[1] / curvature_range[0]) ** (r / (repeats - 1)) with the
type's sign (a geometric spread). Each expert has tangent width `expert_dim`.

Loss: next-token cross-entropy + aux_loss_weight * load-balancing loss + z_loss_weight * router
z-loss (both averaged over layers); `forward` returns the logits, the loss and a dict of
auxiliary values (per-expert load, averaged over layers).

Shapes: B batch, T tokens, V vocab_size, C hidden_dim, H num_heads, Dh head width,
S memory_slots, W memory_width, E experts_num, K k_experts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cerebrum.models.gpt import RMSNorm, apply_rotary, rotary_tables, sample_next
from cerebrum.nn.manifolds import (
    COMPLEX_STORAGES,
    DEFAULT_CURVATURE,
    MANIFOLDS,
    GeometricExpert,
    _check_dim,
    _check_real,
)
from cerebrum.nn.routing import MixtureOfExperts


@dataclass(frozen=True, kw_only=True)
class MGMConfig:
    """The network's architecture (see the module docstring for each part)."""

    vocab_size: int = 259
    block_size: int = 256
    n_layer: int = 4
    hidden_dim: int = 128
    num_heads: int = 4
    experts_num: int = 16
    k_experts: int = 2
    expert_dim: int = 0
    manifolds: tuple[str, ...] = MANIFOLDS
    curvature_range: tuple[float, float] = (0.5, 2.0)
    memory_slots: int = 16
    memory_width: int = 128
    nuanced_routing: bool = False
    flash_attention_off: bool = False
    qk_norm: bool = False
    zero_init_residual: bool = False
    aux_loss_weight: float = 0.1
    z_loss_weight: float = 0.001
    complex_parameters: str = "pairs"
    tangent_radius: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "hidden_dim", "num_heads",
                     "experts_num", "k_experts"):
            object.__setattr__(self, name, _check_dim(getattr(self, name), name=name))
        for name in ("expert_dim", "memory_slots", "memory_width"):
            object.__setattr__(self, name, _check_dim(getattr(self, name), name=name,
                                                      minimum=0))
        if self.num_heads > self.hidden_dim:
            raise ValueError(f"num_heads ({self.num_heads}) must be <= hidden_dim "
                             f"({self.hidden_dim}): heads have hidden_dim // num_heads "
                             "features")
        if self.k_experts > self.experts_num:
            raise ValueError(f"k_experts must be <= experts_num ({self.experts_num}), got "
                             f"k_experts={self.k_experts}")
        if self.memory_slots and not self.memory_width:
            raise ValueError(f"memory_width must be >= 1 when memory_slots "
                             f"({self.memory_slots}) > 0, got 0")
        manifolds = self.manifolds
        if isinstance(manifolds, str) or not all(isinstance(m, str) for m in manifolds):
            raise TypeError(f"manifolds must be a sequence of manifold names, got "
                            f"{manifolds!r}")
        manifolds = tuple(manifolds)
        if not manifolds:
            raise ValueError("manifolds must name at least one manifold, got none")
        for m in manifolds:
            if m not in MANIFOLDS:
                raise ValueError(f"unknown manifold {m!r} in manifolds; expected names from "
                                 f"{', '.join(MANIFOLDS)}")
        object.__setattr__(self, "manifolds", manifolds)
        low, high = (_check_real(v, name="curvature_range") for v in self.curvature_range)
        if not 0 < low <= high:
            raise ValueError(f"curvature_range must be (low, high) magnitudes with "
                             f"0 < low <= high, got {self.curvature_range!r}")
        object.__setattr__(self, "curvature_range", (low, high))
        for name in ("nuanced_routing", "flash_attention_off", "qk_norm",
                     "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("aux_loss_weight", "z_loss_weight", "tangent_radius"):
            if _check_real(getattr(self, name), name=name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.complex_parameters not in COMPLEX_STORAGES:
            raise ValueError(f"complex_parameters must be one of "
                             f"{', '.join(COMPLEX_STORAGES)}, got {self.complex_parameters!r}")
        hidden = self.expert_width
        if "complex" in self.expert_types() and hidden % 2:
            raise ValueError(f"a complex expert needs an even expert_dim, got {hidden}")
        if "product" in self.expert_types() and hidden < 3:
            raise ValueError(f"a product expert needs expert_dim >= 3, got {hidden}")

    @property
    def head_dim(self) -> int:
        """Dh = hidden_dim // num_heads."""
        return self.hidden_dim // self.num_heads

    @property
    def expert_width(self) -> int:
        """The experts' tangent width: expert_dim, or (0) 4 * hidden_dim // k_experts rounded
        up to even, so that K active experts hold about a dense 4C feed-forward's weights."""
        if self.expert_dim:
            return self.expert_dim
        width = max(4, 4 * self.hidden_dim // self.k_experts)
        return width + width % 2

    def expert_types(self) -> list[str]:
        """The type of each of the experts_num experts (cycling through manifolds)."""
        return [self.manifolds[j % len(self.manifolds)] for j in range(self.experts_num)]

    def initial_curvatures(self) -> list[float | None]:
        """Each expert's signed initial curvature (None for curvature-free types), spread
        geometrically over curvature_range among the experts of one type."""
        types = self.expert_types()
        low, high = self.curvature_range
        out = []
        for j, kind in enumerate(types):
            if kind not in DEFAULT_CURVATURE:
                out.append(None)
                continue
            same = [i for i, t in enumerate(types) if t == kind]
            r, n = same.index(j), len(same)
            magnitude = low * (high / low) ** (r / (n - 1)) if n > 1 else math.sqrt(low * high)
            out.append(math.copysign(magnitude, DEFAULT_CURVATURE[kind]))
        return out


class MemoryAttention(nn.Module):
    """Causal self-attention whose keys and values start with the working memory's slots."""

    def __init__(self, c: MGMConfig):
        super().__init__()
        self.n_head, self.head_dim = c.num_heads, c.head_dim
        inner = c.num_heads * c.head_dim
        self.qkv = nn.Linear(c.hidden_dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, c.hidden_dim, bias=False)
        self.memory_kv = (nn.Linear(c.memory_width, 2 * inner, bias=False)
                          if c.memory_slots else None)
        self.math_only = c.flash_attention_off
        self.qk_norm = c.qk_norm
        self.rot = self.head_dim - self.head_dim % 2

    def _rotate(self, x, cos, sin):
        if self.rot == 0:  # heads of one feature: no pair to rotate
            return x
        if self.rot == self.head_dim:
            return apply_rotary(x, cos, sin)
        return torch.cat([apply_rotary(x[..., :self.rot], cos, sin), x[..., self.rot:]], -1)

    def forward(self, x, cos, sin, memory=None, cache=None):
        """x (B, T, C); memory (S, W) or None; cache: a dict of past token "k", "v"
        (B, H, T_past, Dh), updated in place."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - T
        slots = 0
        if memory is not None and self.memory_kv is not None:
            mk, mv = self.memory_kv(memory.to(x.dtype)).view(
                memory.shape[0], 2, self.n_head, self.head_dim).permute(1, 2, 0, 3)
            slots = mk.shape[1]
            if self.qk_norm:
                mk = F.rms_norm(mk, (self.head_dim,))
            k = torch.cat([mk.unsqueeze(0).expand(B, -1, -1, -1).to(k.dtype), k], 2)
            v = torch.cat([mv.unsqueeze(0).expand(B, -1, -1, -1).to(v.dtype), v], 2)
        context = sdpa_kernel(SDPBackend.MATH) if self.math_only else contextlib.nullcontext()
        with context:
            if slots == 0 and past == 0:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # every slot, the cached tokens, and the new tokens up to themselves
                allowed = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
                if slots:
                    allowed = torch.cat([torch.ones(T, slots, dtype=torch.bool,
                                                    device=x.device), allowed], 1)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MGMBlock(nn.Module):
    """RMSNorm -> memory attention -> residual; RMSNorm -> mixture of geometric experts."""

    def __init__(self, c: MGMConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(c.hidden_dim), MemoryAttention(c)
        self.norm2 = RMSNorm(c.hidden_dim)
        experts = [GeometricExpert(c.hidden_dim, c.expert_width, kind, curvature,
                                   complex_parameters=c.complex_parameters,
                                   tangent_radius=c.tangent_radius)
                   for kind, curvature in zip(c.expert_types(), c.initial_curvatures(),
                                              strict=True)]
        self.expert_types = c.expert_types()
        types = torch.tensor([MANIFOLDS.index(t) for t in self.expert_types])
        self.register_buffer("type_onehot", F.one_hot(types, len(MANIFOLDS)).float(),
                             persistent=False)
        self.moe = MixtureOfExperts(c.hidden_dim, experts, c.k_experts,
                                    nuanced=c.nuanced_routing,
                                    expert_features=self.expert_features)

    def expert_features(self) -> torch.Tensor:
        """phi (E, EXPERT_FEATURES): one-hot type, signed curvature, second (sphere)
        curvature; detached (the router does not train curvatures)."""
        curvatures = torch.stack([e.curvature_vector() for e in self.moe.experts])
        return torch.cat([self.type_onehot, curvatures], 1)

    def forward(self, x, cos, sin, memory=None, cache=None, temperature=1.0):
        x = x + self.attn(self.norm1(x), cos, sin, memory, cache)
        out, routing = self.moe(self.norm2(x), temperature)
        return x + out, routing


class MGM(nn.Module):
    """The mixture of geometric experts language model (see the module docstring)."""

    def __init__(self, config: MGMConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = MGMConfig(**kwargs) if config is None else config
        self.embed = nn.Embedding(c.vocab_size, c.hidden_dim)
        self.memory = (nn.Parameter(torch.randn(c.memory_slots, c.memory_width) * 0.02)
                       if c.memory_slots else None)
        self.blocks = nn.ModuleList(MGMBlock(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.hidden_dim)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        cos, sin = rotary_tables(c.block_size, c.head_dim - c.head_dim % 2 or 2, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.head:
                nn.init.normal_(module.weight, std=0.02)
        for name, p in self.named_parameters():  # residual projections start small (GPT-2)
            if name.endswith(("attn.proj.weight", "down.weight")):
                if c.zero_init_residual:  # every block starts as the identity
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list | None = None, start: int = 0, router_temperature: float = 1.0):
        """idx (B, T) -> (logits (B, T, V), loss or None, aux).

        loss (with targets (B, T); -100 ignored) = cross-entropy + aux_loss_weight *
        balance + z_loss_weight * z. aux: {"nll", "balance", "z_loss": 0-dim tensors,
        "load": (E,) fraction of assignments per expert, averaged over layers}."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        c = self.config
        if start + T > c.block_size:
            raise ValueError(f"sequence length {start + T} exceeds the model's context "
                             f"(block_size={c.block_size})")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed(idx)
        balance = z = 0.0
        load = torch.zeros(c.experts_num, device=idx.device)
        for i, block in enumerate(self.blocks):
            x, routing = block(x, cos, sin, self.memory,
                               None if caches is None else caches[i], router_temperature)
            balance = balance + routing.balance_loss(c.experts_num)
            z = z + routing.z_loss()
            load = load + routing.load(c.experts_num).detach()
        balance, z, load = balance / c.n_layer, z / c.n_layer, load / c.n_layer
        logits = self.head(self.norm(x))
        aux = {"balance": balance, "z_loss": z, "load": load}
        if targets is None:
            return logits, None, aux
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                              targets.reshape(-1), ignore_index=-100)
        aux["nll"] = nll
        loss = nll + c.aux_loss_weight * balance + c.z_loss_weight * z
        return logits, loss, aux

    def curvatures(self) -> list[list[float]]:
        """Per layer, per expert, the signed curvatures (empty for flat types)."""
        return [[e.curvatures() for e in block.moe.experts] for block in self.blocks]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True
                 ) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens: (B, T + max_new_tokens). temperature 0 is
        greedy. `use_cache=False` recomputes the whole prefix at every step (same tokens)."""
        _check_dim(max_new_tokens, name="max_new_tokens", minimum=0)
        if idx.shape[1] + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds the model's context (block_size="
                             f"{self.config.block_size})")
        self.eval()
        out = idx
        if not use_cache:
            for _ in range(max_new_tokens):
                logits = self(out)[0]
                out = torch.cat([out, sample_next(logits[:, -1], temperature, top_k, top_p,
                                                  generator)], 1)
            return out
        caches = [{} for _ in self.blocks]
        logits = self(idx, caches=caches)[0]
        for _ in range(max_new_tokens):
            token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            out = torch.cat([out, token], 1)
            logits = self(token, caches=caches, start=out.shape[1] - 1)[0]
        return out
