"""The classical families: "gmm" (GaussianMixture) and "hmm" (HiddenMarkov).

Their configs hold the architecture (sizes, covariance type, dtype); fit settings are the
keyword arguments of the models' own `fit`, so the registry and the models cannot disagree.
Log-likelihoods are exact, in nats: a GaussianMixture scores a sequence as the sum over its
frames (the frames taken as independent), a HiddenMarkov by the forward algorithm.

`score` through the managers: samples (N, D) get a GaussianMixture's own score, the mean
log-likelihood per sample (scikit-learn's); sequences (a (B, T, D) array, a list of (T_i, D)
arrays, or (N, D) with `lengths`) get, from either family, the sum over sequences of each
sequence's log-likelihood (hmmlearn's convention), so one batch of sequences can be scored by
every model of a manager (seed 000's `mmman.score(seq_data_batch)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cerebrum._util.sequences import as_sequence_batch
from cerebrum._util.validation import COVARIANCE_TYPES, check_choice, check_positive_int
from cerebrum.brain.registry import Family, register
from cerebrum.mixtures import GaussianMixture, HiddenMarkov

DTYPES = ("float32", "float64")


def _check_common(config) -> None:
    # plain ints (not NumPy's) so that the config is JSON as it stands
    for name in ("n_components", "n_features"):
        object.__setattr__(config, name, check_positive_int(getattr(config, name), name=name))
    check_choice(config.covariance_type, COVARIANCE_TYPES, name="covariance_type")
    check_choice(config.dtype, DTYPES, name="dtype")


@dataclass(frozen=True, kw_only=True)
class GMMConfig:
    """A GaussianMixture: K components over D features."""

    n_components: int
    n_features: int
    covariance_type: str = "diag"
    dtype: str = "float32"

    def __post_init__(self):
        _check_common(self)


@dataclass(frozen=True, kw_only=True)
class HMMConfig:
    """A HiddenMarkov: S states, each a mixture of M Gaussians over D features."""

    n_components: int
    n_features: int
    n_mix: int = 1
    covariance_type: str = "diag"
    dtype: str = "float32"

    def __post_init__(self):
        _check_common(self)
        object.__setattr__(self, "n_mix", check_positive_int(self.n_mix, name="n_mix"))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def n_features_of(data) -> int:
    """D from an (N, D) / (B, T, D) array or tensor or a list of (T_i, D) arrays."""
    if hasattr(data, "shape") and len(data.shape) >= 2:
        return int(data.shape[-1])
    if isinstance(data, (list, tuple)) and data and hasattr(data[0], "shape"):
        if len(data[0].shape) >= 1:
            return int(data[0].shape[-1])
    raise ValueError(
        "cannot tell the number of features from data of type "
        f"{type(data).__name__}: pass n_features=..."
    )


def _infer(data, fields: dict) -> dict:
    fields = dict(fields)
    if "n_features" not in fields:
        fields["n_features"] = n_features_of(data)
    return fields


def _offsets(lengths) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def _gmm_sequence_log_likelihoods(model: GaussianMixture, X, lengths) -> np.ndarray:
    per_frame = model.score_samples(X)
    return np.add.reduceat(per_frame.astype(np.float64), _offsets(lengths))


def _hmm_sequence_log_likelihoods(model: HiddenMarkov, X, lengths) -> np.ndarray:
    return model.log_likelihoods(X, lengths=lengths)


def _is_sequences(X, lengths) -> bool:
    return lengths is not None or isinstance(X, (list, tuple)) or np.ndim(X) == 3


def _gmm_score(model: GaussianMixture, X, lengths=None, **kwargs) -> float:
    """Samples: the model's mean log-likelihood per sample. Sequences: the sum over them of
    their frames' log-densities (the total log-likelihood, HiddenMarkov's score)."""
    if not _is_sequences(X, lengths):
        return model.score(X, **kwargs)
    if kwargs:
        raise TypeError(f"scoring sequences takes only lengths, got {', '.join(sorted(kwargs))}")
    param = model.means
    batch = as_sequence_batch(X, lengths, n_features=model.n_features, dtype=param.dtype,
                              device=param.device, owner=f"this {type(model).__name__}")
    frames = batch.X.detach().cpu().numpy()
    return float(_gmm_sequence_log_likelihoods(model, frames, batch.lengths.cpu()).sum())


def _build_gmm(config: GMMConfig, device=None) -> GaussianMixture:
    return GaussianMixture(config.n_components, config.n_features, config.covariance_type,
                           dtype=getattr(torch, config.dtype), device=device)


def _build_hmm(config: HMMConfig, device=None) -> HiddenMarkov:
    return HiddenMarkov(config.n_components, config.n_features, config.n_mix,
                        config.covariance_type, dtype=getattr(torch, config.dtype),
                        device=device)


def _gmm_config_of(model: GaussianMixture) -> GMMConfig:
    return GMMConfig(n_components=model.n_components, n_features=model.n_features,
                     covariance_type=model.covariance_type,
                     dtype=_dtype_name(model.means.dtype))


def _hmm_config_of(model: HiddenMarkov) -> HMMConfig:
    return HMMConfig(n_components=model.n_components, n_features=model.n_features,
                     n_mix=model.n_mix, covariance_type=model.covariance_type,
                     dtype=_dtype_name(model.means.dtype))


GMM = register(Family(
    name="gmm",
    model_class=GaussianMixture,
    config_class=GMMConfig,
    build=_build_gmm,
    config_of=_gmm_config_of,
    fit=GaussianMixture.fit,
    sequence_log_likelihoods=_gmm_sequence_log_likelihoods,
    log_likelihoods=lambda model, X: model.score_samples(X),
    score=_gmm_score,
    id_scheme="integer",
    sample=lambda model, n, *, n_sequences=None, random_state=None: model.sample(
        n, random_state=random_state),
    infer_config=_infer,
    managed=True,
    summary_attributes=("converged_", "n_iter_", "lower_bound_", "lower_bounds_"),
    description="Gaussian mixture (exact log-likelihood; sequences as independent frames)",
))

HMM = register(Family(
    name="hmm",
    model_class=HiddenMarkov,
    config_class=HMMConfig,
    build=_build_hmm,
    config_of=_hmm_config_of,
    fit=HiddenMarkov.fit,
    sequence_log_likelihoods=_hmm_sequence_log_likelihoods,
    log_likelihoods=lambda model, X, lengths=None: model.log_likelihoods(X, lengths=lengths),
    takes_sequences=True,
    sample=lambda model, n, *, n_sequences=None, random_state=None: model.sample(
        n, n_sequences=n_sequences, random_state=random_state),
    infer_config=_infer,
    managed=True,
    summary_attributes=("converged_", "n_iter_", "lower_bound_", "lower_bounds_"),
    renamed_summary=(("history_", "lower_bounds_"),),
    description="hidden Markov model with Gaussian-mixture emissions (exact log-likelihood)",
))
