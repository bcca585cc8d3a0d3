"""Hybrid CALM-on-Z (seed 002): a continuous-latent language model.

Text is cut into chunks of K tokens. A token autoencoder (phase 1) maps each chunk to one
latent vector z and back; a latent language model (phase 2, autoencoder frozen) predicts z_t
from the chunks before it with a likelihood-free generative head, trained by the energy loss
(CALM, Shao et al. 2025), a rectified-flow term (the seed's), or both. Generation samples z,
decodes K tokens at once and continues. docs/calm.md explains every option.

    TokenAutoencoder   chunks (B, N, K) -> mu, log_std (B, N, Dz) -> logits (B, N, K, V)
    LatentLM           previous chunks -> inputs (B, N, D) -> [GatedSSM, HopfieldMemory, MLP]
                       x n_layer -> h (B, N, D); head(h, noise) -> z samples
    autoencoder_loss   reconstruction cross-entropy + KL (free bits), token and z dropout
    latent_loss        energy loss 2 d_fid - d_div and/or rectified flow, with per-step metrics

This module knows nothing of the engine: `cerebrum.brain.calm` joins it to the training,
the tokenizer and the verbs.

Shape legend: B batch, N latent steps (chunks), K tokens per chunk, V vocabulary, E autoencoder
width, Dz latent width, D latent-model width, S head samples per position (n_samples), M target
samples per position (n_targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cerebrum.nn.energy import (
    RF_FORMS,
    GatedEnergyHead,
    MLPEnergyHead,
    ResidualMLP,
    energy_terms,
    rf_loss,
)
from cerebrum.nn.hopfield import HopfieldMemory
from cerebrum.nn.ssm import SSM_KINDS, GatedSSM

LOSS_TYPES = ("calm", "rf", "calm_rf")
HEADS = ("gated", "calm")
LM_INPUTS = ("z", "tokens")
#: Latent positions are grouped into this many buckets for the per-position fidelity metrics.
FIDELITY_BUCKETS = 4
#: log-std of the posterior is clamped to this range (numerical safety).
LOG_STD_RANGE = (-9.0, 2.0)


def _int_field(config, name: str, minimum: int = 1) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _float_field(config, name: str, low: float, high: float, *, closed_high: bool = True,
                 closed_low: bool = True) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    ok = (value >= low if closed_low else value > low) and \
        (value <= high if closed_high else value < high)
    if not (math.isfinite(value) and ok):
        lo, hi = "[" if closed_low else "(", "]" if closed_high else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}")


def _choice_field(config, name: str, choices: tuple) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                         f"{value!r}")


@dataclass(frozen=True, kw_only=True)
class CALMConfig:
    """The network. The seed's `Cfg` names: seq_z_steps, K, ssm_kernel, hop_mem_slots,
    loss_type, rf_weight (its batch_size, ae_steps, lm_steps are fit settings:
    `cerebrum.brain.calm.CALMTrainConfig`). Defaults and why: docs/calm.md.

    Attributes:
        vocab_size: V.
        K: tokens per chunk (per latent vector).
        seq_z_steps: latent steps of context (the model's context is seq_z_steps * K tokens).
        latent_dim: Dz.
        ae_width, ae_depth: E and the residual MLP blocks per autoencoder stage.
        kl_weight: weight of the KL term; kl_free_bits: per-dimension floor (nats) under which
            a dimension's mean KL is not penalised.
        token_dropout: probability that an input token's embedding is zeroed (training).
        z_dropout: dropout probability on z before decoding (training).
        d_model, n_layer: D and the latent-model blocks.
        ssm: "conv" (gated causal depthwise Conv1D, window ssm_kernel) or "diag" (S4D-style
            diagonal SSM with ssm_state complex modes per channel).
        hop_mem_slots: stored patterns of each Hopfield layer; hop_beta: its inverse
            temperature (None: 1 / sqrt(D)).
        head: "gated" (z = g delta + (1 - g) noise) or "calm" (noise-refining MLP).
        head_width, head_depth: the head's MLP.
        lm_input: "z" (the previous chunk's posterior mean) or "tokens" (its tokens,
            re-embedded by the latent model's own table).
        loss_type: "calm" (energy), "rf" (rectified flow), "calm_rf" (energy + rf_weight rf).
        rf_weight: weight of rf in "calm_rf"; rf_form: "cos" (1 - cos) or "mse".
        n_samples: head samples S per position (>= 2); n_targets: posterior samples M of the
            true chunk per position; alpha: exponent of the energy distance, in (0, 2).
    """

    vocab_size: int = 259
    K: int = 4
    seq_z_steps: int = 64
    latent_dim: int = 128
    ae_width: int = 256
    ae_depth: int = 2
    kl_weight: float = 1e-3
    kl_free_bits: float = 0.5
    token_dropout: float = 0.15
    z_dropout: float = 0.15
    d_model: int = 256
    n_layer: int = 4
    ssm: str = "conv"
    ssm_kernel: int = 7
    ssm_state: int = 16
    hop_mem_slots: int = 64
    hop_beta: float | None = None
    head: str = "gated"
    head_width: int = 256
    head_depth: int = 2
    lm_input: str = "z"
    loss_type: str = "calm_rf"
    rf_weight: float = 0.1
    rf_form: str = "cos"
    n_samples: int = 8
    n_targets: int = 32
    alpha: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError / TypeError naming the first impossible field."""
        for name in ("vocab_size", "K", "seq_z_steps", "latent_dim", "ae_width", "d_model",
                     "n_layer", "ssm_kernel", "ssm_state", "hop_mem_slots", "head_width",
                     "n_targets"):
            _int_field(self, name)
        for name in ("ae_depth", "head_depth"):
            _int_field(self, name, 0)
        _int_field(self, "n_samples", 2)
        _float_field(self, "kl_weight", 0.0, math.inf, closed_high=False)
        _float_field(self, "kl_free_bits", 0.0, math.inf, closed_high=False)
        _float_field(self, "token_dropout", 0.0, 1.0, closed_high=False)
        _float_field(self, "z_dropout", 0.0, 1.0, closed_high=False)
        _float_field(self, "rf_weight", 0.0, math.inf, closed_high=False)
        _float_field(self, "alpha", 0.0, 2.0, closed_low=False, closed_high=False)
        if self.hop_beta is not None:
            _float_field(self, "hop_beta", 0.0, math.inf, closed_low=False, closed_high=False)
        _choice_field(self, "ssm", SSM_KINDS)
        _choice_field(self, "head", HEADS)
        _choice_field(self, "lm_input", LM_INPUTS)
        _choice_field(self, "loss_type", LOSS_TYPES)
        _choice_field(self, "rf_form", RF_FORMS)

    @property
    def context_length(self) -> int:
        """Tokens of context: seq_z_steps * K."""
        return self.seq_z_steps * self.K


# --------------------------------------------------------------------------- autoencoder


class TokenAutoencoder(nn.Module):
    """K tokens <-> one latent vector (a VAE with tied embeddings).

    encode: chunks (..., K) -> embed (..., K, E) -> ae_depth residual MLPs per token ->
    flatten (..., K E) -> linear (..., E) -> ae_depth residual MLPs -> linear -> mu, log_std
    (..., Dz). decode: z (..., Dz) -> linear (..., E) -> ae_depth residual MLPs -> linear
    (..., K E) -> (..., K, E) -> ae_depth residual MLPs per token -> logits (..., K, V) with the
    embedding matrix as output layer.
    """

    def __init__(self, config: CALMConfig):
        super().__init__()
        c = config
        self.K, self.latent_dim = c.K, c.latent_dim
        E = c.ae_width
        self.embed = nn.Embedding(c.vocab_size, E)
        nn.init.normal_(self.embed.weight, std=E ** -0.5)
        self.enc_token = nn.Sequential(*(ResidualMLP(E) for _ in range(c.ae_depth)))
        self.enc_mix = nn.Linear(c.K * E, E)
        self.enc_chunk = nn.Sequential(*(ResidualMLP(E) for _ in range(c.ae_depth)))
        self.enc_norm = nn.LayerNorm(E)
        self.enc_out = nn.Linear(E, 2 * c.latent_dim)
        self.dec_in = nn.Linear(c.latent_dim, E)
        self.dec_chunk = nn.Sequential(*(ResidualMLP(E) for _ in range(c.ae_depth)))
        self.dec_split = nn.Linear(E, c.K * E)
        self.dec_token = nn.Sequential(*(ResidualMLP(E) for _ in range(c.ae_depth)))
        self.dec_norm = nn.LayerNorm(E)

    def encode(self, chunks: torch.Tensor,
               keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """chunks (..., K) token ids -> (mu, log_std), each (..., Dz). `keep` (..., K), 1 where
        a token is kept and 0 where token dropout zeroes its embedding."""
        x = self.embed(chunks)
        if keep is not None:
            x = x * keep.unsqueeze(-1).to(x.dtype)
        x = self.enc_token(x).flatten(-2)
        x = self.enc_chunk(self.enc_mix(x))
        mu, log_std = self.enc_out(self.enc_norm(x)).chunk(2, dim=-1)
        return mu, log_std.clamp(*LOG_STD_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., Dz) -> logits (..., K, V)."""
        x = self.dec_chunk(self.dec_in(z))
        x = self.dec_split(x).unflatten(-1, (self.K, -1))
        x = self.dec_norm(self.dec_token(x))
        return x @ self.embed.weight.to(x.dtype).t()

    def reconstruct(self, chunks: torch.Tensor, noise_scale: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """chunks (..., K) -> the argmax decoding (..., K) of mu + noise_scale * N(0, I)."""
        mu, _ = self.encode(chunks)
        if noise_scale:
            mu = mu + noise_scale * torch.randn(mu.shape, generator=generator,
                                                device=mu.device, dtype=mu.dtype)
        return self.decode(mu).argmax(-1)


def autoencoder_loss(autoencoder: TokenAutoencoder, chunks: torch.Tensor, config: CALMConfig,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """Phase 1's loss on chunks (..., K): mean token cross-entropy of decoding a reparameterised
    sample of the posterior (with token dropout on the input and dropout on z) + kl_weight *
    sum over dimensions of max(kl_free_bits, mean KL of that dimension). Metrics: recon (nats
    per token), kl (nats per chunk, before the floor), ae_acc (token accuracy of that decoding).
    """
    device = chunks.device
    keep = None
    if config.token_dropout > 0:
        keep = torch.rand(chunks.shape, generator=generator, device=device) >= config.token_dropout
    mu, log_std = autoencoder.encode(chunks, keep)
    eps = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype)
    z = mu + log_std.exp() * eps
    if config.z_dropout > 0:
        mask = torch.rand(z.shape, generator=generator, device=device) >= config.z_dropout
        z = z * mask.to(z.dtype) / (1 - config.z_dropout)
    logits = autoencoder.decode(z)
    recon = F.cross_entropy(logits.flatten(0, -2).float(), chunks.flatten())
    mu32, log_std32 = mu.float().flatten(0, -2), log_std.float().flatten(0, -2)
    kl_dims = 0.5 * (mu32.pow(2) + (2 * log_std32).exp() - 1) - log_std32  # (chunks, Dz)
    kl_mean = kl_dims.mean(0)
    kl_penalty = kl_mean.clamp_min(config.kl_free_bits).sum()
    loss = recon + config.kl_weight * kl_penalty
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == chunks).float().mean()
    return loss, {"recon": recon.detach(), "kl": kl_mean.sum().detach(), "ae_acc": accuracy}


# --------------------------------------------------------------------------- latent model


class LatentBlock(nn.Module):
    """(B, N, D) -> (B, N, D): x + SSM(norm x), then + Hopfield(norm x), then + MLP(norm x)."""

    def __init__(self, config: CALMConfig):
        super().__init__()
        D = config.d_model
        self.ssm_norm = nn.LayerNorm(D)
        self.ssm = GatedSSM(D, kind=config.ssm, kernel_size=config.ssm_kernel,
                            state_size=config.ssm_state)
        self.hop_norm = nn.LayerNorm(D)
        self.hopfield = HopfieldMemory(D, config.hop_mem_slots, beta=config.hop_beta)
        self.mlp = ResidualMLP(D, 4 * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        x = x + self.ssm(self.ssm_norm(x))
        x = x + self.hopfield(self.hop_norm(x))
        return self.mlp(x)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x (B, D), the SSM's state -> (B, D), new state."""
        y, state = self.ssm.step(self.ssm_norm(x), state)
        x = x + y
        x = x + self.hopfield(self.hop_norm(x))
        return self.mlp(x), state


class LatentLM(nn.Module):
    """The latent language model: inputs for positions 0..N (a learned start vector, then one
    per chunk) -> hidden states h, h[t] predicting chunk t; and the generative head.

    lm_input "z": a chunk enters as its posterior mean mu (Dz) through a linear layer;
    "tokens": its K tokens through the model's own embedding table (V, D), flattened (K D)
    and mixed by a linear layer to D.
    """

    def __init__(self, config: CALMConfig):
        super().__init__()
        c = config
        D = c.d_model
        self.lm_input = c.lm_input
        self.ssm_kind, self.ssm_kernel, self.n_layer = c.ssm, c.ssm_kernel, c.n_layer
        self.start = nn.Parameter(torch.zeros(D))
        if c.lm_input == "z":
            self.z_in = nn.Linear(c.latent_dim, D)
        else:
            self.token_embed = nn.Embedding(c.vocab_size, D)
            nn.init.normal_(self.token_embed.weight, std=D ** -0.5)
            self.tokens_in = nn.Linear(c.K * D, D)
        self.blocks = nn.ModuleList(LatentBlock(c) for _ in range(c.n_layer))
        self.norm = nn.LayerNorm(D)
        head_class = GatedEnergyHead if c.head == "gated" else MLPEnergyHead
        self.head = head_class(D, c.latent_dim, width=c.head_width, depth=c.head_depth)

    @property
    def receptive_field(self) -> int | None:
        """How many input positions the last hidden state depends on: n_layer (ssm_kernel - 1)
        + 1 with the conv SSM (the Hopfield memory and the MLPs are position-wise), None (all
        of them) with the diagonal SSM. Generation runs the blocks on that many positions."""
        if self.ssm_kind != "conv":
            return None
        return self.n_layer * (self.ssm_kernel - 1) + 1

    def inputs(self, chunks: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
        """chunks (B, N, K) and their posterior means mu (B, N, Dz) (lm_input "z"; may be None
        for "tokens") -> inputs (B, N + 1, D): the start vector, then one per chunk."""
        if self.lm_input == "z":
            x = self.z_in(mu)
        else:
            x = self.tokens_in(self.token_embed(chunks).flatten(-2))
        start = self.start.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([start, x], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """inputs (B, N, D) -> hidden states (B, N, D); causal."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def initial_state(self, batch: int, *, device=None, dtype=None) -> list[torch.Tensor]:
        """Every block's SSM state before the first position."""
        return [block.ssm.initial_state(batch, device=device, dtype=dtype)
                for block in self.blocks]

    def step(self, x: torch.Tensor,
             state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One position: input x (B, D) -> hidden state (B, D) and the new states; stepping
        through inputs equals `forward` on all of them (generation's linear-time path)."""
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            x, s = block.step(x, s)
            new.append(s)
        return self.norm(x), new

    def sample(self, h: torch.Tensor, n: int,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor | None]:
        """h (..., D) -> (z (..., n, Dz), noise (..., n, Dz), gate (..., n, Dz) or None): n
        head samples per position, noise drawn from `generator`."""
        noise = torch.randn((*h.shape[:-1], n, self.head.latent_dim), generator=generator,
                            device=h.device, dtype=torch.float32)
        z, gate = self.head(h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]),
                            noise.to(h.dtype))
        return z, noise.to(z.dtype), gate


def latent_loss(autoencoder: TokenAutoencoder, latent_model: LatentLM, chunks: torch.Tensor,
                config: CALMConfig, generator: torch.Generator | None) -> tuple[torch.Tensor,
                                                                                 dict]:
    """Phase 2's loss on chunks (B, N, K), the autoencoder frozen (no gradient reaches it).

    Targets: M samples of the frozen encoder's posterior N(mu, sigma^2) of each true chunk.
    Head: S samples per position. Per position: d_fid, d_div (`energy_terms`), the energy loss
    2 d_fid - d_div, and the rectified-flow term (`rf_loss` of every sample against the
    posterior mean). loss_type picks the loss: "calm" energy, "rf" rf, "calm_rf" energy +
    rf_weight rf. Metrics: d_fid, d_div, energy, rf, gate_mean (gated head), and d_fid per
    bucket of latent positions (fid_q0..fid_q3: first to last quarter of the sequence)."""
    with torch.no_grad():
        mu, log_std = autoencoder.encode(chunks)
        M = config.n_targets
        eps = torch.randn((*mu.shape[:-1], M, mu.shape[-1]), generator=generator,
                          device=mu.device, dtype=mu.dtype)
        targets = mu.unsqueeze(-2) + log_std.exp().unsqueeze(-2) * eps       # (B, N, M, Dz)
    inputs = latent_model.inputs(chunks[:, :-1], mu[:, :-1])
    h = latent_model(inputs)                                                  # (B, N, D)
    z, noise, gate = latent_model.sample(h, config.n_samples, generator)     # (B, N, S, Dz)
    d_fid, d_div = energy_terms(z, targets, config.alpha)                     # (B, N)
    energy = 2 * d_fid - d_div
    rf = rf_loss(z, noise, mu.unsqueeze(-2), config.rf_form).mean(-1)         # (B, N)
    if config.loss_type == "calm":
        per_position = energy
    elif config.loss_type == "rf":
        per_position = rf
    else:
        per_position = energy + config.rf_weight * rf
    loss = per_position.mean()
    metrics = {"d_fid": d_fid.mean().detach(), "d_div": d_div.mean().detach(),
               "energy": energy.mean().detach(), "rf": rf.mean().detach()}
    if gate is not None:
        metrics["gate_mean"] = gate.float().mean().detach()
    fid_by_position = d_fid.detach().mean(0)                                  # (N,)
    for q, part in enumerate(fid_by_position.tensor_split(FIDELITY_BUCKETS)):
        if part.numel():
            metrics[f"fid_q{q}"] = part.mean()
    return loss, metrics


def per_position_fidelity(autoencoder: TokenAutoencoder, latent_model: LatentLM,
                          chunks: torch.Tensor, config: CALMConfig,
                          generator: torch.Generator | None) -> torch.Tensor:
    """(N,) mean d_fid at each latent position of chunks (B, N, K) (where in the sequence the
    model struggles); same targets and samples as `latent_loss`."""
    mu, log_std = autoencoder.encode(chunks)
    eps = torch.randn((*mu.shape[:-1], config.n_targets, mu.shape[-1]), generator=generator,
                      device=mu.device, dtype=mu.dtype)
    targets = mu.unsqueeze(-2) + log_std.exp().unsqueeze(-2) * eps
    h = latent_model(latent_model.inputs(chunks[:, :-1], mu[:, :-1]))
    z, _, _ = latent_model.sample(h, config.n_samples, generator)
    d_fid, _ = energy_terms(z, targets, config.alpha)
    return d_fid.mean(0)
