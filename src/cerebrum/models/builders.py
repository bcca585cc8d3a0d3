"""Seed 001's meta-architecture managers: MMTransformer and MMModel.

MMTransformer is a mixture-of-experts Transformer whose experts are the components of a
Gaussian mixture: a causal Transformer reads x_{<t}, a router gives the mixture weights over E
experts, and expert e gives the mean and variance of component e, so
    p(x_t | x_{<t}) = sum_e router_e(x_{<t}) N(x_t; mu_e(x_{<t}), var_e(x_{<t})),
an autoregressive density with an exact log-likelihood.

MMModel builds one of the seed's model variants from one config and gives them one interface
(`loss`, `log_likelihoods`, `score`, `fit`):
    "vae"       Encoder + Decoder per frame, Gaussian likelihood with a learned noise scale;
                loss = negative ELBO, scores = importance-weighted bound
    "mdn"       a mixture density network: each frame's Gaussian mixture from the previous
                frame through an MLP encoder-decoder (p(x_t | x_{t-1}))
    "gmm"       a GaussianMixture over the frames (exact)
    "hmm"       a HiddenMarkov with Gaussian-mixture emissions (exact)
    "vrmgt"     the VariationalRecurrentMarkovGaussianTransformer (ELBO, bound)
    "mmtransformer"  the MMTransformer above (exact)
All of them train by gradient through the shared engine (`fit` hands over to
`cerebrum.brain.hybrids.fit_sequences`; for "gmm" and "hmm" that is seed 000's Adam maximum
likelihood); the classical ones can also be fitted by EM through `model.model`.

Shapes: B sequences, T steps, D = input_dim, E experts, K importance samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from cerebrum._util.sequences import SequenceBatch, as_sequence_batch
from cerebrum._util.validation import check_choice, check_positive_int
from cerebrum.mixtures import GaussianMixture, HiddenMarkov, hmm_inference
from cerebrum.models._sequence_helpers import SequenceFit, padded
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig
from cerebrum.nn.coders import (
    LOGVAR_RANGE,
    Decoder,
    Encoder,
    MixtureDecoder,
    gaussian_kl,
    gaussian_log_prob,
    mlp,
)
from cerebrum.nn.transformer import TimeSeriesTransformer, check_heads

KINDS = ("vae", "mdn", "gmm", "hmm", "vrmgt", "mmtransformer")


class MMTransformer(nn.Module):
    """Mixture-of-experts Transformer density over sequences (see the module docstring)."""

    def __init__(self, input_dim: int, n_experts: int = 4, d_model: int = 32, nhead: int = 4,
                 num_layers: int = 1, min_variance: float = 1e-3):
        super().__init__()
        check_heads(d_model, nhead)
        self.input_dim = check_positive_int(input_dim, name="input_dim")
        self.n_experts = check_positive_int(n_experts, name="n_experts")
        self.body = TimeSeriesTransformer(input_dim, d_model, nhead, num_layers, d_model,
                                          causal_encoder=True, decoder=False)
        self.first = nn.Parameter(torch.zeros(input_dim))  # stands for x_0
        self.router = nn.Linear(d_model, n_experts)
        self.experts = nn.ModuleList(mlp([d_model, d_model, 2 * input_dim])
                                     for _ in range(n_experts))
        self.min_logvar = math.log(min_variance)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """log p(x_t | x_{<t}) per step (B, T) for x (B, T, D)."""
        B = x.shape[0]
        shifted = torch.cat([self.first.expand(B, 1, -1), x[:, :-1]], 1)
        h = self.body(shifted, src_lengths=lengths)  # (B, T, C), sees x_{<t}
        log_gate = torch.log_softmax(self.router(h), -1)  # (B, T, E)
        params = torch.stack([expert(h) for expert in self.experts], -2)  # (B, T, E, 2D)
        mean, logvar = params.chunk(2, -1)
        logvar = logvar.clamp(self.min_logvar, LOGVAR_RANGE[1])
        return torch.logsumexp(log_gate + gaussian_log_prob(x.unsqueeze(-2), mean, logvar), -1)


@dataclass(frozen=True, kw_only=True)
class MMModelConfig:
    """One config for every variant; fields a variant does not use are ignored by it."""

    kind: str
    input_dim: int
    hidden_dim: int = 64
    z_dim: int = 8
    rnn_hidden: int = 64
    num_states: int = 4
    n_mix: int = 2
    covariance_type: str = "diag"
    trans_d_model: int = 32
    trans_nhead: int = 4
    trans_layers: int = 1
    min_variance: float = 1e-3

    def __post_init__(self):
        check_choice(self.kind, KINDS, name="kind")
        for name in ("input_dim", "hidden_dim", "z_dim", "rnn_hidden", "num_states", "n_mix",
                     "trans_d_model", "trans_nhead", "trans_layers"):
            check_positive_int(getattr(self, name), name=name)
        check_heads(self.trans_d_model, self.trans_nhead)
        if not self.min_variance > 0:
            raise ValueError(f"min_variance must be > 0, got {self.min_variance}")


class _VAE(nn.Module):
    """Per-frame VAE with Gaussian observation noise (one learned scale per feature)."""

    def __init__(self, c: MMModelConfig):
        super().__init__()
        self.encoder = Encoder(c.input_dim, c.hidden_dim, c.z_dim)
        self.decoder = Decoder(c.z_dim, c.hidden_dim, c.input_dim)
        self.noise_logvar = nn.Parameter(torch.zeros(c.input_dim))
        self.min_logvar = math.log(c.min_variance)

    def terms(self, x, generator=None, n_samples=1):
        """(log p(x|z), log p(z) - log q(z), KL) per frame, each (K, B, T)."""
        mu, logvar = self.encoder(x)
        eps = torch.randn((n_samples, *mu.shape), generator=generator, device=x.device,
                          dtype=x.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        noise = self.noise_logvar.clamp_min(self.min_logvar)
        log_px = gaussian_log_prob(x, self.decoder(z), noise)
        zeros = torch.zeros_like(mu)
        log_ratio = gaussian_log_prob(z, zeros, zeros) - gaussian_log_prob(z, mu, logvar)
        return log_px, log_ratio, gaussian_kl(mu, logvar).expand_as(log_px)


class _MDN(nn.Module):
    """p(x_t | x_{t-1}): an MLP encoder of the previous frame, a mixture-density decoder."""

    def __init__(self, c: MMModelConfig):
        super().__init__()
        self.first = nn.Parameter(torch.zeros(c.input_dim))
        self.encoder = Encoder(c.input_dim, c.hidden_dim, c.hidden_dim, variational=False)
        self.decoder = MixtureDecoder(c.hidden_dim, c.hidden_dim, c.input_dim, c.n_mix,
                                      min_variance=c.min_variance)

    def forward(self, x):
        previous = torch.cat([self.first.expand(x.shape[0], 1, -1), x[:, :-1]], 1)
        return self.decoder(self.encoder(previous)).log_prob(x)  # (B, T)


class MMModel(SequenceFit, nn.Module):
    """One of seed 001's model variants from an `MMModelConfig` (or keywords), behind one
    interface: `loss(x, lengths)` (to minimise, per frame), `log_likelihoods(X)` (nats per
    sequence: exact, or an importance-weighted lower bound for "vae" and "vrmgt"), `score`,
    `fit`. The built model is `model`."""

    def __init__(self, config: MMModelConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = MMModelConfig(**kwargs) if config is None else config
        if c.kind == "vae":
            self.model = _VAE(c)
        elif c.kind == "mdn":
            self.model = _MDN(c)
        elif c.kind == "gmm":
            self.model = GaussianMixture(c.n_mix, c.input_dim, c.covariance_type)
        elif c.kind == "hmm":
            self.model = HiddenMarkov(c.num_states, c.input_dim, c.n_mix, c.covariance_type)
        elif c.kind == "vrmgt":
            names = {f.name for f in fields(VRMGTConfig)}
            self.model = VariationalRecurrentMarkovGaussianTransformer(VRMGTConfig(
                **{k: getattr(c, k) for k in names if hasattr(c, k)}))
        else:
            self.model = MMTransformer(c.input_dim, c.n_mix, c.trans_d_model, c.trans_nhead,
                                       c.trans_layers, c.min_variance)
        self.history_: dict = {}

    # ------------------------------------------------------------------ per-kind terms

    def _exact_log_likelihood(self, x, lengths) -> torch.Tensor:
        """log p(x) per sequence (B,) for the exact kinds."""
        valid = hmm_inference.valid_mask(lengths, x.shape[1]).to(x.dtype)
        kind = self.config.kind
        if kind == "gmm":
            return (self.model.log_prob(x.reshape(-1, x.shape[-1])).view(x.shape[:2])
                    * valid).sum(1)
        if kind == "hmm":  # HiddenMarkov's own differentiable forward algorithm
            return self.model.log_prob(x, lengths)
        per_step = self.model(x) if kind == "mdn" else self.model(x, lengths)
        return (per_step * valid).sum(1)

    def _bound_terms(self, x, lengths, generator, n_samples):
        """(log p(x|z), log p(z) - log q(z), KL) summed per sequence, (K, B) each."""
        if self.config.kind == "vrmgt":
            out = self.model(x, lengths, n_samples=n_samples, generator=generator)
            return out["log_px_given_z"], out["log_pz_minus_log_qz"], out["kl"]
        valid = hmm_inference.valid_mask(lengths, x.shape[1]).to(x.dtype)
        return tuple((term * valid).sum(-1)
                     for term in self.model.terms(x, generator, n_samples))

    @property
    def exact(self) -> bool:
        return self.config.kind not in ("vae", "vrmgt")

    # ------------------------------------------------------------------ interface

    def loss(self, x, lengths=None, kl_weight: float = 1.0, generator=None) -> torch.Tensor:
        """Negative log-likelihood (exact kinds) or negative annealed ELBO, per valid frame,
        for padded x (B, T, D)."""
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(f"x must be (B, T, {self.config.input_dim}), got shape "
                             f"{tuple(x.shape)}")
        lengths = (torch.full((x.shape[0],), x.shape[1], device=x.device) if lengths is None
                   else lengths)
        if self.exact:
            total = self._exact_log_likelihood(x, lengths)
        else:
            log_px, _, kl = self._bound_terms(x, lengths, generator, 1)
            total = (log_px - kl_weight * kl)[0]
        return -total.sum() / lengths.sum()

    def training_loss(self, x, lengths, kl_weight, generator=None):
        return self.loss(x, lengths, kl_weight, generator)

    def validation_loss(self, x, lengths, generator=None):
        return self.loss(x, lengths, 1.0, generator)

    def _batch(self, X, lengths) -> SequenceBatch:
        param = next(self.parameters())
        return as_sequence_batch(X, lengths, n_features=self.config.input_dim,
                                 dtype=param.dtype, device=param.device,
                                 owner=f"this MMModel ({self.config.kind})")

    def log_likelihoods(self, X, lengths=None, *, n_samples: int = 64,
                        random_state=0) -> np.ndarray:
        """log p(x) per sequence (B,) in nats; a lower bound with n_samples importance
        samples for "vae" and "vrmgt"."""
        batch = self._batch(X, lengths)
        x = padded(batch)
        self.eval()
        with torch.no_grad():
            if self.exact:
                return self._exact_log_likelihood(x, batch.lengths).cpu().numpy()
            generator = torch.Generator(device=x.device).manual_seed(int(random_state or 0))
            log_px, log_ratio, _ = self._bound_terms(x, batch.lengths, generator, n_samples)
            bound = torch.logsumexp(log_px + log_ratio, 0) - math.log(n_samples)
            return bound.cpu().numpy()

    def score(self, X, lengths=None, **kwargs) -> float:
        """Sum over sequences of `log_likelihoods`."""
        return float(self.log_likelihoods(X, lengths, **kwargs).sum())

    def training_batch(self, X, lengths=None, tgt=None) -> SequenceBatch:
        """The training sequences, checked (no targets: every variant models its input)."""
        if tgt is not None:
            raise ValueError(f"tgt is not supported by MMModel (kind={self.config.kind!r}): "
                             "every variant is a density model of its input sequences")
        return self._batch(X, lengths)

    def after_fit(self, batch: SequenceBatch) -> None:
        """A GaussianMixture / HiddenMarkov trained by gradient may use its verbs now."""
        if self.config.kind in ("gmm", "hmm"):
            self.model.fitted_flag.fill_(True)
