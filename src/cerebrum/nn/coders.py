"""Encoders and decoders between observations and latent codes (seeds 000 and 001).

Shapes: any leading dimensions (...), D observed features, Z latent features, K = S * M
mixture components when a decoder outputs a Gaussian mixture.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import nn

#: Log-variances of latent codes are clamped to this range before use (seed 000: [-10, 10]).
LOGVAR_RANGE = (-10.0, 10.0)


def mlp(sizes: list[int], activation=nn.ReLU) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample that gradients flow through."""
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * (((x - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) summed over the last axis; the prior defaults to
    N(0, I), which gives seed 000's -0.5 * sum(1 + logvar - mu^2 - var)."""
    if mu_p is None:
        return -0.5 * (1 + logvar_q - mu_q.pow(2) - logvar_q.exp()).sum(-1)
    return 0.5 * (logvar_p - logvar_q
                  + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1).sum(-1)


class Encoder(nn.Module):
    """x (..., D) -> (mu, logvar) (..., Z) each when variational, else a code (..., Z).

    An MLP with ReLU activations; logvar is clamped to LOGVAR_RANGE.
    """

    def __init__(self, input_dim: int, hidden_dim: int, z_dim: int, *, variational=True,
                 n_layers: int = 2):
        super().__init__()
        self.variational = variational
        self.body = mlp([input_dim] + [hidden_dim] * (n_layers - 1) + [hidden_dim])
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden_dim, 2 * z_dim if variational else z_dim)

    def forward(self, x: torch.Tensor):
        out = self.head(self.act(self.body(x)))
        if not self.variational:
            return out
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """z (..., Z) -> a reconstruction (..., D): an MLP with ReLU activations.

    `output_activation="sigmoid"` constrains outputs to (0, 1), seed 000's choice for data in
    that range; the default leaves them unbounded for general real-valued data.
    """

    def __init__(self, z_dim: int, hidden_dim: int, output_dim: int, *,
                 output_activation: str | None = None, n_layers: int = 2):
        super().__init__()
        if output_activation not in (None, "sigmoid"):
            raise ValueError(f"output_activation must be None or 'sigmoid', got "
                             f"{output_activation!r}")
        self.net = mlp([z_dim] + [hidden_dim] * n_layers + [output_dim])
        self.output_activation = output_activation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out


class MixtureParams(NamedTuple):
    """A diagonal Gaussian mixture per leading index: log_weights (..., K) (normalised),
    means (..., K, D), logvar (..., K, D) (clamped)."""

    log_weights: torch.Tensor
    means: torch.Tensor
    logvar: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x shaped like the means without their component axis: (..., D) gives
        (...,); for grouped parameters (..., G, M, D) pass x[..., None, :] and get (..., G)."""
        return torch.logsumexp(
            self.log_weights + gaussian_log_prob(x.unsqueeze(-2), self.means, self.logvar), -1)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, var_k) for every component (x shaped as for log_prob)."""
        return self.log_weights + gaussian_log_prob(x.unsqueeze(-2), self.means, self.logvar)


class MixtureDecoder(nn.Module):
    """h (..., H) -> the parameters of a diagonal Gaussian mixture over D features.

    With `n_groups` > 1 (one group per HMM state) the K = n_groups * n_mix components come out
    as (..., n_groups, n_mix, ...), weights normalised within each group. Variances are clamped
    to [min_variance, max_variance] (seed 001's variance clamping), so no component collapses.
    """

    def __init__(self, in_dim: int, hidden_dim: int, output_dim: int, n_mix: int, *,
                 n_groups: int = 1, min_variance: float = 1e-3, max_variance: float = 1e3):
        super().__init__()
        if not 0 < min_variance < max_variance:
            raise ValueError(f"need 0 < min_variance < max_variance, got {min_variance}, "
                             f"{max_variance}")
        self.shape = (n_groups, n_mix) if n_groups > 1 else (n_mix,)
        self.output_dim = output_dim
        K = n_groups * n_mix
        self.net = mlp([in_dim, hidden_dim, K * (1 + 2 * output_dim)])
        self.logvar_range = (math.log(min_variance), math.log(max_variance))

    def forward(self, h: torch.Tensor) -> MixtureParams:
        out = self.net(h)
        lead, D = out.shape[:-1], self.output_dim
        logits, means, logvar = out.split(
            [math.prod(self.shape), math.prod(self.shape) * D, math.prod(self.shape) * D], -1)
        log_weights = torch.log_softmax(logits.view(*lead, *self.shape), -1)
        means = means.reshape(*lead, *self.shape, D)
        logvar = logvar.reshape(*lead, *self.shape, D).clamp(*self.logvar_range)
        return MixtureParams(log_weights, means, logvar)
