"""The deep hybrid families: "mmm" (seed 000's MultiMixtureTransformer) and "vrmgt" (seed
001's VariationalRecurrentMarkovGaussianTransformer).

Their configs are the models' own config dataclasses; fit settings are the models' `fit`
keywords (epochs, lr, batch_size, clip_norm, weight_decay, kl_anneal_epochs,
validation_split, patience, random_state, verbose). Log-likelihoods are importance-weighted
lower bounds in nats per sequence (see the model's docstring).
"""

from __future__ import annotations

from cerebrum.brain.classical import n_features_of
from cerebrum.brain.registry import Family, register
from cerebrum.models.multi_mixture_transformer import MMTConfig, MultiMixtureTransformer
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig


def _infer_input_dim(data, fields: dict) -> dict:
    fields = dict(fields)
    if "input_dim" not in fields:
        fields["input_dim"] = n_features_of(data)
    return fields


def _hybrid_family(name, model_class, config_class, description, saved=("history_",)):
    def build(config, device=None):
        model = model_class(config)
        return model.to(device) if device is not None else model

    return register(Family(
        name=name,
        model_class=model_class,
        config_class=config_class,
        build=build,
        config_of=lambda model: model.config,
        fit=model_class.fit,
        sequence_log_likelihoods=lambda model, X, lengths: model.log_likelihoods(X, lengths),
        log_likelihoods=lambda model, X, lengths=None, **kw: model.log_likelihoods(
            X, lengths, **kw),
        infer_config=_infer_input_dim,
        summary_attributes=saved,
        feature_field="input_dim",
        description=description,
    ))


MMM = _hybrid_family(
    "mmm", MultiMixtureTransformer, MMTConfig,
    "multi-mixture transformer: VAE + RNN-HMM + Transformer (importance-weighted bound)",
    saved=("history_", "rules"))
VRMGT = _hybrid_family(
    "vrmgt", VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig,
    "variational recurrent Markov Gaussian transformer (importance-weighted bound)")
