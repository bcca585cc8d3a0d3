"""Classical probabilistic models: Gaussian mixtures and hidden Markov models."""

from cerebrum.mixtures.gaussian import GaussianMixture
from cerebrum.mixtures.hidden_markov import HiddenMarkov

__all__ = ["GaussianMixture", "HiddenMarkov"]
