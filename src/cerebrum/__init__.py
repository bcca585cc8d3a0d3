"""Cerebrum: mixture, state-space and hybrid neural models in PyTorch, behind one API."""

from cerebrum.exceptions import ConvergenceWarning, NotFittedError
from cerebrum.mixtures import GaussianMixture, HiddenMarkov

__version__ = "0.1.0"
__all__ = [
    "ConvergenceWarning",
    "GaussianMixture",
    "HiddenMarkov",
    "NotFittedError",
    "__version__",
]
