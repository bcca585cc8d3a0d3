"""VariationalRecurrentMarkovGaussianTransformer (VRMGT, seed 001).

A sequence model of y_1..y_T (each of O = output_dim features), optionally conditioned on a
given sequence x_1..x_T (each of D = input_dim features). Two modes, chosen per call:

    density model p(x)       (no targets; O == D): y = x, and the context reads x_{<t}
    conditional p(y | x)     (targets y = tgt given; any O): the context reads x_{<=t}
                             (x is given, so x_t itself may inform y_t)

Seed 001's "tgt: optional target for conditional models" and "output_dim: same as input_dim
unless doing feature conversion" are the second mode; a model with output_dim != input_dim
is always conditional and needs `tgt` to fit and to score (and `x` to generate). With
O == D both modes share the same parameters, so a model fitted with targets should be scored
and sampled with them (nothing records the mode it was trained in).

Latent structure:
    c_t   attention context:                 a causal Transformer over the conditioning
                                             sequence (x_{<t}, or x_{<=t} when conditional)
    h_t   a GRU state over the past:         h_t = GRU([y_t, z_t], h_{t-1})
    z_t   a continuous latent per step:      prior p(z_t | h_{t-1}, c_t), posterior
                                             q(z_t | y_t, h_{t-1}, c_t) (the encoder)
    s_t   a discrete Markov state:           start pi, transitions A (learned)
and emissions p(y_t | s_t = j, z_t, h_{t-1}, c_t): a Gaussian mixture of M components per
state j, its parameters decoded from (z_t, h_{t-1}, c_t), variances clamped.

Given the z's, the states are summed out exactly by the forward algorithm (hmm_inference's,
the one HiddenMarkov uses), so the training objective is the evidence lower bound
    ELBO(y) = E_q[ log p(y | z) ] - sum_t KL(q(z_t | ...) || p(z_t | ...)),
one sample of z per sequence, KL weighted by the annealing schedule. `log_likelihoods`
returns the importance-weighted bound (Burda et al., 2016) with K samples,
    log (1/K) sum_k p(y, z^k) / q(z^k | y)  <=  log p(y)    (log p(y | x) when conditional),
which rises toward log p(y) as K grows: a lower bound on the log-likelihood in nats per
sequence, comparable with HiddenMarkov's exact one in `Cerebrum.classify`. `forward` also
returns a reconstruction (the posterior mean of y, see there), and `generate` samples the
generative model ancestrally (states, then z from the prior, then y with its noise).

Layout (every public verb): batch-first (B, T, D); a 2-D (T, D) tensor or array is ONE
sequence (HiddenMarkov's convention); seed 000's time-major (T, B, D) only with
`time_major=True`. Targets follow the same layout as the inputs they go with.

Shapes: B sequences, T steps, D = input_dim, O = output_dim, Z = z_dim, H = rnn_hidden,
C = trans_d_model, S = num_states, M = n_mix, K importance samples.
"""

from __future__ import annotations

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
    is_one_array,
    normalise_positive_ints,
    swap_batch_and_time,
)
from cerebrum.nn.coders import (
    LOGVAR_RANGE,
    MixtureDecoder,
    MixtureParams,
    gaussian_kl,
    gaussian_log_prob,
    mlp,
)
from cerebrum.nn.transformer import TimeSeriesTransformer, check_heads

#: The layout message every shape refusal ends with.
_LAYOUT = ("expected batch-first (B, T, {dim}) or one sequence (T, {dim}); for seed 000's "
           "time-major (T, B, {dim}) pass time_major=True")


