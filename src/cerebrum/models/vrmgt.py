"""VariationalRecurrentMarkovGaussianTransformer (VRMGT, seed 001).

A sequence model of x_1..x_T (each of D = input_dim features) with three kinds of latent
structure:
    h_t   a GRU state over the past:         h_t = GRU([x_t, z_t], h_{t-1})
    c_t   attention context over the past:   a causal Transformer over x_{<t}
    z_t   a continuous latent per step:      prior p(z_t | h_{t-1}, c_t), posterior
                                             q(z_t | x_t, h_{t-1}, c_t) (the encoder)
    s_t   a discrete Markov state:           start pi, transitions A (learned)
and emissions p(x_t | s_t = j, z_t, h_{t-1}, c_t): a Gaussian mixture of M components per
state j, its parameters decoded from (z_t, h_{t-1}, c_t), variances clamped.

Given the z's, the states are summed out exactly by the forward algorithm (hmm_inference's,
the one HiddenMarkov uses), so the training objective is the evidence lower bound
    ELBO(x) = E_q[ log p(x | z) ] - sum_t KL(q(z_t | ...) || p(z_t | ...)),
one sample of z per sequence, KL weighted by the annealing schedule. `log_likelihoods`
returns the importance-weighted bound (Burda et al., 2016) with K samples,
    log (1/K) sum_k p(x, z^k) / q(z^k | x)  <=  log p(x),
which rises toward log p(x) as K grows: a lower bound on the log-likelihood in nats per
sequence, comparable with HiddenMarkov's exact one in `Cerebrum.classify`.

Shapes: B sequences, T steps, D features, Z = z_dim, H = rnn_hidden, C = trans_d_model,
S = num_states, M = n_mix, K importance samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cerebrum._util.sequences import SequenceBatch, as_sequence_batch
from cerebrum.mixtures import hmm_inference
from cerebrum.models._sequence_helpers import importance_weighted_bound, normalise_positive_ints
from cerebrum.nn.coders import LOGVAR_RANGE, MixtureDecoder, gaussian_kl, gaussian_log_prob, mlp
from cerebrum.nn.transformer import TimeSeriesTransformer, check_heads


@dataclass(frozen=True, kw_only=True)
class VRMGTConfig:
    """Architecture of a VRMGT (seed 001's argument names)."""

    input_dim: int
    hidden_dim: int = 64
    z_dim: int = 8
    rnn_hidden: int = 64
    num_states: int = 4
    n_mix: int = 2
    trans_d_model: int = 32
    trans_nhead: int = 4
    trans_layers: int = 1
    output_dim: int | None = None
    min_variance: float = 1e-3
    dtype: str = "float32"

    def __post_init__(self):
        normalise_positive_ints(self, (
            "input_dim", "hidden_dim", "z_dim", "rnn_hidden", "num_states", "n_mix",
            "trans_d_model", "trans_nhead", "trans_layers"))
        check_heads(self.trans_d_model, self.trans_nhead)
        output_dim = self.input_dim if self.output_dim is None else self.output_dim
        if output_dim != self.input_dim:
            raise ValueError(
                f"output_dim ({output_dim}) must equal input_dim ({self.input_dim}): the VRMGT "
                "is a density model of its input sequences")
        object.__setattr__(self, "output_dim", int(output_dim))
        if not self.min_variance > 0:
            raise ValueError(f"min_variance must be > 0, got {self.min_variance}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


class VariationalRecurrentMarkovGaussianTransformer(nn.Module):
    """The VRMGT of seed 001 (see the module docstring). Build it from a `VRMGTConfig` or
    keywords: `VariationalRecurrentMarkovGaussianTransformer(input_dim=8, num_states=3)`."""

    def __init__(self, config: VRMGTConfig | None = None, **kwargs):
        super().__init__()
        config = VRMGTConfig(**kwargs) if config is None else config
        self.config = c = config
        D, Z, H, C = c.input_dim, c.z_dim, c.rnn_hidden, c.trans_d_model
        self.context = TimeSeriesTransformer(D, C, c.trans_nhead, c.trans_layers, C,
                                             causal_encoder=True, decoder=False)
        self.first_input = nn.Parameter(torch.zeros(D))  # stands for x_0 in the context
        self.initial_state = nn.Parameter(torch.zeros(H))
        self.prior = mlp([H + C, c.hidden_dim, 2 * Z])
        self.encoder = mlp([D + H + C, c.hidden_dim, c.hidden_dim, 2 * Z])
        self.emission = MixtureDecoder(Z + H + C, c.hidden_dim, D, c.n_mix,
                                       n_groups=c.num_states, min_variance=c.min_variance)
        self.cell = nn.GRUCell(D + Z, H)
        self.start_logits = nn.Parameter(torch.zeros(c.num_states))
        self.transition_logits = nn.Parameter(
            torch.eye(c.num_states) * 2.0)  # start "sticky": states persist
        self.history_: dict = {}
        self.to(getattr(torch, c.dtype))

    # ------------------------------------------------------------------ the model

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"x must be (B, T, input_dim), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.input_dim:
            raise ValueError(f"x has {x.shape[-1]} features, but this model was built with "
                             f"input_dim={self.config.input_dim}")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
                n_samples: int = 1, generator: torch.Generator | None = None) -> dict:
        """Run the model on padded x (B, T, D) with `n_samples` posterior samples each.

        Returns a dict (sample-major, K = n_samples):
            log_px_given_z (K, B)   log p(x | z), states summed out
            kl (K, B)               sum over valid steps of KL(q || p)
            log_pz_minus_log_qz (K, B)  sum over valid steps of log p(z) - log q(z)
            emissions (K, B, T, S)  log p(x_t | s_t = j, z_t, ...)
            z (K, B, T, Z), mu_q / logvar_q / mu_p / logvar_p (K, B, T, Z)
        """
        self._check(x)
        B, T, D = x.shape
        K = n_samples
        lengths = (torch.full((B,), T, device=x.device) if lengths is None
                   else lengths.to(x.device))
        valid = hmm_inference.valid_mask(lengths, T)  # (B, T)
        shifted = torch.cat([self.first_input.expand(B, 1, D), x[:, :-1]], 1)
        context = self.context(shifted, src_lengths=lengths)  # (B, T, C): sees x_{<t}
        xs = x.repeat(K, 1, 1)  # (K*B, T, D), sample-major
        context = context.repeat(K, 1, 1)
        h = self.initial_state.expand(K * B, -1)
        records = {name: [] for name in ("z", "mu_q", "logvar_q", "mu_p", "logvar_p", "emit")}
        for t in range(T):
            past = torch.cat([h, context[:, t]], -1)
            mu_p, logvar_p = self.prior(past).chunk(2, -1)
            mu_q, logvar_q = self.encoder(torch.cat([xs[:, t], past], -1)).chunk(2, -1)
            logvar_p, logvar_q = logvar_p.clamp(*LOGVAR_RANGE), logvar_q.clamp(*LOGVAR_RANGE)
            eps = torch.randn(mu_q.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = mu_q + torch.exp(0.5 * logvar_q) * eps
            mixture = self.emission(torch.cat([z, past], -1))  # (K*B, S, M, ...)
            records["emit"].append(mixture.log_prob(xs[:, t, None, :]))  # (K*B, S)
            h = self.cell(torch.cat([xs[:, t], z], -1), h)
            for name, value in (("z", z), ("mu_q", mu_q), ("logvar_q", logvar_q),
                                ("mu_p", mu_p), ("logvar_p", logvar_p)):
                records[name].append(value)
        out = {name: torch.stack(values, 1).view(K, B, T, -1)
               for name, values in records.items()}
        emissions = out.pop("emit")
        _, log_px = hmm_inference.forward(
            torch.log_softmax(self.start_logits, 0), torch.log_softmax(self.transition_logits, 1),
            emissions.reshape(K * B, T, -1), lengths.repeat(K))
        mask = valid.to(x.dtype)
        kl = (gaussian_kl(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"])
              * mask).sum(-1)
        log_ratio = ((gaussian_log_prob(out["z"], out["mu_p"], out["logvar_p"])
                      - gaussian_log_prob(out["z"], out["mu_q"], out["logvar_q"])) * mask).sum(-1)
        out.update(log_px_given_z=log_px.view(K, B), kl=kl, log_pz_minus_log_qz=log_ratio,
                   emissions=emissions)
        return out

    def elbo(self, x, lengths=None, *, kl_weight: float = 1.0, generator=None) -> torch.Tensor:
        """The (annealed) evidence lower bound per sequence (B,), one posterior sample."""
        out = self(x, lengths, generator=generator)
        return (out["log_px_given_z"] - kl_weight * out["kl"])[0]

    def training_loss(self, x, lengths, kl_weight, generator=None) -> torch.Tensor:
        """Negative annealed ELBO per valid frame (the training objective)."""
        return -self.elbo(x, lengths, kl_weight=kl_weight, generator=generator).sum() / (
            lengths.sum())

    def validation_loss(self, x, lengths, generator=None) -> torch.Tensor:
        return self.training_loss(x, lengths, 1.0, generator)

    # ------------------------------------------------------------------ verbs

    def _batch(self, X, lengths) -> SequenceBatch:
        param = self.start_logits
        return as_sequence_batch(X, lengths, n_features=self.config.input_dim,
                                 dtype=param.dtype, device=param.device,
                                 owner=f"this {type(self).__name__}")

    def log_likelihoods(self, X, lengths=None, *, n_samples: int = 64, random_state=0,
                        batch_size: int = 64) -> np.ndarray:
        """Importance-weighted lower bound on log p(x) per sequence (B,), nats, NumPy.

        `n_samples` posterior samples per sequence (more: tighter, slower); the bound is
        random, reproducible through `random_state`.
        """
        def log_weights(x, lens, k, generator):
            out = self(x, lens, n_samples=k, generator=generator)
            return out["log_px_given_z"] + out["log_pz_minus_log_qz"]  # (K, b)

        self.eval()
        return importance_weighted_bound(
            log_weights, self._batch(X, lengths), n_samples=n_samples,
            random_state=random_state, batch_size=batch_size).cpu().numpy()

    def score(self, X, lengths=None, **kwargs) -> float:
        """Sum over sequences of the importance-weighted bound (HiddenMarkov's convention)."""
        return float(self.log_likelihoods(X, lengths, **kwargs).sum())

    def fit(self, X, lengths=None, *, tgt=None, epochs: int = 100, lr: float = 1e-3,
            batch_size: int = 32, clip_norm: float = 5.0, weight_decay: float = 0.0,
            kl_anneal_epochs: int = 0, validation_split: float = 0.1,
            patience: int | None = 10, random_state=None, verbose: bool = False,
            out_dir=None, resume: bool = False, warmup_steps: int = 0,
            checkpoint_every: int = 10):
        """Train on sequences (any form HiddenMarkov takes) by maximising the ELBO; returns
        self. `history_` holds train_loss / val_loss (negative ELBO per frame) and kl_weight
        per epoch; with a validation split, the weights of the best validation epoch are kept
        (early stopping after `patience` epochs without improvement). `out_dir` / `resume`:
        checkpoints, metrics log and exact resume. `tgt` (seed 001's target for conditional
        models) is refused: the VRMGT is a density model of its inputs; the
        MultiMixtureTransformer takes targets.

        The fit lives in the family glue, `cerebrum.brain.hybrids.fit_sequences` (the shared
        training engine; its docstring documents every keyword); this method is seed 001's
        convenience entry to it."""
        from cerebrum.brain.hybrids import fit_sequences

        return fit_sequences(
            self, X, lengths, tgt=tgt, epochs=epochs, lr=lr, batch_size=batch_size,
            clip_norm=clip_norm, weight_decay=weight_decay, kl_anneal_epochs=kl_anneal_epochs,
            validation_split=validation_split, patience=patience, random_state=random_state,
            verbose=verbose, out_dir=out_dir, resume=resume, warmup_steps=warmup_steps,
            checkpoint_every=checkpoint_every)

    def training_batch(self, X, lengths=None, tgt=None) -> SequenceBatch:
        """The training sequences, checked (the fit's data; `tgt` is refused)."""
        if tgt is not None:
            raise ValueError("tgt is not supported by the VRMGT, a density model of its input "
                             "sequences; the MultiMixtureTransformer (Cerebrum "
                             "model_type='mmm') trains a transformer toward targets")
        return self._batch(X, lengths)

    def get_transmat(self) -> np.ndarray:
        """The Markov transition matrix (S, S) as NumPy."""
        return torch.softmax(self.transition_logits.detach(), 1).cpu().numpy()

    def get_startprob(self) -> np.ndarray:
        return torch.softmax(self.start_logits.detach(), 0).cpu().numpy()
