"""Reusable neural blocks for the hybrid and language-model families."""

from cerebrum.nn.coders import (
    Decoder,
    Encoder,
    MixtureDecoder,
    MixtureParams,
    gaussian_kl,
    gaussian_log_prob,
    reparameterize,
)
from cerebrum.nn.drafting import DraftScorer, TinyDiffusionBlock
from cerebrum.nn.recurrent import MarkovParams, RecurrentNetwork
from cerebrum.nn.transformer import TimeSeriesTransformer

__all__ = [
    "Decoder",
    "DraftScorer",
    "Encoder",
    "MarkovParams",
    "MixtureDecoder",
    "MixtureParams",
    "RecurrentNetwork",
    "TimeSeriesTransformer",
    "TinyDiffusionBlock",
    "gaussian_kl",
    "gaussian_log_prob",
    "reparameterize",
]
