"""Input checks shared by every layer (they started with the classical models).

Every public entry point converts its input here, once, to a tensor of the module's dtype on the
module's device, and raises `ValueError`/`TypeError` that name the argument, what was expected and
what arrived.
"""

from __future__ import annotations

import math
import numbers
import os
import resource
import warnings

import numpy as np
import torch

from cerebrum.exceptions import NotFittedError, NotFittedWarning

COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")


def to_numeric_tensor(
    value, *, name: str, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Convert an array-like to a floating tensor without copying more than needed.

    Raises TypeError for non-numeric input (strings, objects, complex numbers).
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {tensor.dtype}")
        return tensor.to(device=device, dtype=dtype)
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array, got a ragged sequence") from err
    if array.dtype == bool or array.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must be a numeric array (integers or floats), got dtype {array.dtype}"
        )
    if not array.flags.writeable:  # torch cannot wrap read-only memory (e.g. a memmap)
        array = array.copy()
    if array.dtype.kind == "f" and array.dtype.itemsize > torch.finfo(dtype).bits // 8:
        _check_fits(array, name, dtype)
    return torch.as_tensor(array, device=device).to(dtype)


def _check_fits(array: np.ndarray, name: str, dtype: torch.dtype) -> None:
    """A ValueError when finite values of `array` overflow `dtype` (1e39 in float32 would
    otherwise arrive as infinity and be reported as such)."""
    if array.size == 0:
        return
    largest = float(np.nanmax(np.abs(array))) if not np.isnan(array).all() else 0.0
    limit = torch.finfo(dtype).max
    if math.isfinite(largest) and largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:.3g}, out of range for {dtype} (largest "
            f"{limit:.3g}): standardise the data (subtract the mean, divide by the spread) or "
            "use dtype=torch.float64")


def check_finite(tensor: torch.Tensor, *, name: str) -> None:
    """Raise ValueError naming `name` when `tensor` holds NaN or infinity, or values so large
    that their squares overflow its dtype (data scaled by 1e30 in float32 would otherwise give
    -inf or NaN scores)."""
    if tensor.numel() == 0:
        return
    # One NaN-propagating min/max reduction: several times faster than isfinite().all().
    low, high = torch.aminmax(tensor)
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains NaN or infinity ({n_bad} non-finite values)")
    largest = max(abs(float(low)), abs(float(high)))
    # squares of N such values must still sum: leave room for a million of them
    limit = math.sqrt(torch.finfo(tensor.dtype).max / 1e6) if tensor.is_floating_point() else None
    if limit is not None and largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:.3g}, too large for {tensor.dtype} arithmetic "
            f"(sums of their squares overflow above about {limit:.3g}): standardise the data "
            "(subtract the mean, divide by the spread) or use dtype=torch.float64")


def check_samples(
    X,
    *,
    n_features: int | None,
    dtype: torch.dtype,
    device: torch.device | str,
    name: str = "X",
    owner: str = "this model",
    allow_empty: bool = False,
) -> torch.Tensor:
    """Return `X` as a finite (N, D) tensor with N >= 1 (N >= 0 with `allow_empty`, one shard
    of distributed data) and D == n_features (when given)."""
    tensor = to_numeric_tensor(X, name=name, dtype=dtype, device=device)
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got an array of shape "
            f"{tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 and not allow_empty:
        raise ValueError(
            f"{name} is empty: expected at least 1 sample, got shape {tuple(tensor.shape)}"
        )
    if n_features is not None and tensor.shape[1] != n_features:
        raise ValueError(
            f"{name} has {tensor.shape[1]} features, but {owner} was built with "
            f"n_features={n_features}"
        )
    check_finite(tensor, name=name)
    return tensor


def check_sample_weight(
    sample_weight, n_samples: int, *, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Return finite, non-negative per-sample weights of shape (n_samples,)."""
    weight = to_numeric_tensor(sample_weight, name="sample_weight", dtype=dtype, device=device)
    if weight.ndim != 1 or weight.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight must have shape ({n_samples},) to match X, got "
            f"{tuple(weight.shape)}"
        )
    check_finite(weight, name="sample_weight")
    if bool((weight < 0).any()):
        raise ValueError("sample_weight must be non-negative, got negative entries")
    return weight


def check_score_weights(sample_weight, n_samples: int) -> np.ndarray:
    """Per-sample weights of a weighted mean, (n_samples,) float64: finite, non-negative and
    not all zero (numpy's average would return NaN or raise ZeroDivisionError)."""
    weight = to_numeric_tensor(sample_weight, name="sample_weight", dtype=torch.float64,
                               device="cpu").numpy()
    if weight.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},) to match X, got "
                         f"{weight.shape}")
    if not np.all(np.isfinite(weight)):
        raise ValueError(f"sample_weight contains NaN or infinity "
                         f"({int((~np.isfinite(weight)).sum())} non-finite values)")
    if np.any(weight < 0):
        index = int(np.flatnonzero(weight < 0)[0])
        raise ValueError(f"sample_weight must be non-negative, got sample_weight[{index}] = "
                         f"{weight[index]}")
    if not weight.sum() > 0:
        raise ValueError("sample_weight sums to zero: at least one sample needs a positive "
                         "weight")
    return weight


