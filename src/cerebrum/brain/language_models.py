"""The language-model families: "gpt" (the baseline) so far.

Their data is a corpus (a `Corpus`, paths, or None for the default corpus), their fit runs
the shared training engine, `score` is bits per byte on texts (lower is better), and
`Cerebrum.generate(model_id, prompt)` continues a prompt. They have no per-sequence
log-likelihood comparable with the classical families, so `classify` refuses them.
"""

from __future__ import annotations

from cerebrum.brain.registry import Family, register
from cerebrum.models.language_model import GPTLanguageModel, GPTLMConfig


def _no_log_likelihoods(model, X, **kwargs):
    raise TypeError(f"{type(model).__name__} reports bits per byte: use score(model_id, texts)")


def _build(config: GPTLMConfig, device=None):
    model = GPTLanguageModel(config)
    return model.to(device) if device is not None else model


GPT = register(Family(
    name="gpt",
    model_class=GPTLanguageModel,
    config_class=GPTLMConfig,
    build=_build,
    config_of=lambda model: model.config,
    fit=GPTLanguageModel.fit,
    sequence_log_likelihoods=None,  # bits per byte of text: nothing to classify with
    log_likelihoods=_no_log_likelihoods,
    infer_config=lambda data, fields: dict(fields),
    summary_attributes=("tokenizer_state_", "history_"),
    feature_field="vocab_size",
    description="decoder-only Transformer language model (bits per byte)",
))
