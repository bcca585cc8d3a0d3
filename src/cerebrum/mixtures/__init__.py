"""Classical probabilistic models: Gaussian mixtures (and, next, hidden Markov models)."""

from cerebrum.mixtures.gaussian import GaussianMixture

__all__ = ["GaussianMixture"]
