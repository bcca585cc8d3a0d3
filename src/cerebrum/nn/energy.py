"""Likelihood-free generative heads and their losses (CALM's energy loss, seed 002's gated head
and rectified-flow term).

- `energy_terms(samples, targets, alpha)`: d_fid = mean_{i,j} ||x_i - y_j||^alpha (model
  samples to target samples) and d_div = mean_{i != k} ||x_i - x_k||^alpha (between distinct
  model samples). `2 d_fid - d_div` is the energy distance between the model's distribution and
  the targets' up to a term that does not depend on the model (-E||y - y'||^alpha): a strictly
  proper scoring rule for 0 < alpha < 2 (Szekely & Rizzo; Gneiting & Raftery), so minimising its
  expectation recovers the target distribution with no likelihood.
- `rf_loss(z_pred, noise, target, form)`: the heads are one-step generators, noise -> z, so
  they can be read as a rectified flow integrated in one Euler step from t = 0 (noise) to t = 1:
  predicted velocity v_hat = z_pred - noise, true velocity v = target - noise (the straight line
  from the same noise to the target). form "cos": 1 - cos(v_hat, v) (the seed's `1 - cos(theta)`:
  only the direction counts); form "mse": ||v_hat - v||^2 / Dz (flow matching's velocity MSE at
  t = 0, which pulls every sample towards the target: a regulariser, not a proper score).
- `GatedEnergyHead` (the seed's): from h and fresh noise eps an MLP gives delta and a gate
  g = sigmoid(.) in (0, 1) per latent dimension, and z = g * delta + (1 - g) * eps.
- `MLPEnergyHead` (CALM's): eps -> linear -> residual MLP blocks whose normalised input is
  scaled and shifted by functions of h (adaptive layer norm) -> linear -> z.

Shape legend: B batch, T time, N samples per position, M targets per position, D model width,
Dz latent width, H head width. "..." is any leading shape (B, T) or (B, T, N).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RF_FORMS = ("cos", "mse")


def _pairwise_distance_power(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """a (..., N, Dz), b (..., M, Dz) -> (..., N, M) ||a_i - b_j||^alpha in at least float32
    (squared distances from norms and one matrix product, clamped at 1e-12 so the gradient of
    the root stays finite where two points coincide)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    sq = (a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2)
          - 2 * a @ b.transpose(-1, -2))
    return sq.clamp_min(1e-12).pow(alpha / 2)


def energy_terms(samples: torch.Tensor, targets: torch.Tensor,
                 alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_fid, d_div), each of shape (...): samples (..., N, Dz) with N >= 2, targets
    (..., M, Dz) with M >= 1; see the module docstring. The loss is `2 d_fid - d_div`."""
    if samples.dim() < 2 or targets.dim() < 2 or samples.shape[:-2] != targets.shape[:-2] \
            or samples.shape[-1] != targets.shape[-1]:
        raise ValueError(f"samples (..., N, Dz) and targets (..., M, Dz) must share their "
                         f"leading shape and Dz, got {tuple(samples.shape)} and "
                         f"{tuple(targets.shape)}")
    n = samples.shape[-2]
    if n < 2:
        raise ValueError(f"the diversity term needs at least 2 samples per position, got {n}")
    if not 0 < alpha < 2:
        raise ValueError(f"alpha must be in (0, 2) for the energy score to be proper, got "
                         f"{alpha}")
    d_fid = _pairwise_distance_power(samples, targets, alpha).mean((-1, -2))
    within = _pairwise_distance_power(samples, samples, alpha)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=samples.device)
    d_div = (within * off_diagonal).sum((-1, -2)) / (n * (n - 1))
    return d_fid, d_div


def energy_loss(samples: torch.Tensor, targets: torch.Tensor,
                alpha: float = 1.0) -> torch.Tensor:
    """(...) per-position energy loss 2 d_fid - d_div (see `energy_terms`)."""
    d_fid, d_div = energy_terms(samples, targets, alpha)
    return 2 * d_fid - d_div


def rf_loss(z_pred: torch.Tensor, noise: torch.Tensor, target: torch.Tensor,
            form: str = "cos") -> torch.Tensor:
    """(...) rectified-flow term of z_pred (..., Dz) generated from noise (..., Dz), for the
    target (..., Dz) (broadcast): "cos" 1 - cos(z_pred - noise, target - noise), "mse"
    mean over Dz of (z_pred - target)^2 (= ||v_hat - v||^2 / Dz); see the module docstring."""
    if form not in RF_FORMS:
        raise ValueError(f"rf_form must be one of {', '.join(RF_FORMS)}, got {form!r}")
    v_hat, v = (z_pred - noise).float(), (target - noise).float()
    if form == "cos":
        return 1 - F.cosine_similarity(v_hat, v, dim=-1, eps=1e-6)
    return (v_hat - v).pow(2).mean(-1)


class ResidualMLP(nn.Module):
    """(..., H) -> (..., H): x + W2 silu(W1 LayerNorm(x)), W2 starting at zero (identity)."""

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        hidden = 2 * width if hidden is None else hidden
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> (..., H)."""
        return x + self.down(F.silu(self.up(self.norm(x))))


