"""Cerebrum: mixture, state-space and hybrid neural models in PyTorch, behind one API."""

from cerebrum.brain import MM, MMM, Cerebrum, MMMan
from cerebrum.exceptions import CerebrumFileError, ConvergenceWarning, NotFittedError
from cerebrum.mixtures import GaussianMixture, HiddenMarkov

__version__ = "0.1.0"
__all__ = [
    "MM",
    "MMM",
    "Cerebrum",
    "CerebrumFileError",
    "ConvergenceWarning",
    "GaussianMixture",
    "HiddenMarkov",
    "MMMan",
    "NotFittedError",
    "__version__",
]
