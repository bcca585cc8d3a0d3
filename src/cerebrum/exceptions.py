"""Exceptions and warnings raised by Cerebrum.

`NotFittedError` subclasses both `ValueError` and `AttributeError`, as scikit-learn's does, so code
written against either convention catches it.
"""


class NotFittedError(ValueError, AttributeError):
    """An inference method was called on a model that has not been fitted (or given parameters)."""


class NotFittedWarning(UserWarning):
    """Parameters were read from a model that was never fitted nor given parameters: what comes
    back are its construction values (seed 000 lets a manager absorb such a model and query it)."""


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped at its iteration limit before meeting its tolerance."""


class CerebrumFileError(ValueError):
    """A file is not a readable Cerebrum file (truncated, empty, foreign or a pickle), or it is
    damaged or inconsistent: metadata without the expected layout, duplicate ids, a content
    hash that does not match, NaN tensors, or tensors whose shapes or dtypes are not the ones
    the stored config declares. The message names the file."""
