"""Titans' neural long-term memory (Behrouz, Zhong and Mirrokni, 2024): an MLP whose weights
are state, learned at test time.

Shapes: B batch, T positions, D model width, d memory width (keys, values, queries), h the
memory MLP's hidden width (depth 2).

The memory M is `M(k) = k W` (depth 1, W (d, d)) or `M(k) = silu(k W1) W2` (depth 2,
W1 (d, h), W2 (h, d)), one copy of the weights per sequence of the batch, starting from
learned initial weights. For each position t, from its input x_t (D):

    k_t = normalize(x_t W_K), v_t = x_t W_V, q_t = normalize(x_t W_Q)            (d each)
    theta_t = theta_max * sigmoid(x_t w_theta + b_theta)   inner learning rate
    eta_t   = sigmoid(x_t w_eta + b_eta)                    momentum ("past surprise") decay
    alpha_t = sigmoid(x_t w_alpha + b_alpha)                forgetting
    g_t     = clip(grad_M ||M(k_t) - v_t||^2)               the surprise, its norm bounded
                                                            by max_grad_norm (the gradient
                                                            of every weight together)
    S_t = eta_t S_{t-1} - theta_t g_t,   M_t = (1 - alpha_t) M_{t-1} + S_t

Chunked parallel form: positions are grouped into chunks of `chunk_size` by their absolute
position (position p is in chunk p // chunk_size). Every gradient of a chunk is taken at the
weights the chunk starts with; then S and M run through the chunk's positions in closed
form (the products of the eta's and (1 - alpha)'s as C x C matrices built by cumulative
products, so alpha = 1 and eta = 0 are exact), and the update is one contraction per
weight. Those products depend on the gates alone, so without selective updates they are
computed for all of a call's chunks at once, before the (sequential) chunk loop. chunk_size
1 is the sequential recurrence.

Retrieval: y_t = M(q_t) with the weights the chunk of t starts with (read, never written:
the memory learns only from keys and values). With chunk_size 1 that is M_{t-1}: causal.

Selective updates (`surprise_threshold`): a position whose gradient norm (before clipping)
is below the threshold leaves the memory exactly as it was (S and M unchanged: its eta
counts as 1, its alpha as 0, its gradient as 0); a chunk with no surprising position skips
its update entirely. This is the family's "dynamic component activation" for the memory.

State (`MemoryState`) carries the weights, the momentum and the positions of an unfinished
chunk across calls, so processing a sequence in pieces equals processing it at once, and
generation can feed one position at a time. The memory's arithmetic runs in the module's
dtype with autocast off (float32 under mixed precision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class MemoryState:
    """What the memory carries between calls.

    Attributes:
        weights: the memory MLP's weights, each (B, ...) (one copy per sequence).
        momentum: S, shaped like weights.
        pending: the per-position inputs (keys, values, gates) of the unfinished chunk,
            {name: (B, n, ...)}, or None.
        position: positions seen so far.
    """

    weights: tuple
    momentum: tuple
    pending: dict | None
    position: int

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (for streaming long inputs)."""
        pending = None if self.pending is None else {
            k: v.detach() for k, v in self.pending.items()}
        return MemoryState(tuple(w.detach() for w in self.weights),
                           tuple(s.detach() for s in self.momentum), pending, self.position)


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class NeuralMemory(nn.Module):
    """Titans' long-term memory (module docstring): forward(x (B, T, D), state) ->
    (y (B, T, D), state).

    Args:
        dim: D, the input and output width.
        memory_dim: d, the width of keys, values and queries.
        hidden: h, the memory MLP's hidden width (depth 2).
        depth: 1 (linear memory) or 2 (an MLP).
        chunk_size: positions per parallel update.
        max_grad_norm: bound of each position's inner gradient norm.
        theta_max: the largest inner learning rate.
        surprise_threshold: None (every position writes) or the gradient norm below which a
            position does not (selective updates).
        forget_bias: the forgetting gate's initial bias: alpha starts near
            sigmoid(forget_bias) (-8: 3.4e-4 per position, so a fresh memory keeps about 92%
            of what it holds over 256 positions; the gate learns where to forget).
    """

    def __init__(self, dim: int, memory_dim: int = 32, hidden: int = 64, depth: int = 2,
                 chunk_size: int = 16, max_grad_norm: float = 1.0, theta_max: float = 0.5,
                 surprise_threshold: float | None = None, forget_bias: float = -8.0):
        super().__init__()
        for name, value in (("dim", dim), ("memory_dim", memory_dim), ("hidden", hidden),
                            ("chunk_size", chunk_size)):
            _check_int(value, name)
        if depth not in (1, 2):
            raise ValueError(f"memory depth must be 1 or 2, got {depth!r}")
        if not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a number > 0, got {max_grad_norm!r}")
        if not (isinstance(theta_max, (int, float)) and theta_max > 0):
            raise ValueError(f"theta_max must be a number > 0, got {theta_max!r}")
        if surprise_threshold is not None and not (
                isinstance(surprise_threshold, (int, float)) and surprise_threshold >= 0):
            raise ValueError(f"surprise_threshold must be None or a number >= 0, got "
                             f"{surprise_threshold!r}")
        self.dim, self.memory_dim, self.hidden, self.depth = dim, memory_dim, hidden, depth
        self.chunk_size, self.max_grad_norm = chunk_size, float(max_grad_norm)
        self.theta_max, self.surprise_threshold = float(theta_max), surprise_threshold
        self.to_k = nn.Linear(dim, memory_dim, bias=False)
        self.to_v = nn.Linear(dim, memory_dim, bias=False)
        self.to_q = nn.Linear(dim, memory_dim, bias=False)
        self.to_gates = nn.Linear(dim, 3)  # theta, eta, alpha
        self.to_out = nn.Linear(memory_dim, dim, bias=False)
        shapes = [(memory_dim, memory_dim)] if depth == 1 else [(memory_dim, hidden),
                                                                (hidden, memory_dim)]
        self.initial_weights = nn.ParameterList(
            nn.Parameter(torch.randn(*s) / math.sqrt(s[0])) for s in shapes)
        with torch.no_grad():
            self.to_gates.weight.mul_(0.1)
            self.to_gates.bias.copy_(torch.tensor([0.0, 2.0, float(forget_bias)]))
        #: Statistics of the last forward: positions seen, positions that wrote (an int or a
        #: 0-d tensor, kept on the device), full chunks and chunks skipped.
        self.last_stats = {"positions": 0, "writes": 0, "chunks": 0, "chunks_skipped": 0}

    # ---------------------------------------------------------------- the memory function

    def initial_state(self, batch: int) -> MemoryState:
        """The state of a fresh sequence: the learned initial weights, zero momentum."""
        weights = tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in self.initial_weights)
        return MemoryState(weights, tuple(torch.zeros_like(w) for w in weights), None, 0)

    def retrieve(self, weights, q: torch.Tensor) -> torch.Tensor:
        """M(q): q (B, n, d) with weights (B, ...) -> (B, n, d)."""
        if self.depth == 1:
            return torch.bmm(q, weights[0])
        return torch.bmm(F.silu(torch.bmm(q, weights[0])), weights[1])

    def gradient_factors(self, weights, k, v):
        """Per-position gradients of ||M(k) - v||^2 as outer-product factors: a list, one
        per weight, of (left (B, n, rows), right (B, n, cols)) with grad = left^T right per
        position, and the gradient norms (B, n) of all weights together."""
        if self.depth == 1:
            e = 2 * (torch.bmm(k, weights[0]) - v)
            factors = [(k, e)]
        else:
            z = torch.bmm(k, weights[0])
            a = F.silu(z)
            e = 2 * (torch.bmm(a, weights[1]) - v)
            s = torch.sigmoid(z)
            dz = torch.bmm(e, weights[1].transpose(1, 2)) * s * (1 + z * (1 - s))
            factors = [(k, dz), (a, e)]
        norm2 = sum(left.pow(2).sum(-1) * right.pow(2).sum(-1) for left, right in factors)
        return factors, norm2.sqrt()

    def gates(self, x: torch.Tensor) -> dict:
        """{"theta", "eta", "alpha"}: (B, T) data-dependent gates of x (B, T, D)."""
        raw = self.to_gates(x)
        return {"theta": self.theta_max * torch.sigmoid(raw[..., 0]),
                "eta": torch.sigmoid(raw[..., 1]), "alpha": torch.sigmoid(raw[..., 2])}

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, state: MemoryState | None = None, *,
                gates: dict | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x (B, T, D) -> (y (B, T, D), the state after x). `gates` ({"theta", "eta",
        "alpha"}: (B, T) each) replaces the learned gates (tests, analysis)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, T, {self.dim}), got shape {tuple(x.shape)}")
        dtype = self.to_k.weight.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            B, T, _ = x.shape
            if state is None:
                state = self.initial_state(B)
            k = F.normalize(self.to_k(x), dim=-1)
            q = F.normalize(self.to_q(x), dim=-1)
            new = {"k": k, "v": self.to_v(x), **(gates if gates is not None else self.gates(x))}
            if state.pending is not None:
                new = {n: torch.cat([state.pending[n], new[n]], 1) for n in new}
            n_pending = 0 if state.pending is None else state.pending["k"].shape[1]
            weights, momentum = state.weights, state.momentum
            reads, stats = [], {"positions": T, "writes": 0, "chunks": 0, "chunks_skipped": 0}
            total, C = n_pending + T, self.chunk_size
            pending = None
            n_full = total // C
            coefficients = None
            if self.surprise_threshold is None and n_full:  # every chunk's gates at once
                coefficients = self._coefficients(*(
                    new[n][:, :n_full * C].reshape(B, n_full, C)
                    for n in ("theta", "eta", "alpha")), torch.ones((), dtype=dtype,
                                                                    device=x.device))
            for begin in range(0, total, C):
                end = min(begin + C, total)
                first_new = max(begin, n_pending)
                if first_new < end:  # reads with the weights the chunk starts with
                    reads.append(self.retrieve(
                        weights, q[:, first_new - n_pending:end - n_pending]))
                chunk = {n: t[:, begin:end] for n, t in new.items()}
                if end - begin < C:
                    pending = chunk
                    break
                weights, momentum, writes = self._update(
                    weights, momentum, chunk, None if coefficients is None else tuple(
                        c[:, begin // C] for c in coefficients))
                stats["chunks"] += 1
                if writes is None:
                    stats["chunks_skipped"] += 1
                else:  # a tensor: no device sync
                    stats["writes"] = stats["writes"] + writes
            self.last_stats = stats
            y = torch.cat(reads, 1) if reads else q.new_zeros(B, 0, self.memory_dim)
            out = self.to_out(y)
        return out, MemoryState(weights, momentum, pending, state.position + T)

    @staticmethod
    def _coefficients(theta, eta, alpha, write):
        """The gate products of chunks (module docstring): theta, eta, alpha, write (..., C)
        -> (m_all, c_s0, a_last) (...) and (lam_m, lam_s) (..., C), with which
        M_end = m_all M_0 + c_s0 S_0 - sum_r lam_m[r] clip_r g_r and
        S_end = a_last S_0 - sum_r lam_s[r] clip_r g_r."""
        C = eta.shape[-1]
        eta_eff = write * eta + (1 - write)  # a silent position keeps S ...
        keep = 1 - write * alpha  # ... and M
        # A[s, r] = prod_{q = r+1}^{s} eta_q (s >= r), by cumulative products down s
        lower = torch.ones(C, C, dtype=torch.bool, device=eta.device).tril(-1)  # s > r
        grid = torch.where(lower, eta_eff.unsqueeze(-1).expand(*eta_eff.shape, C),
                           torch.ones_like(eta_eff).unsqueeze(-1))
        A = grid.cumprod(-2) * torch.ones(C, C, dtype=torch.bool, device=eta.device).tril()
        a0 = eta_eff.cumprod(-1)  # prod_{q <= s} eta_q
        suffix = torch.cat([keep.flip(-1).cumprod(-1).flip(-1)[..., 1:],
                            torch.ones_like(keep[..., :1])], -1)  # prod_{q > s} keep_q
        ws = suffix * write  # weight of S_s in M_end
        w = (ws.unsqueeze(-2) @ A).squeeze(-2)  # weight of u_r in M_end
        step = write * theta  # u_r = -step_r clip_r g_r
        return (keep.prod(-1), (ws * a0).sum(-1), a0[..., -1], w * step,
                A[..., -1, :] * step)

    def _write(self, weights, momentum, factors, norms, coefficients):
        """The weights and momentum after a chunk from its gradient factors and norms and
        its coefficients (`_coefficients`)."""
        m_all, c_s0, a_last, lam_m, lam_s = coefficients
        clip = torch.clamp(self.max_grad_norm / (norms + 1e-12), max=1.0)
        lam = torch.stack([lam_m * clip, lam_s * clip], 1)  # (B, 2, C)
        new_w, new_s = [], []
        for W, S, (left, right) in zip(weights, momentum, factors, strict=True):
            delta = torch.einsum("bkc,bci,bcj->bkij", lam, left, right)
            new_w.append(m_all[:, None, None] * W + c_s0[:, None, None] * S - delta[:, 0])
            new_s.append(a_last[:, None, None] * S - delta[:, 1])
        return tuple(new_w), tuple(new_s)

    def _update(self, weights, momentum, chunk, coefficients=None):
        """The weights and momentum after one full chunk (module docstring), and how many of
        its positions wrote (a 0-d tensor or an int; None when the chunk was skipped).
        `coefficients`: the chunk's precomputed `_coefficients` (every position writing)."""
        factors, norms = self.gradient_factors(weights, chunk["k"], chunk["v"])
        if coefficients is not None:
            return (*self._write(weights, momentum, factors, norms, coefficients),
                    norms.numel())
        write = (norms.detach() >= self.surprise_threshold).to(norms.dtype)
        if not bool(write.any()):  # the one device sync, to skip the work
            return weights, momentum, None
        coefficients = self._coefficients(chunk["theta"], chunk["eta"], chunk["alpha"], write)
        return (*self._write(weights, momentum, factors, norms, coefficients),
                write.detach().sum())


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention over the last `window` positions (None: all of them),
    with `n_persistent` learned persistent-memory tokens every query also sees (Titans'
    task-independent memory) and rotary positions. x (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, n_head: int, window: int | None = None,
                 n_persistent: int = 0, rope_base: float = 10000.0):
        super().__init__()
        if dim % n_head or (dim // n_head) % 2:
            raise ValueError(f"width ({dim}) must be a multiple of n_head ({n_head}) with an "
                             "even head size")
        if window is not None:
            _check_int(window, "attention_window")
        _check_int(n_persistent, "n_persistent", 0)
        self.n_head, self.head_dim, self.window = n_head, dim // n_head, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.rope_base = rope_base
        self.persistent = (nn.Parameter(torch.randn(n_persistent, dim) * 0.02)
                           if n_persistent else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        from cerebrum.models.gpt import apply_rotary, rotary_tables

        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rotary_tables(T, self.head_dim, self.rope_base, device=x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        index = torch.arange(T, device=x.device)
        allowed = index[None, :] <= index[:, None]
        if self.window is not None:
            allowed = allowed & (index[:, None] - index[None, :] < self.window)
        if self.persistent is not None:
            P = self.persistent.shape[0]
            pk, pv = self.qkv(self.persistent.to(x.dtype))[:, D:].view(
                P, 2, self.n_head, self.head_dim).permute(1, 2, 0, 3)
            k = torch.cat([pk.unsqueeze(0).expand(B, -1, -1, -1), k], 2)
            v = torch.cat([pv.unsqueeze(0).expand(B, -1, -1, -1), v], 2)
            allowed = torch.cat([torch.ones(T, P, dtype=torch.bool, device=x.device),
                                 allowed], 1)
        if self.window is None and self.persistent is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))
