"""The deep hybrid families: "vrmgt" (seed 001's VariationalRecurrentMarkovGaussianTransformer).

Their configs are the models' own config dataclasses; fit settings are the models' `fit`
keywords (epochs, lr, batch_size, clip_norm, weight_decay, kl_anneal_epochs,
validation_split, patience, random_state, verbose). Log-likelihoods are importance-weighted
lower bounds in nats per sequence (see the model's docstring).
"""

from __future__ import annotations

from cerebrum.brain.classical import n_features_of
from cerebrum.brain.registry import Family, register
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig


def _infer_input_dim(data, fields: dict) -> dict:
    fields = dict(fields)
    if "input_dim" not in fields:
        fields["input_dim"] = n_features_of(data)
    return fields


def _build_vrmgt(config: VRMGTConfig, device=None):
    model = VariationalRecurrentMarkovGaussianTransformer(config)
    return model.to(device) if device is not None else model


VRMGT = register(Family(
    name="vrmgt",
    model_class=VariationalRecurrentMarkovGaussianTransformer,
    config_class=VRMGTConfig,
    build=_build_vrmgt,
    config_of=lambda model: model.config,
    fit=VariationalRecurrentMarkovGaussianTransformer.fit,
    sequence_log_likelihoods=lambda model, X, lengths: model.log_likelihoods(X, lengths),
    log_likelihoods=lambda model, X, lengths=None, **kw: model.log_likelihoods(X, lengths,
                                                                               **kw),
    infer_config=_infer_input_dim,
    summary_attributes=("history_",),
    feature_field="input_dim",
    description="variational recurrent Markov Gaussian transformer (importance-weighted "
                "lower bound on the log-likelihood)",
))

__all__ = ["VRMGT"]