def check_parameter_memory(shapes, *, dtype, device, what: str,
                           holding: str = "its parameters alone") -> None:
    """Refuse a model whose parameters (`shapes`, tuples of ints) cannot fit in the memory of
    `device` at all (a typo such as n_components=10**9 would otherwise allocate until the
    process is killed). Nothing is checked on the meta device."""
    if device is None:
        device = torch.empty(0).device  # the default device (meta while loading a file)
    device = torch.device(device)
    if device.type == "meta":
        return
    n_values = sum(math.prod(shape) for shape in shapes)
    needed = n_values * torch.empty((), dtype=dtype).element_size()
    available = _device_memory(device)
    if available is not None and needed > available:
        raise ValueError(
            f"{what} needs {_gigabytes(needed)} for {holding} ({n_values:,} "
            f"values), more than the {_gigabytes(available)} of memory of {device}: choose "
            "smaller sizes"
        )


def _device_memory(device: torch.device) -> int | None:
    """Total bytes of memory of `device` (physical memory for the CPU), None if unknown."""
    try:
        if device.type == "cpu":
            physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            limit, _ = resource.getrlimit(resource.RLIMIT_AS)  # a process limit (ulimit -v)
            return physical if limit == resource.RLIM_INFINITY else min(physical, limit)
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None
    return None


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_positive_int(value, *, name: str, minimum: int = 1) -> int:
    """Return `value` as int when it is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_nonnegative_float(value, *, name: str) -> float:
    """Return `value` as float when it is a finite real >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_choice(value, choices, *, name: str) -> str:
    """Return `value` when it is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_fitted(model) -> None:
    """Raise NotFittedError when `model` has neither been fitted nor given parameters."""
    if not model.is_fitted:
        raise NotFittedError(
            f"This {type(model).__name__} is not fitted yet: call fit(...) or build it with "
            f"from_params(...) before using this method"
        )


def warn_if_unfitted(model) -> None:
    """Warn (NotFittedWarning) when `model` was never fitted: its getters then return the
    construction values, which a manager may hold before fitting (seed 000, example 2)."""
    if not model.is_fitted:
        warnings.warn(
            f"This {type(model).__name__} is not fitted yet: the parameters returned are its "
            f"construction values; call fit(...) or build it with from_params(...) first",
            NotFittedWarning,
            stacklevel=3,
        )


#: the largest seed torch's generators take
MAX_SEED = 2**64 - 1


def check_seed(value, *, name: str = "random_state") -> int:
    """An integer seed in [0, 2**64 - 1] (torch's range) as a plain int; a TypeError or
    ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None or an integer seed, got "
                        f"{type(value).__name__} {value!r}")
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**64 - 1], got {value}")
    return int(value)


def make_generator(random_state, device: torch.device | str) -> torch.Generator:
    """A torch.Generator on `device` from None (fresh entropy), an int seed or a Generator."""
    if isinstance(random_state, torch.Generator):
        return random_state
    generator = torch.Generator(device=device)
    if random_state is None:
        generator.seed()
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        generator.manual_seed(check_seed(random_state))
    else:
        raise TypeError(
            f"random_state must be None, an int or a torch.Generator, got "
            f"{type(random_state).__name__}"
        )
    return generator


def check_positive_definite(matrices: torch.Tensor, *, name, tolerance: float = 0.0) -> None:
    """Raise ValueError unless every (D, D) matrix of `matrices` (n, D, D) is symmetric (to 1e-8
    relative, or `tolerance` where larger) and positive definite. `name(index)` names matrix
    `index` in the message.

    With `tolerance` > 0, a matrix whose Cholesky factorisation fails is still accepted when its
    smallest eigenvalue is at least -tolerance times its largest: a covariance that is positive
    definite up to the rounding of the precision it was computed in (a float32 model's own
    `get_variances()`); the caller must then floor it (`gaussian_math.safe_precision_cholesky`).
    """
    scale = matrices.abs().amax(dim=(1, 2)).clamp_min(1e-300)
    asymmetry = (matrices - matrices.mT).abs().amax(dim=(1, 2)) / scale
    _, info = torch.linalg.cholesky_ex(matrices)
    for index in range(matrices.shape[0]):
        if float(asymmetry[index]) > max(1e-8, tolerance):
            raise ValueError(f"{name(index)} is not symmetric")
        if int(info[index]) == 0:
            continue
        eigenvalues = torch.linalg.eigvalsh(matrices[index])
        lowest, highest = float(eigenvalues[0]), float(eigenvalues[-1])
        if highest <= 0 or lowest < -tolerance * highest:
            raise ValueError(
                f"{name(index)} is not positive definite (smallest eigenvalue {lowest:.3g}, "
                f"largest {highest:.3g})"
            )


def check_fit_settings(method, init, max_iter, n_init, tol, reg_covar, lr, *, methods, inits):
    """The settings every classical `fit` shares, validated and converted."""
    method = check_choice(method, methods, name="method")
    init = check_choice(init, inits, name="init")
    max_iter = check_positive_int(max_iter, name="max_iter")
    n_init = check_positive_int(n_init, name="n_init")
    tol = check_nonnegative_float(tol, name="tol")
    reg_covar = check_nonnegative_float(reg_covar, name="reg_covar")
    lr = check_nonnegative_float(lr, name="lr")
    if lr == 0 and method == "gradient":
        raise ValueError("lr must be > 0 for method='gradient', got 0")
    return method, init, max_iter, n_init, tol, reg_covar, lr


def check_device(device) -> torch.device | None:
    """`device` as a torch.device (None stays None), or a ValueError that names the device
    asked for and the ones this machine has (torch's own error is an AssertionError from
    deep inside the first allocation)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got "
                         f"{device!r} ({err})") from None
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    if device.type == "cpu":
        return device
    index = 0 if device.index is None else device.index
    if f"{device.type}:{index}" not in available and device.type not in available:
        raise ValueError(f"device {str(device)!r} was asked for, but this machine has "
                         f"{', '.join(available)}")
    return device
