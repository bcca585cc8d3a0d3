"""Cerebrum: mixture, state-space and hybrid neural models in PyTorch, behind one API.

The names below load on first use (PEP 562), so importing one network module, say
`cerebrum.models.gpt`, costs torch and that module, not the managers, numba or the engine.
"""

from __future__ import annotations

import importlib

from cerebrum.exceptions import (
    CerebrumFileError,
    ConvergenceWarning,
    NotFittedError,
    NotFittedWarning,
)

__version__ = "0.1.0"

_LAZY = {
    "MM": "cerebrum.brain",
    "MMM": "cerebrum.brain",
    "Cerebrum": "cerebrum.brain",
    "MMMan": "cerebrum.brain",
    "GaussianMixture": "cerebrum.mixtures",
    "HiddenMarkov": "cerebrum.mixtures",
}

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
    "NotFittedWarning",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'cerebrum' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
