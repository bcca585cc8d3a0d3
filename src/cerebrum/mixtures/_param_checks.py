"""Validation of explicit model parameters (`from_params`), shared by the classical models.

Everything is checked in float64 on the CPU, whatever the model's dtype and device, and comes
back as float64 tensors; errors name the argument, what was expected and what arrived.
"""

from __future__ import annotations

import numpy as np
import torch

from cerebrum._util.validation import check_finite, check_positive_definite, to_numeric_tensor


def as_float64(value, name: str) -> torch.Tensor:
    """`value` as a finite float64 CPU tensor."""
    tensor = to_numeric_tensor(value, name=name, dtype=torch.float64, device="cpu")
    check_finite(tensor, name=name)
    return tensor


def check_probabilities(value, shape: tuple[int, ...], name: str,
                        context: str = "") -> torch.Tensor:
    """Probabilities of the given shape: non-negative, each last-axis row summing to 1 (within
    1e-6), renormalised exactly. `context` ends the shape message (" to match means")."""
    tensor = as_float64(value, name)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}{context}, got {tuple(tensor.shape)}")
    if bool((tensor < 0).any()):
        raise ValueError(f"{name} must be non-negative, got a minimum of {float(tensor.min()):.6g}")
    sums = tensor.sum(-1)
    bad = (sums - 1).abs() > 1e-6
    if bool(bad.any()):
        if tensor.ndim == 1:
            raise ValueError(f"{name} must sum to 1, got {float(sums):.8g}")
        row = int(bad.flatten().nonzero()[0, 0])
        raise ValueError(
            f"{name} must sum to 1 along its last axis, got {float(sums.flatten()[row]):.8g} "
            f"(row {row})"
        )
    return tensor / sums.unsqueeze(-1)


def check_covariances(value, covariance_type: str, expected: tuple[int, ...],
                      tolerance: float = 0.0) -> torch.Tensor:
    """Covariances of shape `expected` for `covariance_type`: positive variances for "diag" and
    "spherical", symmetric positive-definite matrices (up to `tolerance`, see
    `check_positive_definite`) otherwise. A matrix is named by its index: `covariances[1]`, or
    `covariances[2, 0]` for a stack of stacks."""
    tensor = to_numeric_tensor(value, name="covariances", dtype=torch.float64, device="cpu")
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"covariances for covariance_type={covariance_type!r} must have shape {expected}, "
            f"got {tuple(tensor.shape)}"
        )
    check_finite(tensor, name="covariances")
    if covariance_type in ("diag", "spherical"):
        if bool((tensor <= 0).any()):
            raise ValueError(
                f"covariances must be positive for covariance_type={covariance_type!r}, got a "
                f"minimum of {float(tensor.min()):.6g}"
            )
        return tensor
    stack_shape = tuple(tensor.shape[:-2])
    n_features = tensor.shape[-1]

    def matrix_name(index: int) -> str:
        if not stack_shape:
            return "covariances"
        position = ", ".join(str(int(i)) for i in np.unravel_index(index, stack_shape))
        return f"covariances[{position}]"

    check_positive_definite(
        tensor.reshape(-1, n_features, n_features), name=matrix_name, tolerance=tolerance
    )
    return tensor


def rounding_tolerance(dtype: torch.dtype | None) -> float:
    """How far below zero (relative to the largest) a covariance eigenvalue may be and still count
    as positive definite for a model of `dtype`: the rounding of computing Sigma = U^-T U^-1 in
    that precision, so what a model returns from `get_variances()` is always accepted back."""
    return 100 * torch.finfo(dtype or torch.get_default_dtype()).eps