@dataclass(frozen=True, kw_only=True)
class VRMGTConfig:
    """Architecture of a VRMGT (seed 001's argument names). `output_dim` (O) defaults to
    input_dim; O != input_dim makes the model a conditional one, p(y | x) with y of O
    features (seed 001's feature conversion), which needs targets to fit and to score."""

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
        object.__setattr__(self, "output_dim", check_positive_int(output_dim,
                                                                  name="output_dim"))
        if not self.min_variance > 0:
            raise ValueError(f"min_variance must be > 0, got {self.min_variance}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def _batch_first(value, time_major: bool):
    """A 3-D (T, B, F) array or tensor as (B, T, F) when time_major; anything else (a 2-D
    sequence or frames, a list of sequences) as it is: it has no batch axis to move."""
    return swap_batch_and_time(value) if time_major and is_one_array(value, 3) else value


class VariationalRecurrentMarkovGaussianTransformer(SequenceFit, nn.Module):
    """The VRMGT of seed 001 (see the module docstring). Build it from a `VRMGTConfig` or
    keywords: `VariationalRecurrentMarkovGaussianTransformer(input_dim=8, num_states=3)`."""

    def __init__(self, config: VRMGTConfig | None = None, **kwargs):
        super().__init__()
        config = VRMGTConfig(**kwargs) if config is None else config
        self.config = c = config
        D, O, Z, H, C = c.input_dim, c.output_dim, c.z_dim, c.rnn_hidden, c.trans_d_model
        self.context = TimeSeriesTransformer(D, C, c.trans_nhead, c.trans_layers, C,
                                             causal_encoder=True, decoder=False)
        # stands for x_0 in the density model's context (a conditional model reads x_t itself
        # and never uses it)
        self.first_input = nn.Parameter(torch.zeros(D))
        self.initial_state = nn.Parameter(torch.zeros(H))
        self.prior = mlp([H + C, c.hidden_dim, 2 * Z])
        self.encoder = mlp([O + H + C, c.hidden_dim, c.hidden_dim, 2 * Z])  # reads [y, h, c]
        self.emission = MixtureDecoder(Z + H + C, c.hidden_dim, O, c.n_mix,
                                       n_groups=c.num_states, min_variance=c.min_variance)
        self.cell = nn.GRUCell(O + Z, H)
        self.start_logits = nn.Parameter(torch.zeros(c.num_states))
        self.transition_logits = nn.Parameter(
            torch.eye(c.num_states) * 2.0)  # start "sticky": states persist
        self.history_: dict = {}
        self.to(getattr(torch, c.dtype))

    @property
    def conditional_only(self) -> bool:
        """True when output_dim != input_dim: the model is p(y | x) and needs targets."""
        return self.config.output_dim != self.config.input_dim

    # ------------------------------------------------------------------ input checks

    def _as_tensor(self, value, name: str) -> torch.Tensor:
        """A tensor in the model's dtype and on its device. Tensors are cast, not detached
        (gradients to the input still flow); arrays are converted (float64 into a float32
        model is rounded to float32, as all of the model's arithmetic is)."""
        param = self.start_logits
        if isinstance(value, torch.Tensor):
            if value.is_complex() or value.dtype == torch.bool:
                raise TypeError(f"{name} must hold real numbers, got a tensor of dtype "
                                f"{value.dtype}")
            return value.to(device=param.device, dtype=param.dtype)
        return to_numeric_tensor(value, name=name, dtype=param.dtype, device=param.device)

    def _layout(self, value, name: str, dim: int, time_major: bool):
        """value as (B, T, dim) and whether it was one 2-D sequence; a ValueError naming the
        expected layout for any other shape."""
        tensor = self._as_tensor(value, name)
        if tensor.dim() not in (2, 3) or tensor.shape[-1] != dim or 0 in tensor.shape:
            field = "input_dim" if name == "x" else "output_dim"
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}: "
                             + _LAYOUT.format(dim=f"{field}={dim}"))
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinity")
        if tensor.dim() == 3 and time_major:
            tensor = tensor.transpose(0, 1)
        one = tensor.dim() == 2
        return (tensor.unsqueeze(0) if one else tensor), one

    def _lengths(self, lengths, B: int, T: int, device, time_major: bool) -> torch.Tensor:
        """lengths (B,) int64 in [1, T] (None: all T); a count that fits the other reading of
        a 3-D x is pointed out."""
        if lengths is None:
            return torch.full((B,), T, device=device, dtype=torch.long)
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.dim() != 1 or len(lengths) != B:
            hint = ("; x looks time-major: pass time_major=True" if not time_major and
                    lengths.dim() == 1 and len(lengths) == T != B else "")
            raise ValueError(f"lengths must give one length per sequence ({B}), got shape "
                             f"{tuple(lengths.shape)}{hint}")
        if lengths.is_floating_point() or bool(((lengths < 1) | (lengths > T)).any()):
            raise ValueError(f"lengths must be integers in [1, {T}], got {lengths.tolist()}")
        return lengths.long()

    def _prepare(self, x, lengths, tgt, time_major: bool):
        """The public verbs' inputs checked: x (B, T, D), y (B, T, O) (x itself for the
        density model), lengths (B,), whether the model runs conditionally, and whether x was
        a single 2-D sequence."""
        x, one = self._layout(x, "x", self.config.input_dim, time_major)
        B, T, _ = x.shape
        if tgt is None:
            if self.conditional_only:
                raise ValueError(self._needs_targets("tgt", "the forward pass"))
            y = x
        else:
            y, _ = self._layout(tgt, "tgt", self.config.output_dim, time_major)
            if y.shape[:2] != x.shape[:2]:
                raise ValueError(f"tgt must have one target per input step, (B={B}, T={T}, "
                                 f"output_dim={self.config.output_dim}) batch-first, got "
                                 f"{tuple(y.shape)} (as batch-first)")
        return x, y, self._lengths(lengths, B, T, x.device, time_major), tgt is not None, one

    def _needs_targets(self, argument: str, verb: str) -> str:
        c = self.config
        return (f"{argument} is required for {verb}: this VRMGT has output_dim={c.output_dim} "
                f"!= input_dim={c.input_dim}, so it is a conditional model p(y | x) of "
                f"targets y ({c.output_dim} features) given inputs x ({c.input_dim})")

    # ------------------------------------------------------------------ the model

    def _emission_at(self, h: torch.Tensor) -> MixtureParams:
        """The per-state emission mixtures for decoder inputs h (..., Z + H + C), always laid
        out (..., S, M, ...) (MixtureDecoder drops the state axis when S = 1)."""
        mixture = self.emission(h)
        S, M, O = self.config.num_states, self.config.n_mix, self.config.output_dim
        lead = h.shape[:-1]
        return MixtureParams(mixture.log_weights.reshape(*lead, S, M),
                             mixture.means.reshape(*lead, S, M, O),
                             mixture.logvar.reshape(*lead, S, M, O))

    def _hmm(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.log_softmax(self.start_logits, 0),
                torch.log_softmax(self.transition_logits, 1))

    def _run(self, x, y, lengths, n_samples: int, generator, conditional: bool, *,
             reconstruct: bool):
        """The model on checked, padded x (B, T, D) and y (B, T, O); see `forward`.

        Only the encoder and the GRU depend on the sampled path, so only they run step by
        step; the prior and the emissions of all steps are computed afterwards in one call
        each (the per-step Python loop is what costs time at these sizes)."""
        B, T, _ = x.shape
        K, O, H = n_samples, self.config.output_dim, self.config.rnn_hidden
        valid = hmm_inference.valid_mask(lengths, T)  # (B, T)
        source = x if conditional else torch.cat(
            [self.first_input.expand(B, 1, -1), x[:, :-1]], 1)
        context = self.context(source, src_lengths=lengths)  # (B, T, C): x_{<=t} or x_{<t}
        ys = y.repeat(K, 1, 1)  # (K*B, T, O), sample-major
        context = context.repeat(K, 1, 1)
        # the encoder's first layer reads [y_t, h_{t-1}, c_t]: the y and c parts for all steps
        # at once, the h part in the loop
        first = self.encoder[0]
        w_y, w_h, w_c = first.weight.split([O, H, first.weight.shape[1] - O - H], 1)
        ahead = F.linear(ys, w_y, first.bias) + F.linear(context, w_c)  # (K*B, T, hidden)
        rest = self.encoder[1:]
        eps = torch.randn((T, K * B, self.config.z_dim), generator=generator,
                          device=x.device, dtype=x.dtype)
        h = self.initial_state.expand(K * B, -1)
        hs, zs, mus, logvars = [], [], [], []
        for t in range(T):
            mu_q, logvar_q = rest(ahead[:, t] + F.linear(h, w_h)).chunk(2, -1)
            logvar_q = logvar_q.clamp(*LOGVAR_RANGE)
            z = mu_q + torch.exp(0.5 * logvar_q) * eps[t]
            hs.append(h)  # h_{t-1}
            zs.append(z)
            mus.append(mu_q)
            logvars.append(logvar_q)
            h = self.cell(torch.cat([ys[:, t], z], -1), h)
        z, mu_q, logvar_q = (torch.stack(v, 1) for v in (zs, mus, logvars))  # (K*B, T, Z)
        past = torch.cat([torch.stack(hs, 1), context], -1)  # (K*B, T, H + C)
        mu_p, logvar_p = self.prior(past).chunk(2, -1)
        logvar_p = logvar_p.clamp(*LOGVAR_RANGE)
        mixture = self._emission_at(torch.cat([z, past], -1))  # (K*B, T, S, M, ...)
        emissions = mixture.log_prob(ys[..., None, :])  # (K*B, T, S)
        log_start, log_trans = self._hmm()
        if reconstruct:
            gamma, log_py = hmm_inference.posteriors(log_start, log_trans, emissions,
                                                     lengths.repeat(K))  # (K*B, T, S)
        else:
            _, log_py = hmm_inference.forward(log_start, log_trans, emissions,
                                              lengths.repeat(K))
        mask = valid.to(x.dtype).repeat(K, 1)
        kl = (gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) * mask).sum(-1)
        log_ratio = ((gaussian_log_prob(z, mu_p, logvar_p)
                      - gaussian_log_prob(z, mu_q, logvar_q)) * mask).sum(-1)
        out = {name: value.reshape(K, B, T, -1) for name, value in (
            ("z", z), ("mu_q", mu_q), ("logvar_q", logvar_q), ("mu_p", mu_p),
            ("logvar_p", logvar_p), ("emissions", emissions))}
        out.update(log_px_given_z=log_py.view(K, B), kl=kl.view(K, B),
                   log_pz_minus_log_qz=log_ratio.view(K, B))
        if reconstruct:
            # each state's mixture mean E[y_t | s_t, z_t, h_{t-1}, c_t] (K*B, T, S, O)
            state_means = (mixture.log_weights.exp().unsqueeze(-1) * mixture.means).sum(-2)
            out["state_means"] = state_means.reshape(K, B, T, -1, O)
            out["state_posteriors"] = gamma.reshape(K, B, T, -1)
            out["reconstruction"] = (gamma.unsqueeze(-1) * state_means).sum(-2).view(
                K, B, T, O).mean(0)
        return out

    def forward(self, x, lengths=None, *, n_samples: int = 1,
                generator: torch.Generator | None = None, tgt=None,
                time_major: bool = False) -> dict:
        """Run the model on x with `n_samples` posterior samples per sequence.

        x: (B, T, D) batch-first, padded past each length in `lengths` (B,) (None: all T);
        or (T, D), ONE sequence; or (T, B, D) with time_major=True. A tensor is cast to the
        model's dtype and device (gradients still flow to it); an array is converted.
        tgt: the targets y of a conditional model, laid out like x with O = output_dim
        features (see the module docstring); without it the model is the density of x.

        Returns a dict (sample-major, K = n_samples, batch-first whatever x's layout; a 2-D x
        gives B = 1):
            reconstruction          the observed sequence's posterior mean, shaped like the
                                    sequence modelled (x, or tgt when given), in x's layout:
                                    E[y_t | y_1..T, z] = sum_j p(s_t = j | y_1..T, z)
                                    E[y_t | s_t = j, z_t, h_{t-1}, c_t] (smoothed state
                                    posteriors times each state's mixture mean), averaged
                                    over the K posterior samples of z; zero past each end
            log_px_given_z (K, B)   log p(y | z), states summed out
            kl (K, B)               sum over valid steps of KL(q || p)
            log_pz_minus_log_qz (K, B)  sum over valid steps of log p(z) - log q(z)
            emissions (K, B, T, S)  log p(y_t | s_t = j, z_t, ...)
            state_posteriors (K, B, T, S), state_means (K, B, T, S, O)
            z (K, B, T, Z), mu_q / logvar_q / mu_p / logvar_p (K, B, T, Z)
        """
        n_samples = check_positive_int(n_samples, name="n_samples")
        xb, y, lengths, conditional, one = self._prepare(x, lengths, tgt, time_major)
        out = self._run(xb, y, lengths, n_samples, generator, conditional, reconstruct=True)
        recon = out["reconstruction"]
        out["reconstruction"] = (recon[0] if one else
                                 recon.transpose(0, 1) if time_major else recon)
        return out

    def elbo(self, x, lengths=None, *, kl_weight: float = 1.0, generator=None, tgt=None,
             time_major: bool = False) -> torch.Tensor:
        """The (annealed) evidence lower bound per sequence (B,), one posterior sample; x,
        lengths, tgt and time_major as in `forward`."""
        xb, y, lengths, conditional, _ = self._prepare(x, lengths, tgt, time_major)
        out = self._run(xb, y, lengths, 1, generator, conditional, reconstruct=False)
        return (out["log_px_given_z"] - kl_weight * out["kl"])[0]

    # the shared fit's interface: padded batch-first batches of frames [x, y] (see
    # `training_batch`), already checked

    def _split(self, frames: torch.Tensor):
        """Padded fit batches (B, T, D) or (B, T, D + O) -> x, y, conditional."""
        D, O = self.config.input_dim, self.config.output_dim
        width = frames.shape[-1]
        if width == D and not self.conditional_only:
            return frames, frames, False
        if width == D + O:
            return frames[..., :D], frames[..., D:], True
        raise ValueError(f"batches must have input_dim={D} features, or input_dim + "
                         f"output_dim={D + O} with targets, got {width}")

    def training_loss(self, x, lengths, kl_weight, generator=None) -> torch.Tensor:
        """Negative annealed ELBO per valid frame (the training objective); x (B, T, D), or
        (B, T, D + O) frames with their targets alongside (see `training_batch`)."""
        x, y, conditional = self._split(x)
        out = self._run(x, y, lengths, 1, generator, conditional, reconstruct=False)
        return -(out["log_px_given_z"] - kl_weight * out["kl"]).sum() / lengths.sum()

    def validation_loss(self, x, lengths, generator=None) -> torch.Tensor:
        return self.training_loss(x, lengths, 1.0, generator)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, num_steps: int, batch_size: int = 1, *,
                 generator: torch.Generator | None = None, x=None,
                 mean_only: bool = False) -> torch.Tensor:
        """Ancestral samples from the model's own generative distribution, (B, num_steps, O)
        batch-first (MultiMixtureTransformer.generate's layout).

        Per step: the Markov chain's state s_t (s_1 from the start probabilities, then the
        transitions), z_t from the prior p(z_t | h_{t-1}, c_t), y_t from state s_t's emission
        mixture (a component by its weight, then its Gaussian, variance included; with
        mean_only=True the state's mixture mean instead, states and z still sampled), and the
        GRU and the causal context fed the generated past.

        x: for a conditional model, the given sequence to generate targets for: (T, D), giving
        batch_size samples for it, or (B, T, D), one sample per row (batch_size 1 or B);
        T >= num_steps, its first num_steps steps are used. Required when output_dim !=
        input_dim; with it, a model with output_dim == input_dim samples p(y | x).
        """
        num_steps = check_positive_int(num_steps, name="num_steps")
        batch_size = check_positive_int(batch_size, name="batch_size")
        c = self.config
        param = self.start_logits
        if x is None:
            if self.conditional_only:
                raise ValueError(self._needs_targets("x", "generate"))
            B = batch_size
        else:
            x, one = self._layout(x, "x", c.input_dim, False)
            if x.shape[1] < num_steps:
                raise ValueError(f"x has {x.shape[1]} steps: generating num_steps={num_steps} "
                                 f"needs at least as many")
            if one:
                x = x.expand(batch_size, -1, -1)
            elif batch_size not in (1, x.shape[0]):
                raise ValueError(f"batch_size must be 1 or x's {x.shape[0]} rows (one sample "
                                 f"per row), got {batch_size}")
            x = x[:, :num_steps]
            B = x.shape[0]
            context = self.context(x)  # (B, T, C): the given x_{<=t} for every step at once
        rows = torch.arange(B, device=param.device)
        log_start, log_trans = self._hmm()
        state = torch.multinomial(log_start.exp().expand(B, -1), 1, generator=generator)[:, 0]
        h = self.initial_state.expand(B, -1)
        # the density model's context reads the generated past, x_0 standing first
        prefix = self.first_input.expand(B, 1, -1)
        out = []
        for t in range(num_steps):
            # causal attention: the last position of the prefix is c_t of the whole sequence
            c_t = context[:, t] if x is not None else self.context(prefix)[:, -1]
            past = torch.cat([h, c_t], -1)
            mu_p, logvar_p = self.prior(past).chunk(2, -1)
            z = mu_p + torch.exp(0.5 * logvar_p.clamp(*LOGVAR_RANGE)) * torch.randn(
                mu_p.shape, generator=generator, device=param.device, dtype=param.dtype)
            mixture = self._emission_at(torch.cat([z, past], -1))
            weights = mixture.log_weights[rows, state].exp()  # (B, M)
            means = mixture.means[rows, state]  # (B, M, O)
            if mean_only:
                y_t = (weights.unsqueeze(-1) * means).sum(-2)
            else:
                k = torch.multinomial(weights, 1, generator=generator)[:, 0]
                std = torch.exp(0.5 * mixture.logvar[rows, state, k])
                y_t = means[rows, k] + std * torch.randn(
                    std.shape, generator=generator, device=param.device, dtype=param.dtype)
            out.append(y_t)
            h = self.cell(torch.cat([y_t, z], -1), h)
            if x is None:
                prefix = torch.cat([prefix, y_t[:, None]], 1)
            state = torch.multinomial(log_trans.exp()[state], 1, generator=generator)[:, 0]
        return torch.stack(out, 1)

    # ------------------------------------------------------------------ verbs

    def _batch(self, X, lengths, tgt=None, time_major: bool = False) -> SequenceBatch:
        """Checked sequences as frames: x (N, D), or [x, y] (N, D + O) with targets (the
        fit's batches carry both; `_split` takes them apart)."""
        param = self.start_logits
        if not isinstance(X, (list, tuple)):
            shape = tuple(np.shape(X))
            if len(shape) not in (2, 3):
                raise ValueError(f"X has shape {shape}: "
                                 + _LAYOUT.format(dim=f"input_dim={self.config.input_dim}"))
            if (len(shape) == 3 and not time_major and lengths is not None
                    and np.ndim(lengths) == 1 and len(lengths) == shape[1] != shape[0]):
                raise ValueError(f"lengths has {shape[1]} entries for the {shape[0]} rows of "
                                 f"X {shape}: X looks time-major, pass time_major=True")
        X = _batch_first(X, time_major)
        batch = as_sequence_batch(X, lengths, n_features=self.config.input_dim,
                                  dtype=param.dtype, device=param.device,
                                  owner=f"this {type(self).__name__}")
        if tgt is None:
            return batch
        tgt = _batch_first(tgt, time_major)
        O = self.config.output_dim
        widths = {np.shape(part)[-1] if np.ndim(part) else None
                  for part in (tgt if isinstance(tgt, (list, tuple)) else [tgt])}
        if widths != {O}:  # the commonest mistake: targets of another width than built for
            shown = " and ".join(str(width) for width in sorted(widths, key=str))
            raise ValueError(f"tgt has {shown} features per step, but this VRMGT was built "
                             f"with output_dim={O}; a conversion model for targets of another "
                             f"width needs output_dim set to it")
        # the targets come in X's form: a padded (B, T, O) array shares X's lengths, a 2-D
        # (N, O) array of frames is cut as X was, a list carries its own
        tgt_lengths = (None if isinstance(tgt, (list, tuple)) else
                       lengths if is_one_array(tgt, 3) else batch.lengths.cpu().numpy())
        targets = as_sequence_batch(tgt, tgt_lengths, n_features=self.config.output_dim,
                                    dtype=param.dtype, device=param.device,
                                    owner="tgt (output_dim)")
        if not torch.equal(targets.lengths, batch.lengths):
            raise ValueError(f"tgt must have one target per input step: its lengths "
                             f"{targets.lengths.tolist()} differ from X's "
                             f"{batch.lengths.tolist()}")
        return SequenceBatch(torch.cat([batch.X, targets.X], 1), batch.lengths)

    def log_likelihoods(self, X, lengths=None, *, tgt=None, n_samples: int = 64,
                        random_state=0, batch_size: int = 64,
                        time_major: bool = False) -> np.ndarray:
        """Importance-weighted lower bound on log p(x) per sequence (B,), nats, NumPy; with
        targets `tgt` (X's form, output_dim features), on log p(tgt | X).

        X takes the sequence forms HiddenMarkov takes, batch-first (time_major=True for a
        (T, B, D) array). `n_samples` posterior samples per sequence (more: tighter,
        slower); the bound is random, reproducible through `random_state`.
        """
        if tgt is None and self.conditional_only:
            raise ValueError(self._needs_targets("tgt", "log_likelihoods / score"))

        def log_weights(frames, lens, k, generator):
            x, y, conditional = self._split(frames)
            out = self._run(x, y, lens, k, generator, conditional, reconstruct=False)
            return out["log_px_given_z"] + out["log_pz_minus_log_qz"]  # (K, b)

        self.eval()
        return importance_weighted_bound(
            log_weights, self._batch(X, lengths, tgt, time_major), n_samples=n_samples,
            random_state=random_state, batch_size=batch_size).cpu().numpy()

    def score(self, X, lengths=None, **kwargs) -> float:
        """Sum over sequences of the importance-weighted bound (HiddenMarkov's convention);
        keywords (tgt, n_samples, ...) as in `log_likelihoods`."""
        return float(self.log_likelihoods(X, lengths, **kwargs).sum())

    # fit: SequenceFit's, the shared engine (cerebrum.brain.hybrids.fit_sequences) maximising
    # the ELBO. With `tgt` (seed 001's target for conditional models: one target of
    # output_dim features per input step, in X's form) the model learns p(tgt | X); it is
    # required when output_dim != input_dim.

    def training_batch(self, X, lengths=None, tgt=None, *,
                       time_major: bool = False) -> SequenceBatch:
        """The training sequences, checked, as frames (N, D), or with their targets alongside
        (N, D + O) when `tgt` is given (`training_loss` splits them again). A model with
        output_dim != input_dim refuses to train without targets."""
        if tgt is None and self.conditional_only:
            raise ValueError(self._needs_targets("tgt", "fit"))
        return self._batch(X, lengths, tgt, time_major)

    def get_transmat(self) -> np.ndarray:
        """The Markov transition matrix (S, S) as NumPy."""
        return torch.softmax(self.transition_logits.detach(), 1).cpu().numpy()

    def get_startprob(self) -> np.ndarray:
        return torch.softmax(self.start_logits.detach(), 0).cpu().numpy()