class GatedEnergyHead(nn.Module):
    """The seed's gated head: h (..., D), noise (..., Dz) -> (z, g), both (..., Dz), with

        [delta, a] = MLP([h, noise]),  g = sigmoid(a),  z = g * delta + (1 - g) * noise.

    `parts` gives delta and g (for tests and diagnostics). The gate's bias starts at
    `gate_bias` (2: g about 0.88), so the head starts from its prediction rather than from the
    noise: started at 0 (g = 0.5) the gate fell to 0.02 within 150 steps of the energy loss,
    since pure noise already matches the latents' marginal, and the head then learned a third
    as much (docs/calm.md, Measurements)."""

    def __init__(self, d_model: int, latent_dim: int, *, width: int = 256, depth: int = 2,
                 gate_bias: float = 2.0):
        super().__init__()
        self.latent_dim = latent_dim
        self.inp = nn.Linear(d_model + latent_dim, width)
        self.blocks = nn.Sequential(*(ResidualMLP(width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2 * latent_dim)
        with torch.no_grad():
            self.out.bias[latent_dim:].fill_(gate_bias)

    def parts(self, h: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(delta, g), each (..., Dz)."""
        x = self.blocks(self.inp(torch.cat([h, noise.to(h.dtype)], -1)))
        delta, gate = self.out(self.norm(x)).chunk(2, dim=-1)
        return delta, torch.sigmoid(gate)

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (..., D), noise (..., Dz) -> (z (..., Dz), gate (..., Dz))."""
        delta, g = self.parts(h, noise)
        return g * delta + (1 - g) * noise.to(delta.dtype), g


class _AdaptiveBlock(nn.Module):
    """x + MLP(LayerNorm(x) * (1 + scale(h)) + shift(h)): a residual block conditioned on h."""

    def __init__(self, width: int, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(d_model, 2 * width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(h).chunk(2, dim=-1)
        return x + self.down(F.silu(self.up(self.norm(x) * (1 + scale) + shift)))


class MLPEnergyHead(nn.Module):
    """CALM's head: noise (..., Dz) refined into z (..., Dz) by residual MLP blocks conditioned
    on h (..., D) (adaptive layer norm: h scales and shifts each block's normalised input; the
    hidden state also enters additively at the input). No gate: `forward` returns (z, None)."""

    def __init__(self, d_model: int, latent_dim: int, *, width: int = 256, depth: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.noise_in = nn.Linear(latent_dim, width)
        self.h_in = nn.Linear(d_model, width)
        self.blocks = nn.ModuleList(_AdaptiveBlock(width, d_model) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, latent_dim)

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, None]:
        """h (..., D), noise (..., Dz) -> (z (..., Dz), None)."""
        x = self.noise_in(noise.to(h.dtype)) + self.h_in(h)
        for block in self.blocks:
            x = block(x, h)
        return self.out(self.norm(x)), None
