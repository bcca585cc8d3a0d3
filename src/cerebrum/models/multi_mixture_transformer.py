"""MultiMixtureTransformer (seed 000): a VAE, an RNN-HMM over its latents and a Transformer.

Per step, an encoder gives q(z_t | x_t) = N(mu_t, exp(logvar_t)); a decoder maps z_t back to x
(the reconstruction); a RecurrentNetwork reads the latent path and gives, from the past, HMM
start / transition log-probabilities and per-state Gaussian-mixture emission densities of the
next latent, whose states the forward algorithm (hmm_inference, as in HiddenMarkov) sums out:
the "HMM log-likelihood" of the latent trajectory. A TimeSeriesTransformer maps the latent
sequence to a target sequence when one is given. Per-dimension weight vectors steer the tasks:
    pred_weights   (Z,)  how much of the model's predicted next latent replaces the current one
    recog_weights  (Z,)  how much of the attention to a target latent enters recognition
    gen_weights    (Z,)  the scale of latent noise in generation (a per-dimension temperature)
    reg_weights    (Z,)  how strongly each latent dimension of the plan informs drafting
`add_rule` adds a squared-error penalty that pulls the mean of one of these toward a target.

Two training objectives (`objective`):
    "elbo" (default)  the evidence lower bound of the generative model the other verbs use,
                      p(z) = the RNN-HMM over latent paths, p(x_t | z_t) = N(decoder(z_t),
                      sigma^2) with sigma^2 per feature learned:
                      -log p(x | z) + kl_weight * (log q(z | x) - log p_RNN-HMM(z)),
                      one latent sample per step; what `log_likelihoods` bounds and
                      `generate` samples is what was trained;
    "seed"            seed 000's loss as written: reconstruction MSE + kl_weight *
                      KL(q || N(0, I)) + the negative RNN-HMM log-likelihood of the latent path
                      (clamped); sigma^2 is set after fitting to the mean squared error. It
                      counts the latent prior twice (N(0, I) and the RNN-HMM) and weighs
                      reconstruction as Gaussian noise of variance 1/2 per feature, so on data
                      whose structure lies below that scale the latents collapse and the model
                      learns no dynamics (measured in docs/hybrids.md).

With `vocab_size` set, the regression (drafting) path of seed 000 exists: a latent plan from a
context sequence, refined blockwise by TinyDiffusion blocks; several token drafts sampled with
top-p from an autoregressive decoder (`auto_decoder` + `to_vocab`) conditioned on the plan;
each scored by a DraftScorer; the best one refined; an entropy penalty on its logits.

Layout: every public verb takes batch-first sequences (B, T, D), the layout of the seeds' data
tables (`[batch, seq_len, input_dim]`) and of `fit`, `score` and `classify`; a single step is
(B, D). Seed 000's own description of `forward` is time-major, (T, B, D): pass
`time_major=True` to any verb to use that layout instead (inputs and outputs alike). Inside,
the model works time-major (its recurrences run along the first axis).

Shapes: T steps, B batch, D = input_dim, Z = z_dim, S = num_states, M = n_mix,
O = output_dim, V = vocab_size, L = draft_len, P = plan steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cerebrum._util.sequences import SequenceBatch, as_sequence_batch
from cerebrum._util.validation import check_positive_int, to_numeric_tensor
from cerebrum.mixtures import hmm_inference
from cerebrum.models._sequence_helpers import (
    SequenceFit,
    importance_weighted_bound,
    normalise_positive_ints,
    padded,
)
from cerebrum.nn.coders import (
    LOGVAR_RANGE,
    Decoder,
    Encoder,
    gaussian_kl,
    gaussian_log_prob,
    reparameterize,
)
from cerebrum.nn.drafting import DraftScorer, TinyDiffusionBlock
from cerebrum.nn.recurrent import RecurrentNetwork
from cerebrum.nn.transformer import TimeSeriesTransformer, check_heads

#: The HMM log-likelihood is clamped to this range in the loss (seed 000: no infinities).
HMM_LOGLIK_RANGE = (-1e6, 1e6)
TASKS = ("pred", "recog", "gen", "reg")
#: The regression path's default vocabulary: bytes (seed 000 calls `regression` without one).
DEFAULT_VOCAB_SIZE = 256
#: the training objectives (see the module docstring)
OBJECTIVES = ("elbo", "seed")
#: forward's outputs with a time axis (first when time-major, second when batch-first)
_TIMED_OUTPUTS = ("zs", "mu", "logvar", "reconstruction", "emissions", "transitions",
                  "transformer_output")


@dataclass(frozen=True, kw_only=True)
class MMTConfig:
    """Architecture of a MultiMixtureTransformer (seed 000's argument names).

    `vocab_size` is the token vocabulary of the regression (drafting) path; it defaults to 256
    (bytes), because seed 000 calls `regression` on a model built without one; None builds
    the model without that path."""

    input_dim: int
    hidden_dim: int = 64
    z_dim: int = 8
    rnn_hidden: int = 64
    num_states: int = 4
    n_mix: int = 1
    trans_d_model: int = 32
    trans_nhead: int = 4
    trans_layers: int = 1
    output_dim: int | None = None
    vocab_size: int | None = DEFAULT_VOCAB_SIZE
    draft_len: int = 8
    n_drafts: int = 4
    n_blocks: int = 2
    top_p: float = 0.9
    min_variance: float = 1e-6
    objective: str = "elbo"
    dtype: str = "float32"

    def __post_init__(self):
        normalise_positive_ints(self, (
            "input_dim", "hidden_dim", "z_dim", "rnn_hidden", "num_states", "n_mix",
            "trans_d_model", "trans_nhead", "trans_layers", "draft_len", "n_drafts", "n_blocks"))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got "
                             f"{self.objective!r}")
        check_heads(self.trans_d_model, self.trans_nhead)
        output_dim = self.input_dim if self.output_dim is None else self.output_dim
        object.__setattr__(self, "output_dim", check_positive_int(output_dim,
                                                                  name="output_dim"))
        if self.vocab_size is not None:
            object.__setattr__(self, "vocab_size",
                               check_positive_int(self.vocab_size, name="vocab_size",
                                                  minimum=2))
        if not self.min_variance > 0:
            raise ValueError(f"min_variance must be > 0, got {self.min_variance}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def top_p_sample(logits: torch.Tensor, top_p: float, generator=None) -> torch.Tensor:
    """Nucleus sampling: one token per row of logits (..., V) from the smallest set of tokens
    whose probabilities sum to at least top_p."""
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the first
    sorted_probs = torch.where(keep, sorted_probs, 0.0)
    flat = sorted_probs.reshape(-1, sorted_probs.shape[-1])
    pick = torch.multinomial(flat, 1, generator=generator).view(*logits.shape[:-1], 1)
    return order.gather(-1, pick).squeeze(-1)


class MultiMixtureTransformer(SequenceFit, nn.Module):
    """Seed 000's hybrid (see the module docstring). Build from an `MMTConfig` or keywords."""

    def __init__(self, config: MMTConfig | None = None, **kwargs):
        super().__init__()
        config = MMTConfig(**kwargs) if config is None else config
        self.config = c = config
        D, Z = c.input_dim, c.z_dim
        self.encoder = Encoder(D, c.hidden_dim, Z)
        self.decoder = Decoder(Z, c.hidden_dim, D)
        self.rnn = RecurrentNetwork(Z, c.rnn_hidden, c.num_states, n_mix=c.n_mix)
        self.transformer = TimeSeriesTransformer(Z, c.trans_d_model, c.trans_nhead,
                                                 c.trans_layers, c.output_dim)
        self.pred_weights = nn.Parameter(torch.ones(Z))
        self.recog_weights = nn.Parameter(torch.ones(Z))
        self.gen_weights = nn.Parameter(torch.ones(Z))
        self.reg_weights = nn.Parameter(torch.ones(Z))
        self.recog_attention = nn.MultiheadAttention(Z, 1, batch_first=True)
        # log-variance of the observation noise per feature, p(x_t | z_t) = N(decoder(z_t),
        # exp(recon_logvar)): learned with the "elbo" objective; with "seed" (MSE) set after
        # fitting to its maximum-likelihood value given the decoder
        self.recon_logvar = nn.Parameter(torch.zeros(D))
        self.rules: dict[str, tuple[str, float, float]] = {}
        if c.vocab_size is not None:
            V = c.vocab_size
            self.diffusion = nn.ModuleList(TinyDiffusionBlock(Z) for _ in range(c.n_blocks))
            self.token_embedding = nn.Embedding(V + 1, c.hidden_dim)  # V = start token
            self.plan_to_hidden = nn.Linear(Z, c.hidden_dim)
            self.auto_decoder = nn.GRU(c.hidden_dim, c.hidden_dim, batch_first=True)
            self.to_vocab = nn.Linear(c.hidden_dim, V)
            self.scorer = DraftScorer(V, Z, d_model=c.trans_d_model, nhead=c.trans_nhead)
        self.history_: dict = {}
        self.to(getattr(torch, c.dtype))

    # ------------------------------------------------------------------ core

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator=None) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
        return reparameterize(mu, logvar, generator)

    def _layout(self, time_major: bool) -> str:
        D = self.config.input_dim
        return (f"(T, B, input_dim={D}) time-major (as asked by time_major=True)" if time_major
                else f"(B, T, input_dim={D}) batch-first (or (T, B, input_dim) with "
                     f"time_major=True)")

    def _check_input(self, x, name: str = "x", time_major: bool = False) -> torch.Tensor:
        """x as a tensor in the model's dtype and on its device (tensors are cast, not
        detached; arrays converted), checked: a layout's shape, no empty axis, finite."""
        param = self.pred_weights
        if isinstance(x, torch.Tensor):
            if x.is_complex() or x.dtype == torch.bool:
                raise TypeError(f"{name} must hold real numbers, got a tensor of dtype "
                                f"{x.dtype}")
            x = x.to(device=param.device, dtype=param.dtype)
        else:
            x = to_numeric_tensor(x, name=name, dtype=param.dtype, device=param.device)
        if x.dim() not in (2, 3) or x.shape[-1] != self.config.input_dim or 0 in x.shape:
            raise ValueError(f"{name} must be {self._layout(time_major)} or one step "
                             f"(B, input_dim={self.config.input_dim}), none of its axes "
                             f"empty; got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinity")
        return x

    @staticmethod
    def _time_major(x: torch.Tensor | None, time_major: bool) -> torch.Tensor | None:
        """A sequence (B, T, .) in the model's inner layout (T, B, .); one step (B, D) and
        tensors already time-major pass through."""
        if x is None or time_major or x.dim() != 3:
            return x
        return x.transpose(0, 1)

    @staticmethod
    def _outputs_in(outputs: dict, time_major: bool) -> dict:
        """forward's outputs moved between the inner time-major layout and batch-first."""
        if time_major:
            return outputs
        return {key: value.transpose(0, 1) if key in _TIMED_OUTPUTS and value.dim() >= 3
                else value for key, value in outputs.items()}

    def forward(self, x: torch.Tensor, tgt: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, generator=None, *,
                time_major: bool = False) -> dict:
        """All intermediates for x (B, T, D) (or one step (B, D), taken as T = 1).

        Returns a dict: zs (B, T, Z) sampled latents, mu / logvar (B, T, Z), reconstruction
        (x's shape: the decoder's mean at the sampled latents, E[x_t | z_t]), emissions
        (B, T, S) log-densities of each z_t under each state given the past, transitions
        (B, T, S, S), start (B, S), hmm_log_likelihood (B,), lengths (B,), and, when tgt
        (B, T', O) is given, transformer_output (B, T', O) (teacher forced: step t sees tgt
        before t and every latent). With `time_major=True`, x (T, B, D), tgt (T', B, O) and
        the outputs are time-major (seed 000's layout).
        """
        x = self._check_input(x, time_major=time_major)
        if tgt is not None and (not isinstance(tgt, torch.Tensor) or tgt.dim() != 3):
            raise ValueError(f"tgt must be a 3-D tensor {'(T' if time_major else '(B, T'}', "
                             f"..., output_dim={self.config.output_dim}), got "
                             f"{getattr(tgt, 'shape', type(tgt).__name__)}")
        outputs = self._forward(self._time_major(x, time_major),
                                self._time_major(tgt, time_major), lengths, generator)
        return self._outputs_in(outputs, time_major)

    def _forward(self, x: torch.Tensor, tgt: torch.Tensor | None,
                 lengths: torch.Tensor | None, generator=None) -> dict:
        """forward in the inner layout: x (T, B, D) or (B, D), tgt (T', B, O)."""
        single = x.dim() == 2
        seq = x.unsqueeze(0) if single else x
        T, B, _ = seq.shape
        lengths = (torch.full((B,), T, device=x.device) if lengths is None
                   else lengths.to(x.device))
        mu, logvar = self.encoder(seq)
        zs = self.reparameterize(mu, logvar, generator)
        reconstruction = self.decoder(zs)
        markov = self.rnn(zs.transpose(0, 1))  # batch-first inside
        _, hmm_ll = hmm_inference.forward(markov.start, markov.transitions, markov.emissions,
                                          lengths)
        out = {"zs": zs, "mu": mu, "logvar": logvar,
               "reconstruction": reconstruction[0] if single else reconstruction,
               "emissions": markov.emissions.transpose(0, 1),
               "transitions": markov.transitions.transpose(0, 1), "start": markov.start,
               "hmm_log_likelihood": hmm_ll, "lengths": lengths}
        if tgt is not None:
            if tgt.shape[1] != B or tgt.shape[2] != self.config.output_dim:
                raise ValueError(f"tgt must hold {B} sequences of output_dim="
                                 f"{self.config.output_dim} features in x's layout, got "
                                 f"shape {tuple(tgt.transpose(0, 1).shape)} batch-first")
            shifted = torch.cat([torch.zeros_like(tgt[:1]), tgt[:-1]], 0)
            out["transformer_output"] = self.transformer(
                zs.transpose(0, 1), shifted.transpose(0, 1), src_lengths=lengths
            ).transpose(0, 1)
        return out

    def loss(self, x: torch.Tensor, outputs: dict, tgt: torch.Tensor | None = None,
             kl_weight: float = 1.0, *, time_major: bool = False) -> torch.Tensor:
        """Seed 000's objective per valid step: reconstruction MSE + kl_weight * KL(q || N(0,
        I)) + the negative HMM log-likelihood of the latent path (clamped), plus the MSE of
        the transformer output to tgt when both are there. x, outputs (forward's) and tgt in
        one layout: batch-first, or time-major with `time_major=True`."""
        return self._loss(self._time_major(x, time_major),
                          self._outputs_in(outputs, time_major),
                          self._time_major(tgt, time_major), kl_weight)

    def noise_logvar(self) -> torch.Tensor:
        """The observation noise's log-variance per feature (D,), floored at min_variance."""
        return self.recon_logvar.clamp_min(math.log(self.config.min_variance))

    def _loss(self, x, outputs, tgt, kl_weight) -> torch.Tensor:
        """loss in the inner layout (x (T, B, D) or (B, D), outputs time-major), per valid
        step, for the model's objective."""
        seq = x.unsqueeze(0) if x.dim() == 2 else x
        recon = outputs["reconstruction"]
        recon = recon.unsqueeze(0) if recon.dim() == 2 else recon
        T = seq.shape[0]
        mask = hmm_inference.valid_mask(outputs["lengths"], T).T.to(seq.dtype)  # (T, B)
        n_valid = mask.sum()
        logvar = outputs["logvar"].clamp(*LOGVAR_RANGE)
        hmm_nll = -outputs["hmm_log_likelihood"].clamp(*HMM_LOGLIK_RANGE).sum() / n_valid
        if self.config.objective == "elbo":
            log_px = gaussian_log_prob(seq, recon, self.noise_logvar())  # (T, B)
            log_q = gaussian_log_prob(outputs["zs"], outputs["mu"], logvar)
            nll = -(log_px * mask).sum() / n_valid
            total = nll + kl_weight * ((log_q * mask).sum() / n_valid + hmm_nll)
        else:  # seed 000 as written
            mse = (((recon - seq) ** 2).mean(-1) * mask).sum() / n_valid
            kl = (gaussian_kl(outputs["mu"], logvar) * mask).sum() / n_valid
            total = mse + kl_weight * kl + hmm_nll
        if tgt is not None and "transformer_output" in outputs:
            total = total + F.mse_loss(outputs["transformer_output"], tgt)
        return total

    # ------------------------------------------------------------------ rules and steps

    def add_rule(self, name: str, label: str, reward_target: float, reward: float) -> None:
        """Penalise reward * (mean(<label>_weights) - reward_target)^2 in training_step;
        label is one of 'pred', 'recog', 'gen', 'reg'. A rule of the same name is replaced."""
        if label not in TASKS:
            raise ValueError(f"label must be one of {', '.join(TASKS)}, got {label!r}")
        for arg, value in (("reward_target", reward_target), ("reward", reward)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{arg} must be a finite number, got {value!r}")
        if reward < 0:
            raise ValueError(f"reward must be >= 0, got {reward}")
        self.rules[name] = (label, float(reward_target), float(reward))

    def rule_loss(self) -> torch.Tensor:
        """The sum of the rule penalties (0 without rules)."""
        total = self.pred_weights.new_zeros(())
        for label, target, reward in self.rules.values():
            weights = getattr(self, f"{label}_weights")
            total = total + reward * (weights.mean() - target) ** 2
        return total

    def training_step(self, x: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      tgt=None, lengths=None, kl_weight: float = 1.0,
                      clip_norm: float | None = None, generator=None,
                      time_major: bool = False) -> float:
        """One update on x (B, T, D) (time-major with `time_major=True`): forward, loss + rule
        losses, backward, optional clipping, step. Returns the loss as a float."""
        self.train()
        outputs = self(x, tgt, lengths, generator, time_major=time_major)
        loss = self.loss(x, outputs, tgt, kl_weight, time_major=time_major) + self.rule_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), clip_norm)
        optimizer.step()
        return float(loss.detach())

    # the trainer's interface (batch-first padded batches)
    def _split_targets(self, x):
        """The trainer's batches carry [x, tgt] side by side when fitted with targets."""
        seq = x.transpose(0, 1)
        D = self.config.input_dim
        if seq.shape[-1] == D:
            return seq, None
        return seq[..., :D], seq[..., D:]

    def training_loss(self, x, lengths, kl_weight, generator=None) -> torch.Tensor:
        seq, tgt = self._split_targets(x)
        outputs = self._forward(seq, tgt, lengths, generator)
        return self._loss(seq, outputs, tgt, kl_weight) + self.rule_loss()

    def validation_loss(self, x, lengths, generator=None) -> torch.Tensor:
        seq, tgt = self._split_targets(x)
        return self._loss(seq, self._forward(seq, tgt, lengths, generator), tgt, 1.0)

    # ------------------------------------------------------------------ inference

    def _filtered_states(self, mu: torch.Tensor):
        """Run the RNN-HMM over a latent path (T, B, Z): the recurrent state after the last
        step and the filtered state distribution p(s_T | z_1..T) (B, S)."""
        markov = self.rnn(mu.transpose(0, 1))
        lengths = torch.full((mu.shape[1],), mu.shape[0], device=mu.device)
        alpha, _ = hmm_inference.forward(markov.start, markov.transitions,
                                         markov.emissions, lengths)
        filtered = torch.softmax(alpha[:, -1], -1)
        state, _ = self.rnn.rnn(mu.transpose(0, 1))
        return state[:, -1], filtered

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, time_major: bool = False) -> torch.Tensor:
        """One-step lookahead: x (B, D) or a context (B, T, D) -> the predicted next x (B, D).

        The RNN-HMM's expected next latent (states propagated one step, each state's mixture
        mean) replaces the current latent per dimension in proportion to pred_weights."""
        x = self._check_input(x, time_major=time_major)
        x = self._time_major(x, time_major)
        seq = x.unsqueeze(0) if x.dim() == 2 else x
        mu, _ = self.encoder(seq)
        last_state, filtered = self._filtered_states(mu)
        transitions = torch.softmax(self.rnn.to_transitions(last_state).view(
            -1, self.config.num_states, self.config.num_states), -1)
        next_state = torch.einsum("bi,bij->bj", filtered, transitions)  # (B, S)
        mixture = self.rnn.mixture_at(last_state)  # (B, S, M, Z)
        per_state = (mixture.log_weights.exp().unsqueeze(-1) * mixture.means).sum(-2)
        expected = torch.einsum("bs,bsz->bz", next_state, per_state)
        weight = self.pred_weights.clamp(0, 1)
        return self.decoder(weight * expected + (1 - weight) * mu[-1])

    def recognize(self, x: torch.Tensor, tgt_z: torch.Tensor, *,
                  time_major: bool = False) -> torch.Tensor:
        """Cross-attend the latents of x to a target and decode: x (B, D) or (B, T, D);
        tgt_z a target latent, (B, Z) or a path (B, T', Z), or a target observation with D
        features in place of Z (encoded first). Returns a reconstruction shaped like x,
        pulled toward the target per recog_weights (differentiable, so recognition can be
        trained toward targets). `time_major=True`: x and a target path are (T, B, .)."""
        x = self._check_input(x, time_major=time_major)
        if not isinstance(tgt_z, torch.Tensor):
            raise TypeError(f"tgt_z must be a tensor, got {type(tgt_z).__name__}")
        x, tgt_z = self._time_major(x, time_major), self._time_major(tgt_z, time_major)
        seq = x.unsqueeze(0) if x.dim() == 2 else x
        mu, _ = self.encoder(seq)  # (T, B, Z)
        target = tgt_z.to(mu.dtype)
        if target.shape[-1] == self.config.input_dim != self.config.z_dim:
            target = self.encoder(target)[0]
        if target.shape[-1] != self.config.z_dim:
            raise ValueError(f"tgt_z must end in z_dim={self.config.z_dim} or "
                             f"input_dim={self.config.input_dim}, got shape "
                             f"{tuple(tgt_z.shape)}")
        target = target.reshape(-1, mu.shape[1], self.config.z_dim)  # (T', B, Z)
        attended, _ = self.recog_attention(mu.transpose(0, 1), target.transpose(0, 1),
                                           target.transpose(0, 1))
        z = mu + self.recog_weights * attended.transpose(0, 1)
        out = self.decoder(z)
        return out[0] if x.dim() == 2 else self._time_major(out, time_major)

    @torch.no_grad()
    def generate(self, num_steps: int, batch_size: int = 1, generator=None, *,
                 mean_only: bool = False, time_major: bool = False) -> torch.Tensor:
        """Sample num_steps observations for batch_size sequences from the model's generative
        distribution: a start state from the HMM, then per step a component of the state's
        mixture, a latent (its noise scaled by gen_weights), an observation
        x_t ~ N(decoder(z_t), exp(recon_logvar)) (the observation noise `fit` learned;
        `mean_only=True` returns decoder(z_t) instead), and the next state from the
        transitions. Returns (batch_size, num_steps, D) ((num_steps, batch_size, D) with
        `time_major=True`)."""
        check_positive_int(num_steps, name="num_steps")
        check_positive_int(batch_size, name="batch_size")
        p = self.pred_weights
        h = self.rnn.initial.expand(batch_size, -1)
        hidden = None
        state = torch.multinomial(torch.softmax(self.rnn.to_start(self.rnn.initial), -1)
                                  .expand(batch_size, -1), 1, generator=generator)[:, 0]
        rows = torch.arange(batch_size, device=p.device)
        out = []
        for _ in range(num_steps):
            mixture = self.rnn.mixture_at(h)  # (B, S, M, Z)
            log_w = mixture.log_weights[rows, state]  # (B, M)
            component = torch.multinomial(log_w.exp(), 1, generator=generator)[:, 0]
            mean = mixture.means[rows, state, component]
            std = torch.exp(0.5 * mixture.logvar[rows, state, component])
            eps = torch.randn(mean.shape, generator=generator, device=p.device, dtype=p.dtype)
            z = mean + self.gen_weights * std * eps
            x = self.decoder(z)
            if not mean_only:
                noise = torch.randn(x.shape, generator=generator, device=p.device, dtype=p.dtype)
                x = x + torch.exp(0.5 * self.noise_logvar()) * noise
            out.append(x)
            h, hidden = self.rnn.step(z, hidden)
            transitions = torch.softmax(self.rnn.to_transitions(h).view(
                batch_size, self.config.num_states, self.config.num_states), -1)
            state = torch.multinomial(transitions[rows, state], 1, generator=generator)[:, 0]
        return torch.stack(out, 0 if time_major else 1)

    # ------------------------------------------------------------------ regression / drafting

    def _require_vocab(self) -> None:
        if self.config.vocab_size is None:
            raise ValueError("regression needs a token vocabulary: this model was built with "
                             "vocab_size=None; build it with vocab_size=... (default 256)")

    def _plan(self, context_sequence: torch.Tensor, time_major: bool) -> torch.Tensor:
        """The latent plan (B, P, Z): encoder means, refined block by block, each block of
        steps by its own TinyDiffusion denoiser."""
        context_sequence = self._check_input(context_sequence, "context_sequence", time_major)
        context = self._time_major(context_sequence, time_major)
        seq = context.unsqueeze(0) if context.dim() == 2 else context
        plan = self.encoder(seq)[0].transpose(0, 1)  # (B, P, Z)
        blocks = plan.tensor_split(min(self.config.n_blocks, plan.shape[1]), dim=1)
        return torch.cat([self.diffusion[i](block) for i, block in enumerate(blocks)], 1)

    def _decode_tokens(self, tokens_in: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for input tokens (B, L) (start token first), the
        plan infused into every step (its reg-weighted mean, projected)."""
        infusion = self.plan_to_hidden((plan * self.reg_weights).mean(1))  # (B, H)
        hidden, _ = self.auto_decoder(self.token_embedding(tokens_in) + infusion.unsqueeze(1))
        return self.to_vocab(hidden)

    def _sample_drafts(self, plan: torch.Tensor, n_drafts: int, generator=None):
        """n_drafts token sequences per batch row by top-p sampling: (B, n, L)."""
        B, L, V = plan.shape[0], self.config.draft_len, self.config.vocab_size
        rep = plan.repeat_interleave(n_drafts, 0)
        infusion = self.plan_to_hidden((rep * self.reg_weights).mean(1)).unsqueeze(1)
        token = torch.full((B * n_drafts, 1), V, device=plan.device, dtype=torch.long)
        hidden, drafts = None, []
        for _ in range(L):
            out, hidden = self.auto_decoder(self.token_embedding(token) + infusion, hidden)
            token = top_p_sample(self.to_vocab(out[:, -1]), self.config.top_p,
                                 generator)[:, None]
            drafts.append(token)
        return torch.cat(drafts, 1).view(B, n_drafts, L)

    def regression(self, context_sequence: torch.Tensor, generator=None, *,
                   time_major: bool = False):
        """CoRe²-style drafting from a context (B, T, D) (or one step (B, D); (T, B, D) with
        `time_major=True`).

        Returns (logits (B, L, V) of the best draft, refined under teacher forcing;
        entropy_penalty, a scalar: the mean entropy of those logits' distributions)."""
        self._require_vocab()
        plan = self._plan(context_sequence, time_major)
        with torch.no_grad():
            drafts = self._sample_drafts(plan, self.config.n_drafts, generator)  # (B, n, L)
            B, n, L = drafts.shape
            _, nll = self.scorer(drafts.reshape(B * n, L), plan.repeat_interleave(n, 0))
            best = drafts[torch.arange(B), nll.view(B, n).argmin(1)]  # (B, L)
        start = torch.full((B, 1), self.config.vocab_size, device=best.device,
                           dtype=torch.long)
        logits = self._decode_tokens(torch.cat([start, best[:, :-1]], 1), plan)
        return logits, self._entropy(logits)

    def regression_loss(self, context_sequence: torch.Tensor, target_tokens: torch.Tensor,
                        entropy_weight: float = 0.01, *,
                        time_major: bool = False) -> torch.Tensor:
        """Teacher-forced cross-entropy of target_tokens (B, L) given the plan of the context
        (laid out as for `regression`), plus the DraftScorer's NLL of the targets (so the
        scorer learns to rank drafts) and entropy_weight times the entropy penalty. A
        scalar."""
        self._require_vocab()
        if not isinstance(target_tokens, torch.Tensor):
            raise TypeError(f"target_tokens must be a (B, L) int64 tensor, got "
                            f"{type(target_tokens).__name__}")
        if target_tokens.dim() != 2 or target_tokens.dtype != torch.long:
            raise ValueError(f"target_tokens must be (B, L) int64, got {tuple(target_tokens.shape)}"
                             f" {target_tokens.dtype}")
        if bool((target_tokens < 0).any() | (target_tokens >= self.config.vocab_size).any()):
            raise ValueError(f"target_tokens must lie in [0, {self.config.vocab_size})")
        plan = self._plan(context_sequence, time_major)
        B = target_tokens.shape[0]
        start = torch.full((B, 1), self.config.vocab_size, device=target_tokens.device,
                           dtype=torch.long)
        logits = self._decode_tokens(torch.cat([start, target_tokens[:, :-1]], 1), plan)
        ce = F.cross_entropy(logits.transpose(1, 2), target_tokens)
        _, scorer_nll = self.scorer(target_tokens, plan)
        return ce + scorer_nll.mean() / target_tokens.shape[1] + entropy_weight * self._entropy(
            logits)

    @staticmethod
    def _entropy(logits: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, -1)
        return -(log_p.exp() * log_p).sum(-1).mean()

    # ------------------------------------------------------------------ scikit-learn-style verbs

    def _batch(self, X, lengths) -> SequenceBatch:
        param = self.pred_weights
        return as_sequence_batch(X, lengths, n_features=self.config.input_dim,
                                 dtype=param.dtype, device=param.device,
                                 owner=f"this {type(self).__name__}")

    # fit: SequenceFit's, the shared engine with the objective's loss and the rules; after
    # training with the "seed" objective, `after_fit` sets the observation noise to its
    # maximum-likelihood value so that `log_likelihoods` scores a proper density. With tgt
    # (B, T, output_dim), one target per input step, the transformer is trained toward it
    # too (teacher forced, MSE).

    def training_batch(self, X, lengths=None, tgt=None) -> SequenceBatch:
        """The training sequences, checked, with their targets alongside when `tgt` is given
        (frames (N, D + O); `training_loss` splits them again)."""
        batch = self._batch(X, lengths)
        return batch if tgt is None else self._with_targets(batch, tgt)

    def after_fit(self, batch: SequenceBatch) -> None:
        """After training with the "seed" objective (MSE, which has no noise scale): the
        observation noise from the training sequences (without their targets), see
        `_calibrate_noise`. The "elbo" objective learned it."""
        if self.config.objective == "seed":
            self._calibrate_noise(SequenceBatch(batch.X[:, :self.config.input_dim],
                                                batch.lengths))

    def _with_targets(self, batch: SequenceBatch, tgt) -> SequenceBatch:
        """The frames of X with their targets alongside, (N, D + O)."""
        param = self.pred_weights
        targets = as_sequence_batch(tgt, batch.lengths.cpu().numpy()
                                    if np.ndim(tgt) == 2 else None,
                                    n_features=self.config.output_dim, dtype=param.dtype,
                                    device=param.device, owner="tgt (output_dim)")
        if not torch.equal(targets.lengths, batch.lengths):
            raise ValueError(f"tgt must have one target per input step: its lengths "
                             f"{targets.lengths.tolist()} differ from X's "
                             f"{batch.lengths.tolist()}")
        return SequenceBatch(torch.cat([batch.X, targets.X], 1), batch.lengths)

    @torch.no_grad()
    def _calibrate_noise(self, batch: SequenceBatch) -> None:
        """recon_logvar <- log of the mean squared reconstruction error per feature (at the
        posterior means), the maximum-likelihood Gaussian noise for the trained decoder,
        floored at min_variance."""
        x = padded(batch).transpose(0, 1)
        mask = hmm_inference.valid_mask(batch.lengths, x.shape[0]).T.unsqueeze(-1)
        residual = (self.decoder(self.encoder(x)[0]) - x) ** 2 * mask
        variance = residual.sum((0, 1)) / mask.sum()
        self.recon_logvar.copy_(variance.clamp_min(self.config.min_variance).log())

    def log_likelihoods(self, X, lengths=None, *, n_samples: int = 64, random_state=0,
                        batch_size: int = 64) -> np.ndarray:
        """Importance-weighted lower bound on log p(x) per sequence (B,), nats, NumPy, for
        the generative model p(z) = the RNN-HMM over latent paths, p(x_t | z_t) =
        N(decoder(z_t), exp(recon_logvar)), with the encoder as proposal."""
        def log_weights(x, lens, k, generator):
            x = x.transpose(0, 1)  # (T, b, D), the seed's layout
            T, B, _ = x.shape
            xs = x.repeat(1, k, 1)  # (T, K*b, D), sample-major along the batch axis
            mu, logvar = self.encoder(xs)
            z = self.reparameterize(mu, logvar, generator)
            mask = hmm_inference.valid_mask(lens.repeat(k), T).T.to(x.dtype)
            log_px = (gaussian_log_prob(xs, self.decoder(z), self.noise_logvar())
                      * mask).sum(0)
            log_q = (gaussian_log_prob(z, mu, logvar) * mask).sum(0)
            markov = self.rnn(z.transpose(0, 1))
            _, log_pz = hmm_inference.forward(markov.start, markov.transitions,
                                              markov.emissions, lens.repeat(k))
            return (log_px + log_pz - log_q).view(k, B)

        self.eval()
        return importance_weighted_bound(
            log_weights, self._batch(X, lengths), n_samples=n_samples,
            random_state=random_state, batch_size=batch_size).cpu().numpy()

    def score(self, X, lengths=None, **kwargs) -> float:
        """Sum over sequences of the importance-weighted bound (HiddenMarkov's convention)."""
        return float(self.log_likelihoods(X, lengths, **kwargs).sum())
