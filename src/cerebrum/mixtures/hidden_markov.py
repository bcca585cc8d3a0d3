"""HiddenMarkov: a hidden Markov model with Gaussian-mixture emissions, as an `nn.Module`.

Each of S hidden states emits from its own mixture of M Gaussians (hmmlearn's GMMHMM; M = 1 is
its GaussianHMM). Everything is batched over sequences of unequal length (padded and masked) and
parallel in time (`hmm_inference`), or, for CPU tensors without gradient, run by compiled loops
(`_hmm_compiled`); the Gaussian algebra and the emission statistics are GaussianMixture's
(`gaussian_math`, `_gaussian_em`), applied to the S * M components laid flat.

Shapes: B sequences, T steps, N frames in total, S states (`n_components`), M mixture components
per state (`n_mix`), D features, K = S * M.
Parameters (`nn.Parameter`s; `.to()`, `.double()` and optimisers work as usual):
    start_logits (S,)           log start probabilities up to a constant
    transition_logits (S, S)    log transition probabilities, row i = from state i
    weight_logits (S, M)        log mixture weights of each state up to a constant
    means (S, M, D)
    precision_cholesky_raw      precision Cholesky factors, diagonal in log space:
                                full (S, M, D, D), diag (S, M, D), tied (S, D, D) (one matrix per
                                state, shared by its M components, as in GMMHMM), spherical (S, M)
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from cerebrum._util.sequences import SequenceBatch, as_sequence_batch
from cerebrum._util.validation import (
    COVARIANCE_TYPES,
    check_choice,
    check_device,
    check_fit_settings,
    check_fitted,
    check_parameter_memory,
    check_positive_int,
    make_generator,
    warn_if_unfitted,
)
from cerebrum.exceptions import ConvergenceWarning, NotFittedError
from cerebrum.mixtures import _hmm_compiled as compiled
from cerebrum.mixtures import hmm_inference as inference
from cerebrum.mixtures._data import Chunk
from cerebrum.mixtures._fit_loop import (
    EMHooks,
    FitResult,
    deprecated_alias,
    fit_with_restarts,
    record_fit,
    run_adam,
)
from cerebrum.mixtures._gaussian_em import (
    LN2,
    LOG2E,
    GaussianParams,
    GaussianStats,
    block_rows,
    chunk_statistics,
    expanded_form_error,
    expanded_form_is_accurate,
    iter_blocks,
    needs_accurate_final_step,
    weighted_log_prob_t,
)
from cerebrum.mixtures._param_checks import (
    as_float64,
    check_covariances,
    check_probabilities,
    rounding_tolerance,
)
from cerebrum.mixtures.distributed import Communicator, communicator, is_empty_shard
from cerebrum.mixtures.gaussian import GaussianMixture, _project_variance_floor
from cerebrum.mixtures.gaussian_math import (
    colour_noise,
    covariance_from_precision_cholesky,
    log_gaussian_prob,
    precision_cholesky_from_raw,
    raw_from_precision_cholesky,
    safe_precision_cholesky,
)

FIT_METHODS = ("em", "gradient")
INIT_METHODS = ("kmeans++", "kmeans", "random", "random_from_data", "current")
PARAM_LETTERS = "stmcw"
#: The stored logit of a probability of 0: exp underflows to exactly 0 in float32 and float64,
#: sums of thousands of them stay finite, and the gradients of log_softmax stay finite (-inf
#: made every gradient NaN).
LOG_ZERO = -1e10
#: EM iterations of the GaussianMixture that seeds the emissions.
SEED_MIXTURE_ITERATIONS = 10
#: Mixture components of a state start at its seed Gaussian's mean plus this many standard
#: deviations of random offset (HTK's mixture splitting, with random directions).
SPLIT_SCALE = 0.5


class HMMParams(NamedTuple):
    """All parameters in fitting form: log start (S,), log transitions (S, S), and the emission
    mixture laid flat as K = S * M components (means in the data's centred coordinates)."""

    log_start: torch.Tensor
    log_trans: torch.Tensor
    emission: GaussianParams


def _frame_expectations(params: HMMParams, log_b, batch: SequenceBatch):
    """Forward-backward on state-major log_b (S, N): `Expectations` with per-frame posteriors
    (S, N). Compiled loops on CPU; the chunk-parallel PyTorch recursions otherwise, and for
    any batch in which the compiled pass met a step too small for its float64 scaling."""
    if compiled.usable(log_b, params.log_trans):
        gamma, counts, log_lik, ok = compiled.forward_backward(
            params.log_start, params.log_trans, log_b, batch.lengths
        )
        if bool(ok.all()):
            return inference.Expectations(gamma, counts, log_lik)
    result = inference.forward_backward(
        params.log_start, params.log_trans, batch.pad(log_b), batch.lengths
    )
    return result._replace(posteriors=batch.unpad(result.posteriors))


def _sequence_log_likelihoods(params: HMMParams, log_b, batch: SequenceBatch):
    """log p(x) (B,) from state-major log_b (S, N), by the same dispatch as above."""
    if compiled.usable(log_b, params.log_trans):
        log_lik, ok = compiled.log_likelihood(
            params.log_start, params.log_trans, log_b, batch.lengths
        )
        if bool(ok.all()):
            return log_lik
    return inference.log_likelihood(
        params.log_start, params.log_trans, batch.pad(log_b), batch.lengths
    )


def _viterbi_paths(params: HMMParams, log_b, batch: SequenceBatch):
    """Best state of every frame (N,) and each sequence's best-path log-probability (B,).
    Viterbi works in log space throughout, so the compiled kernel needs no fallback."""
    if compiled.usable(log_b, params.log_trans):
        return compiled.viterbi(params.log_start, params.log_trans, log_b, batch.lengths)
    paths, best = inference.viterbi(
        params.log_start, params.log_trans, batch.pad(log_b).permute(1, 2, 0), batch.lengths
    )
    return batch.unpad(paths), best


class HMMStats(NamedTuple):
    """Summed E-step statistics: the emission statistics of the K flat components, expected
    start-state counts (S,), expected transition counts (S, S) and the total log-likelihood."""

    emission: GaussianStats
    start_counts: torch.Tensor
    transitions: torch.Tensor
    log_likelihood: torch.Tensor

    def map_sums(self, fn) -> HMMStats:
        """A copy whose additive tensors went through `fn(list) -> list` (see GaussianStats)."""
        e = self.emission
        summed = fn([e.resp_sum, e.first, e.second, e.log_likelihood,
                     self.start_counts, self.transitions, self.log_likelihood])
        return HMMStats(GaussianStats(e.ref, *summed[:4]), *summed[4:])


class HiddenMarkov(nn.Module):
    """A hidden Markov model with S states, each emitting from a mixture of M Gaussians.

    Args:
        n_components: S, the number of hidden states (>= 1).
        n_features: D, the dimension of the observations (>= 1).
        n_mix: M, Gaussian components per state (>= 1; 1 gives hmmlearn's GaussianHMM).
        covariance_type: "full", "diag" (default), "tied" (one full covariance per state, shared
            by its M components, as in hmmlearn's GMMHMM) or "spherical".
        dtype, device: where the parameters live.

    Sequences may be given as a (B, T, D) array, a list of (T_i, D) arrays, or an (N, D) array
    with `lengths` (hmmlearn's convention; without `lengths` it is one sequence). Per-frame
    outputs (`predict`, `predict_proba`, `decode`'s states) are aligned with the frames in that
    order. After `fit`: `converged_`, `n_iter_`, `lower_bounds_` (total log-likelihood of the
    training data at each iteration, before its update, as hmmlearn's monitor) and
    `lower_bound_` (its last value); GaussianMixture uses the same names. `history_` is a
    deprecated alias of `lower_bounds_`.
    """

    history_ = deprecated_alias("history_", "lower_bounds_")

    def __init__(
        self,
        n_components: int,
        n_features: int,
        n_mix: int = 1,
        covariance_type: str = "diag",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.n_components = check_positive_int(n_components, name="n_components")
        self.n_features = check_positive_int(n_features, name="n_features")
        self.n_mix = check_positive_int(n_mix, name="n_mix")
        self.covariance_type = check_choice(
            covariance_type, COVARIANCE_TYPES, name="covariance_type"
        )
        S, M, D = self.n_components, self.n_mix, self.n_features
        device = check_device(device)  # names the device asked for and those present
        factory = {"dtype": dtype, "device": device}
        check_parameter_memory(
            [(S,), (S, S), (S, M), (S, M, D), self._raw_shape()],
            dtype=dtype or torch.get_default_dtype(), device=device,
            what=f"HiddenMarkov(n_components={S}, n_features={D}, n_mix={M}, "
            f"covariance_type={self.covariance_type!r})",
        )
        self.start_logits = nn.Parameter(torch.zeros(S, **factory))
        self.transition_logits = nn.Parameter(torch.zeros(S, S, **factory))
        self.weight_logits = nn.Parameter(torch.zeros(S, M, **factory))
        self.means = nn.Parameter(torch.randn(S, M, D, **factory))
        self.precision_cholesky_raw = nn.Parameter(torch.zeros(self._raw_shape(), **factory))
        self.register_buffer("fitted_flag", torch.tensor(False, device=device))
        self.converged_: bool | None = None
        self.n_iter_: int | None = None
        self.lower_bound_: float | None = None
        self.lower_bounds_: list[float] = []

    def _raw_shape(self) -> tuple[int, ...]:
        S, M, D = self.n_components, self.n_mix, self.n_features
        return {
            "full": (S, M, D, D), "diag": (S, M, D), "tied": (S, D, D), "spherical": (S, M)
        }[self.covariance_type]

    def extra_repr(self) -> str:
        return (
            f"n_components={self.n_components}, n_features={self.n_features}, "
            f"n_mix={self.n_mix}, covariance_type={self.covariance_type!r}"
        )

    @property
    def is_fitted(self) -> bool:
        """True once the model has been fitted or built from parameters."""
        return bool(self.fitted_flag)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_params(
        cls,
        startprob,
        transmat,
        weights,
        means,
        covariances,
        covariance_type: str = "diag",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> HiddenMarkov:
        """A fitted model from explicit parameters in hmmlearn GMMHMM's shapes.

        startprob (S,), transmat (S, S) with rows summing to 1, weights (S, M) with rows summing
        to 1, means (S, M, D), covariances (S, M, D, D) full, (S, M, D) diag, (S, D, D) tied,
        (S, M) spherical, each positive definite.
        """
        check_choice(covariance_type, COVARIANCE_TYPES, name="covariance_type")
        means64 = as_float64(means, "means")
        if means64.ndim != 3 or 0 in means64.shape:
            raise ValueError(
                "means must be 3-D (n_components, n_mix, n_features), got shape "
                f"{tuple(means64.shape)}"
            )
        S, M, D = means64.shape
        startprob64 = check_probabilities(startprob, (S,), "startprob")
        transmat64 = check_probabilities(transmat, (S, S), "transmat")
        weights64 = check_probabilities(weights, (S, M), "weights")
        expected = {"full": (S, M, D, D), "diag": (S, M, D), "tied": (S, D, D),
                    "spherical": (S, M)}[covariance_type]
        covariances64 = check_covariances(
            covariances, covariance_type, expected, rounding_tolerance(dtype)
        )
        model = cls(S, D, M, covariance_type, dtype=dtype, device=device)
        prec_chol, _ = safe_precision_cholesky(covariances64, covariance_type, floor=1e-300)
        model._set_params(
            startprob64.log(), transmat64.log(), weights64.log(), means64, prec_chol
        )
        return model

    def _set_params(self, log_start, log_trans, log_weights, means, prec_chol) -> None:
        """Copy parameters in (model shapes, data coordinates) and mark the model fitted."""
        with torch.no_grad():
            # A probability of exactly 0 (a transition EM never saw) is stored as LOG_ZERO, not
            # -inf: exp gives the same 0, but gradients through log_softmax stay finite.
            self.start_logits.copy_(log_start.clamp_min(LOG_ZERO))
            self.transition_logits.copy_(log_trans.clamp_min(LOG_ZERO))
            self.weight_logits.copy_(log_weights.clamp_min(LOG_ZERO))
            self.means.copy_(means)
            self.precision_cholesky_raw.copy_(
                raw_from_precision_cholesky(prec_chol, self.covariance_type)
            )
            self.fitted_flag.fill_(True)

    # ------------------------------------------------------------------ parameters, flat

    @property
    def _flat_type(self) -> str:
        """The covariance type of the K flat components (a state's tied matrix is repeated)."""
        return "full" if self.covariance_type == "tied" else self.covariance_type

    def _precision_cholesky(self) -> torch.Tensor:
        return precision_cholesky_from_raw(self.precision_cholesky_raw, self.covariance_type)

    def _flatten_precision(self, prec_chol: torch.Tensor) -> torch.Tensor:
        """Model-shaped U to the flat K components' U."""
        K, D = self.n_components * self.n_mix, self.n_features
        if self.covariance_type == "tied":
            return prec_chol.unsqueeze(1).expand(-1, self.n_mix, -1, -1).reshape(K, D, D)
        return prec_chol.reshape(K, *prec_chol.shape[2:])

    def _unflatten_precision(self, flat: torch.Tensor) -> torch.Tensor:
        S, M = self.n_components, self.n_mix
        if self.covariance_type == "tied":
            return flat.view(S, M, *flat.shape[1:])[:, 0]
        return flat.view(S, M, *flat.shape[1:])

    def _current_params(self, centre: torch.Tensor | None = None) -> HMMParams:
        """The module's parameters in fitting form (means relative to `centre`), detached."""
        with torch.no_grad():
            means = self.means.reshape(-1, self.n_features)
            emission = GaussianParams(
                torch.log_softmax(self.weight_logits, 1).reshape(-1),
                means if centre is None else means - centre,
                self._flatten_precision(self._precision_cholesky()),
            )
            return HMMParams(
                torch.log_softmax(self.start_logits, 0),
                torch.log_softmax(self.transition_logits, 1),
                emission,
            )

    def _store(self, params: HMMParams, centre: torch.Tensor) -> None:
        S, M, D = self.n_components, self.n_mix, self.n_features
        emission = params.emission
        self._set_params(
            params.log_start, params.log_trans, emission.log_weights.view(S, M),
            (emission.means + centre).view(S, M, D),
            self._unflatten_precision(emission.prec_chol),
        )

    # ------------------------------------------------------------------ emissions

    def _block_rows(self, expanded: bool) -> int:
        """Rows per block: sized by the residuals (K, N, D) off the expanded path."""
        kind = self._flat_type if expanded else "full"
        return block_rows(self.n_components * self.n_mix, self.n_features, kind)

    def _state_log_prob(self, X: torch.Tensor, emission: GaussianParams,
                        expanded: bool | None = None):
        """log b_j(x_n) (S, N) in nats, and the within-state responsibilities (K, N) (None when
        M = 1), row block by row block. `expanded` as in `_gaussian_em.weighted_log_prob_t`
        (default: decided from the parameters)."""
        S, M = self.n_components, self.n_mix
        chunk = Chunk(X, None)
        log_b = X.new_empty(S, X.shape[0])
        within = None if M == 1 else X.new_empty(S * M, X.shape[0])
        if expanded is None:
            expanded = expanded_form_is_accurate(emission, self._flat_type)
        rows = self._block_rows(expanded)
        start = 0
        for block in iter_blocks(chunk, rows):
            stop = start + block.n_samples
            log2_joint, _ = weighted_log_prob_t(
                block, emission, self._flat_type, LOG2E, expanded=expanded
            )
            if M == 1:
                log_b[:, start:stop] = log2_joint * LN2
            else:
                joint = log2_joint.view(S, M, -1)
                peak = joint.amax(1, keepdim=True)
                resp = (joint - peak).exp2()
                total = resp.sum(1, keepdim=True)
                log_b[:, start:stop] = (peak + total.log2()).squeeze(1) * LN2
                within[:, start:stop] = (resp / total).view(S * M, -1)
            start = stop
        return log_b, within

    # ------------------------------------------------------------------ input

    def _sequences(self, X, lengths) -> SequenceBatch:
        return as_sequence_batch(
            X, lengths, n_features=self.n_features, dtype=self.means.dtype,
            device=self.means.device, owner=f"this {type(self).__name__}",
        )

    def _emissions_of(self, X, lengths):
        check_fitted(self)
        batch = self._sequences(X, lengths)
        params = self._current_params()
        log_b, _ = self._state_log_prob(batch.X, params.emission)
        return batch, params, log_b

    # ------------------------------------------------------------------ differentiable core

    def log_prob(self, X, lengths=None) -> torch.Tensor:
        """log p(x) per sequence (B,), differentiable (log-space forward algorithm), so usable
        as a training loss. Checks shapes and values of X once."""
        batch = self._sequences(X, lengths)
        log_weights = torch.log_softmax(self.weight_logits, 1)  # (S, M)
        component = log_gaussian_prob(
            batch.X, self.means.reshape(-1, self.n_features),
            self._flatten_precision(self._precision_cholesky()), self._flat_type,
        )  # (N, K)
        joint = component.view(-1, self.n_components, self.n_mix) + log_weights
        log_b = batch.pad(torch.logsumexp(joint, -1).T)  # (S, B, T)
        _, log_lik = inference.forward(
            torch.log_softmax(self.start_logits, 0),
            torch.log_softmax(self.transition_logits, 1),
            log_b.permute(1, 2, 0), batch.lengths,
        )
        return log_lik

    def forward(self, X, lengths=None) -> torch.Tensor:
        """Same as `log_prob`: log-likelihood of each sequence (B,)."""
        return self.log_prob(X, lengths)

    # ------------------------------------------------------------------ inference verbs

    def log_likelihoods(self, X, lengths=None) -> np.ndarray:
        """log p(x) of each sequence, (B,) NumPy."""
        with torch.no_grad():
            batch, params, log_b = self._emissions_of(X, lengths)
            return _sequence_log_likelihoods(params, log_b, batch).cpu().numpy()

    def score(self, X, lengths=None) -> float:
        """Total log-likelihood: the sum over sequences of log p(x) (hmmlearn's `score`)."""
        return float(self.log_likelihoods(X, lengths).sum())

    def predict_proba(self, X, lengths=None) -> np.ndarray:
        """State posteriors p(z_t = j | x) for every frame, (N, S) NumPy (forward-backward)."""
        with torch.no_grad():
            batch, params, log_b = self._emissions_of(X, lengths)
            return _frame_expectations(params, log_b, batch).posteriors.T.cpu().numpy()

    def decode(self, X, lengths=None) -> tuple[float, np.ndarray]:
        """Viterbi: (log-probability of the best state paths summed over sequences, the states
        (N,) int64 NumPy aligned with the frames)."""
        with torch.no_grad():
            batch, params, log_b = self._emissions_of(X, lengths)
            states, best = _viterbi_paths(params, log_b, batch)
            return float(best.sum()), states.cpu().numpy()

    def predict(self, X, lengths=None) -> np.ndarray:
        """The most probable state path (Viterbi), (N,) int64 NumPy."""
        return self.decode(X, lengths)[1]

    def sample(
        self, n_steps: int, n_sequences: int = 1, random_state=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw sequences from the model.

        Returns (observations, states): (n_steps, D) and (n_steps,) for one sequence (hmmlearn's
        shapes), (n_sequences, n_steps, D) and (n_sequences, n_steps) for several.
        """
        check_fitted(self)
        n_steps = check_positive_int(n_steps, name="n_steps")
        n_sequences = check_positive_int(n_sequences, name="n_sequences")
        check_parameter_memory([(n_sequences, n_steps, self.n_features + 1)],
                               dtype=self.means.dtype, device=self.means.device,
                               what=f"n_steps={n_steps} x n_sequences={n_sequences}",
                               holding="the samples")
        generator = make_generator(random_state, self.means.device)
        factory = {"dtype": self.means.dtype, "device": self.means.device}
        with torch.no_grad():
            params = self._current_params()
            first = torch.multinomial(
                params.log_start.exp(), n_sequences, replacement=True, generator=generator
            )
            # x_t = f_t(x_{t-1}) with f_t(i) = the inverse CDF of row i at a uniform draw u_t
            uniform = torch.rand(n_sequences, n_steps - 1, 1, generator=generator, **factory)
            cumulative = params.log_trans.exp().cumsum(1)
            cumulative = cumulative / cumulative[:, -1:]
            maps = torch.searchsorted(
                cumulative.expand(n_sequences, n_steps - 1, -1, -1).contiguous(),
                uniform.unsqueeze(-1).expand(-1, -1, self.n_components, 1).contiguous(),
            ).squeeze(-1).clamp_max(self.n_components - 1)
            states = inference.compose_maps(maps, first)  # (B, T)
            flat_states = states.reshape(-1)
            weights = params.emission.log_weights.view(self.n_components, self.n_mix).exp()
            mix = torch.multinomial(weights[flat_states], 1, generator=generator).squeeze(1)
            component = flat_states * self.n_mix + mix
            noise = torch.randn(len(component), self.n_features, generator=generator, **factory)
            observations = params.emission.means[component] + colour_noise(
                noise, component, params.emission.prec_chol, self._flat_type
            )
        observations = observations.view(n_sequences, n_steps, -1).cpu().numpy()
        states = states.cpu().numpy()
        if n_sequences == 1:
            return observations[0], states[0]
        return observations, states

    @property
    def n_parameters(self) -> int:
        """Free parameters (start, transitions, weights, means, covariances), for BIC and AIC."""
        S, M, D = self.n_components, self.n_mix, self.n_features
        covariance = {
            "full": S * M * D * (D + 1) // 2,
            "diag": S * M * D,
            "tied": S * D * (D + 1) // 2,
            "spherical": S * M,
        }[self.covariance_type]
        return (S - 1) + S * (S - 1) + S * (M - 1) + S * M * D + covariance

    def bic(self, X, lengths=None) -> float:
        """Bayesian information criterion: -2 log L + p log N, N the number of frames."""
        n_frames = self._sequences(X, lengths).n_frames
        return -2.0 * self.score(X, lengths) + self.n_parameters * math.log(n_frames)

    def aic(self, X, lengths=None) -> float:
        """Akaike information criterion: -2 log L + 2 p."""
        return -2.0 * self.score(X, lengths) + 2.0 * self.n_parameters

    # ------------------------------------------------------------------ getters

    def get_startprob(self) -> np.ndarray:
        """Start probabilities (S,) as NumPy."""
        warn_if_unfitted(self)
        return torch.softmax(self.start_logits.detach(), 0).cpu().numpy()

    def get_transmat(self) -> np.ndarray:
        """Transition matrix (S, S) as NumPy; row i holds p(z_t = . | z_{t-1} = i)."""
        warn_if_unfitted(self)
        return torch.softmax(self.transition_logits.detach(), 1).cpu().numpy()

    def get_weights(self) -> np.ndarray:
        """Mixture weights of each state (S, M) as NumPy."""
        warn_if_unfitted(self)
        return torch.softmax(self.weight_logits.detach(), 1).cpu().numpy()

    def get_means(self) -> np.ndarray:
        """Component means (S, M, D) as NumPy."""
        warn_if_unfitted(self)
        return self.means.detach().cpu().numpy().copy()

    def get_variances(self) -> np.ndarray:
        """Covariances in GMMHMM's shapes: full (S, M, D, D), diag (S, M, D), tied (S, D, D),
        spherical (S, M)."""
        warn_if_unfitted(self)
        with torch.no_grad():
            covariances = covariance_from_precision_cholesky(
                self._precision_cholesky(), self.covariance_type
            )
        return covariances.cpu().numpy()

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        X,
        lengths=None,
        method: str = "em",
        max_iter: int = 100,
        tol: float = 1e-2,
        init: str = "kmeans++",
        n_init: int = 1,
        reg_covar: float = 1e-6,
        params: str = PARAM_LETTERS,
        init_params: str = PARAM_LETTERS,
        random_state=None,
        *,
        lr: float = 0.05,
        verbose: bool = False,
        distributed: bool | None = None,
    ) -> HiddenMarkov:
        """Fit the model to sequences and return self.

        Args:
            X, lengths: the sequences, in any of the forms the class docstring lists.
            method: "em" (Baum-Welch) or "gradient" (Adam on the forward-algorithm
                log-likelihood, full batch; `max_iter` epochs).
            max_iter: EM iterations (or gradient steps).
            tol: stop when the total log-likelihood of the data gains less than this
                (hmmlearn's convention: the sum over sequences, not a per-frame mean).
            init: how the emissions start: "kmeans++", "kmeans", "random" or
                "random_from_data" seed a GaussianMixture with S components (see
                docs/hidden-markov.md); "current" continues from the present parameters.
            n_init: restarts from different seeds; the best final log-likelihood is kept.
            reg_covar: added to covariance diagonals at every update; also the variance floor.
            params: which parameters EM updates: any of "s" start, "t" transitions, "m" means,
                "c" covariances, "w" mixture weights.
            init_params: which parameters the initialisation sets (others keep their values).
            random_state: None, an int seed or a torch.Generator.
            lr: Adam's learning rate for method="gradient".
            verbose: show a progress bar.
            distributed: fit the sequences of all processes of the torch.distributed process
                group together, each passing its own whole sequences (possibly none); every
                process ends with the same parameters (see docs/hidden-markov.md). None (the
                default) does so whenever a group of several processes is initialised; False
                fits this process's sequences alone. EM only.

        A failed fit raises and leaves the previous parameters untouched.
        """
        method, init, max_iter, n_init, tol, reg_covar, lr = check_fit_settings(
            method, init, max_iter, n_init, tol, reg_covar, lr,
            methods=FIT_METHODS, inits=INIT_METHODS,
        )
        params = _check_letters(params, "params")
        init_params = _check_letters(init_params, "init_params")

        comm = communicator(distributed)
        if comm is not None and method != "em":
            raise ValueError(f"a distributed fit supports method='em' only, got method={method!r}")
        # a rank of a distributed fit may hold no sequences: batch None, no frames
        batch = None if comm is not None and is_empty_shard(X) else self._sequences(X, lengths)
        frames = (batch.X if batch is not None else
                  torch.zeros(0, self.n_features, dtype=self.means.dtype, device=self.means.device))
        n_frames = len(frames) if comm is None else comm.sum_int(len(frames))
        if n_frames < self.n_components:
            everywhere = "" if comm is None else " (over all processes)"
            raise ValueError(
                f"X has {n_frames} frames{everywhere}, but n_components={self.n_components} "
                f"needs at least {self.n_components}"
            )
        if (init == "current" or not init_params) and not self.is_fitted:
            what = "init='current'" if init == "current" else "init_params=''"
            raise NotFittedError(
                f"{what} continues from the model's current parameters, but this "
                f"{type(self).__name__} has none yet (never fitted): pass init='kmeans++' "
                "(the default) or another start, or build it with from_params")
        if comm is None:
            centre = frames.mean(0)
        else:
            centre = comm.all_reduce_sum([frames.sum(0)])[0] / n_frames
        centred = Chunk(frames - centre, None)
        generator = make_generator(random_state, self.means.device)
        if comm is not None:  # every rank draws what rank 0 draws
            comm.synchronise(generator)
        hooks = _SequenceEM(self, batch, centred, centre, init, init_params, params, reg_covar,
                            n_frames, comm)
        gradient = None
        if method == "gradient":
            gradient = partial(self._run_gradient, batch, centred, steps=max_iter, tol=tol,
                               lr=lr, reg_covar=reg_covar, letters=params)
        best = fit_with_restarts(
            hooks, generator, n_runs=1 if init == "current" else n_init, max_iter=max_iter,
            tol=tol, gradient=gradient, reduce=None if comm is None else comm.reduce_stats,
            owner=type(self).__name__, verbose=verbose, description=f"HMM {method}",
            stacklevel=2,
        )
        self._store(best.params, centre)
        record_fit(self, best)
        return self

    # ------------------------------------------------------------------ initialisation

    def _initial_params(self, batch, centred, centre, init, init_params, generator, reg_covar,
                        comm: Communicator | None = None):
        """Starting parameters in fitting form: the current ones, with the letters of
        `init_params` replaced (unless init="current"). Distributed (`comm`), the seed mixture
        is fitted on all ranks' frames together and the label counts are summed."""
        current = self._current_params(centre)
        if init == "current" or not init_params:
            return current
        S, M = self.n_components, self.n_mix
        seed_type = "full" if self.covariance_type == "tied" else self.covariance_type
        seed = GaussianMixture(
            S, self.n_features, seed_type, dtype=self.means.dtype, device=self.means.device
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            seed.fit(
                centred.X, init=init, max_iter=SEED_MIXTURE_ITERATIONS,
                reg_covar=max(reg_covar, 1e-6), random_state=generator,
                distributed=comm is not None,
            )
        log_start, log_trans = current.log_start, current.log_trans
        if "s" in init_params or "t" in init_params:
            if batch is None:  # an empty shard counts nothing
                start_counts = centred.X.new_zeros(S)
                transition_counts = centred.X.new_zeros(S, S)
            else:
                start_counts, transition_counts = _label_counts(
                    seed.predict(centred.X), batch, S)
            if comm is not None:
                start_counts, transition_counts = comm.all_reduce_sum(
                    [start_counts, transition_counts])
            if "s" in init_params:
                log_start = (start_counts + 1).log() - (start_counts + 1).sum().log()
            if "t" in init_params:
                log_trans = torch.log_softmax((transition_counts + 1).log(), 1)
        emission = current.emission
        log_weights, means, prec_chol = emission
        if "w" in init_params:
            log_weights = torch.full_like(log_weights, -math.log(M))
        if "m" in init_params:
            seed_means = seed.means.detach().repeat_interleave(M, 0)  # (K, D)
            if M > 1:
                seed_prec = _seed_precision(seed).repeat_interleave(M, 0)
                offsets = torch.randn(
                    seed_means.shape, generator=generator, dtype=seed_means.dtype,
                    device=seed_means.device,
                )
                labels = torch.arange(len(seed_means), device=seed_means.device)
                spread = colour_noise(offsets, labels, seed_prec, seed_type)
                seed_means = seed_means + SPLIT_SCALE * spread
            means = seed_means
        if "c" in init_params:
            prec = _seed_precision(seed)
            prec_chol = prec.repeat_interleave(M, 0)
        return HMMParams(log_start, log_trans, GaussianParams(log_weights, means, prec_chol))

    # ------------------------------------------------------------------ EM

    def _expectations(self, batch: SequenceBatch, centred: Chunk, params: HMMParams,
                      expanded: bool):
        """One E step: emission statistics, start and transition counts, total log-likelihood.
        `expanded`: whether the diagonal types may use the expanded-square GEMM form."""
        S, M = self.n_components, self.n_mix
        log_b, within = self._state_log_prob(centred.X, params.emission, expanded)
        result = _frame_expectations(params, log_b, batch)
        gamma = result.posteriors  # (S, N)
        # Statistics about the current means (the diagonal types only where their raw moments
        # would cancel in the working precision; see _gaussian_em).
        reference = params.emission
        stats = None
        start = 0
        for block in iter_blocks(centred, self._block_rows(expanded)):
            stop = start + block.n_samples
            resp = gamma[:, start:stop]
            if within is not None:
                resp = (within[:, start:stop].view(S, M, -1) * resp.unsqueeze(1)).view(S * M, -1)
            part = chunk_statistics(
                block, self._flat_type, params=reference, resp=resp, expanded=expanded
            )
            stats = part if stats is None else stats + part
            start = stop
        start_counts = gamma[:, batch.first_frames].sum(1)
        return HMMStats(stats, start_counts, result.transitions, result.log_likelihood.sum())

    def _m_step(self, previous: HMMParams, stats: HMMStats, reg_covar, letters,
                n_frames) -> HMMParams:
        """New parameters from summed statistics, for the letters of `letters` (a state never
        left keeps its transition row)."""
        log_start, log_trans = previous.log_start, previous.log_trans
        start_counts, transitions = stats.start_counts, stats.transitions
        if "s" in letters:
            log_start = (start_counts / start_counts.sum()).log()
        if "t" in letters:
            row_sums = transitions.sum(1, keepdim=True)
            updated = (transitions / row_sums).log()
            log_trans = torch.where(row_sums > 0, updated, log_trans)  # unvisited: keep
        emission = _emission_m_step(
            previous.emission, stats.emission, self.n_components, self.n_mix, self.covariance_type,
            reg_covar, letters, n_frames,
        )
        return HMMParams(log_start, log_trans, emission)

    # ------------------------------------------------------------------ gradient

    def _run_gradient(self, batch, centred, start, progress, *, steps, tol, lr, reg_covar,
                      letters) -> FitResult:
        """Maximum likelihood by Adam on the log-space forward algorithm (seed 000's MLE),
        full batch, with the variance floor restored after every step."""
        S, M, D = self.n_components, self.n_mix, self.n_features
        kind = self.covariance_type
        floor = max(reg_covar, torch.finfo(self.means.dtype).eps)
        emission = start.emission

        def leaf(value, letter):
            return value.detach().clone().requires_grad_(letter in letters)

        start_logits = leaf(start.log_start, "s")
        trans_logits = leaf(start.log_trans, "t")
        weight_logits = leaf(emission.log_weights.view(S, M), "w")
        means = leaf(emission.means.view(S, M, D), "m")
        raw = leaf(raw_from_precision_cholesky(self._unflatten_precision(emission.prec_chol),
                                               kind), "c")
        trainable = [p for p in (start_logits, trans_logits, weight_logits, means, raw)
                     if p.requires_grad]
        if not trainable:
            raise ValueError("params selects nothing to train: give at least one of 'stmcw'")

        def current():
            return HMMParams(
                torch.log_softmax(start_logits, 0), torch.log_softmax(trans_logits, 1),
                GaussianParams(
                    torch.log_softmax(weight_logits, 1).reshape(-1), means.reshape(-1, D),
                    self._flatten_precision(precision_cholesky_from_raw(raw, kind)),
                ),
            )

        def terms():  # full batch: one step per epoch on the mean log-likelihood per frame
            log_lik = _log_likelihood_differentiable(
                current(), centred.X, batch, S, M, self._flat_type
            ).sum()
            yield -log_lik / batch.n_frames, log_lik

        def finish():
            final = current()
            return HMMParams(
                final.log_start.detach(), final.log_trans.detach(),
                GaussianParams(*(t.detach() for t in final.emission)),
            )

        project = partial(_project_variance_floor, raw, kind, floor) if "c" in letters else None
        return run_adam(trainable, terms, finish, lr=lr, max_steps=steps, tol=tol,
                        normaliser=1.0, project=project, unit="step", progress=progress)


class _SequenceEM(EMHooks[HMMParams, HMMStats]):
    """HiddenMarkov's EM hooks (Baum-Welch): forward-backward over the batch of sequences for
    the state posteriors, then GaussianMixture's emission statistics under them.

    As for GaussianMixture, the diagonal types iterate on the expanded-square form where it is
    accurate and take the M step that decides the returned parameters from residuals.
    """

    def __init__(self, model: HiddenMarkov, batch: SequenceBatch | None, centred: Chunk,
                 centre: torch.Tensor, init: str, init_params: str, letters: str,
                 reg_covar: float, n_frames: int, comm: Communicator | None = None):
        self.model, self.batch, self.centred, self.centre = model, batch, centred, centre
        self.init, self.init_params, self.letters = init, init_params, letters
        self.reg_covar, self.comm = reg_covar, comm
        self.n_frames = n_frames  # of all processes
        self.kind = model._flat_type

    def initialise(self, generator: torch.Generator) -> HMMParams:
        return self.model._initial_params(self.batch, self.centred, self.centre, self.init,
                                          self.init_params, generator, self.reg_covar,
                                          self.comm)

    def _expanded(self, params: HMMParams, final: bool) -> bool:
        if final and needs_accurate_final_step(params.emission, self.kind):
            return False
        return expanded_form_is_accurate(params.emission, self.kind)

    def statistics(self, params: HMMParams, *, final: bool) -> HMMStats:
        expanded = self._expanded(params, final)
        if self.batch is None:  # an empty shard: zeros of the shapes the other ranks sum
            return self._no_statistics(params, expanded)
        return self.model._expectations(self.batch, self.centred, params, expanded)

    def _no_statistics(self, params: HMMParams, expanded: bool) -> HMMStats:
        """Zero statistics about the reference point the other ranks use (it follows
        `expanded`), so that their sums mean the same on every rank."""
        X = self.centred.X
        K, S = len(params.emission.means), self.model.n_components
        emission = chunk_statistics(self.centred, self.kind, params=params.emission,
                                    resp=X.new_zeros(K, 0), expanded=expanded)
        return HMMStats(emission, X.new_zeros(S), X.new_zeros(S, S), X.new_zeros(()))

    def refines_final_step(self, params: HMMParams) -> bool:
        return (expanded_form_is_accurate(params.emission, self.kind)
                and needs_accurate_final_step(params.emission, self.kind))

    def log_likelihood(self, stats: HMMStats) -> float:
        return float(stats.log_likelihood)  # the total over sequences, as hmmlearn

    def m_step(self, params: HMMParams, stats: HMMStats) -> HMMParams:
        return self.model._m_step(params, stats, self.reg_covar, self.letters, self.n_frames)

    def decrease_slack(self, params: HMMParams, value: float, *, final: bool) -> float:
        """Rounding of the total, plus that of the expanded form summed over the frames when
        this iteration's E step used it."""
        slack = 1e3 * torch.finfo(self.model.means.dtype).eps * max(abs(value), 1.0)
        if self._expanded(params, final):
            slack += 10 * self.n_frames * expanded_form_error(params.emission, self.kind)
        return slack


# ---------------------------------------------------------------------------- helpers


def _log_likelihood_differentiable(params: HMMParams, X, batch, S, M, flat_type):
    component = log_gaussian_prob(X, params.emission.means, params.emission.prec_chol, flat_type)
    joint = (component + params.emission.log_weights).view(-1, S, M)
    log_b = batch.pad(torch.logsumexp(joint, -1).T)
    _, log_lik = inference.forward(
        params.log_start, params.log_trans, log_b.permute(1, 2, 0), batch.lengths
    )
    return log_lik


def _emission_m_step(previous: GaussianParams, stats: GaussianStats, n_states, n_mix,
                     covariance_type, reg_covar, letters, n_frames) -> GaussianParams:
    """Maximum-likelihood emission parameters from summed statistics, for the parameters named
    in `letters`. Components without mass keep their previous parameters (so EM never turns
    them into NaN), as do the mixture weights of a state that received no mass at all."""
    S, M = n_states, n_mix
    dtype = stats.resp_sum.dtype
    eps = torch.finfo(dtype).eps
    mass = stats.resp_sum + 10 * eps  # (K,)
    dead = stats.resp_sum < 10 * eps * n_frames
    log_weights, means, prec_chol = previous
    if "w" in letters:
        per_state = mass.view(S, M)
        weights = per_state / per_state.sum(1, keepdim=True)
        state_dead = dead.view(S, M).all(1, keepdim=True)
        log_weights = torch.where(state_dead, log_weights.view(S, M), weights.log()).reshape(-1)
    if "m" in letters:
        updated = stats.ref + stats.first / mass.unsqueeze(1)
        means = torch.where(dead.unsqueeze(1), means, updated)
    if "c" not in letters:
        return GaussianParams(log_weights, means, prec_chol)

    offset = means - stats.ref  # covariances are taken about the (possibly kept) means
    D = means.shape[1]
    if covariance_type in ("diag", "spherical"):
        second = stats.second - 2 * offset * stats.first + stats.resp_sum.unsqueeze(1) * offset**2
        variances = (second / mass.unsqueeze(1)).clamp_min(0) + reg_covar
        covariances = variances if covariance_type == "diag" else variances.mean(1)
    else:
        cross = offset.unsqueeze(2) * stats.first.unsqueeze(1)  # d f^T
        scatter = (stats.second - cross - cross.mT
                   + stats.resp_sum.view(-1, 1, 1) * offset.unsqueeze(2) * offset.unsqueeze(1))
        eye = torch.eye(D, dtype=dtype, device=means.device)
        if covariance_type == "full":
            covariances = scatter / mass.view(-1, 1, 1) + reg_covar * eye
        else:  # tied: one matrix per state, pooled over its components
            pooled = scatter.view(S, M, D, D).sum(1) / mass.view(S, M).sum(1).view(S, 1, 1)
            covariances = (pooled + reg_covar * eye).repeat_interleave(M, 0)
    flat_type = "full" if covariance_type == "tied" else covariance_type
    updated_prec, _ = safe_precision_cholesky(covariances, flat_type, max(reg_covar, eps))
    keep = dead if covariance_type != "tied" else dead.view(S, M).all(1).repeat_interleave(M)
    keep = keep.view(-1, *([1] * (updated_prec.ndim - 1)))
    return GaussianParams(log_weights, means, torch.where(keep, prec_chol, updated_prec))


def _seed_precision(seed: GaussianMixture) -> torch.Tensor:
    """The seed mixture's precision factors, one per state (S, ...), detached."""
    with torch.no_grad():
        return seed._precision_cholesky().detach().clone()


def _label_counts(labels: np.ndarray, batch: SequenceBatch, n_states: int):
    """Start-state counts (S,) and transition counts (S, S) of hard labels along the sequences."""
    labels = torch.as_tensor(labels, device=batch.X.device)
    dtype = batch.X.dtype
    starts = torch.cumsum(batch.lengths, 0) - batch.lengths
    start_counts = torch.bincount(labels[starts], minlength=n_states).to(dtype)
    following = torch.ones(batch.n_frames, dtype=torch.bool, device=labels.device)
    following[starts] = False  # a transition into frame n needs n to continue its sequence
    current = labels[1:][following[1:]]
    before = labels[:-1][following[1:]]
    transitions = torch.bincount(before * n_states + current, minlength=n_states * n_states)
    return start_counts, transitions.view(n_states, n_states).to(dtype)


def _check_letters(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string of letters from 'stmcw', got {value!r}")
    unknown = sorted(set(value) - set(PARAM_LETTERS))
    if unknown:
        raise ValueError(
            f"{name} may only contain the letters 's', 't', 'm', 'c', 'w'; got {unknown}"
        )
    return value
