"""The Gaussian density in precision-Cholesky form, shared by every model that has Gaussians.

Each component k has a mean mu_k and a covariance Sigma_k. We store the upper-triangular factor U_k
of the precision, Sigma_k^-1 = U_k U_k^T (scikit-learn's `precisions_cholesky_`), because then the
whitened residual is a single matrix product, y = (x - mu_k) U_k, the log density is
    log N(x | mu_k, Sigma_k) = -D/2 log(2 pi) + sum(log diag U_k) - |y|^2 / 2,
and no matrix is ever inverted in the hot path.

Shapes: N samples, K components, D features. The factor U has, by covariance type:
    full (K, D, D)   tied (D, D)   diag (K, D)   spherical (K,)

The unconstrained parametrisation used for gradient fitting (`raw`) stores U with its diagonal in
log space, so any real tensor maps to a valid positive-definite precision.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def precision_cholesky_shape(covariance_type: str, n_components: int, n_features: int):
    """The shape of U (and of its raw parametrisation) for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


def covariance_shape(covariance_type: str, n_components: int, n_features: int):
    """The shape of the covariances in scikit-learn's convention (the same as U's)."""
    return precision_cholesky_shape(covariance_type, n_components, n_features)


def precision_cholesky_from_covariance(covariances: torch.Tensor, covariance_type: str):
    """U with U U^T = Sigma^-1. Raises torch.linalg.LinAlgError if a covariance is not PD."""
    if covariance_type in ("diag", "spherical"):
        return covariances.rsqrt()
    lower = torch.linalg.cholesky(covariances)
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    return torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).mT


def covariance_from_precision_cholesky(prec_chol: torch.Tensor, covariance_type: str):
    """Sigma = U^-T U^-1, in the same shape convention."""
    if covariance_type in ("diag", "spherical"):
        return prec_chol.square().reciprocal()
    eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device)
    inverse = torch.linalg.solve_triangular(prec_chol, eye.expand_as(prec_chol), upper=True)
    covariances = inverse.mT @ inverse
    return 0.5 * (covariances + covariances.mT)  # a product's rounding is not symmetric


def log_det_precision_cholesky(prec_chol: torch.Tensor, covariance_type: str, n_features: int):
    """sum(log diag U) per component: (K,) for full/diag/spherical, a scalar for tied."""
    if covariance_type in ("full", "tied"):
        return prec_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return prec_chol.log().sum(-1)
    return n_features * prec_chol.log()


#: Largest eps * max_k |mu_k U|^2 at which tied residuals are formed as x U - mu U (see
#: `whitened_residuals`); the same bound as the diagonal types' expanded square in _gaussian_em.
SHARED_PRODUCT_LIMIT = 1e-4


def whitened_residuals(
    X: torch.Tensor, means: torch.Tensor, prec_chol: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """y_k = (x - mu_k) U_k for every sample and component: (K, N, D)."""
    if covariance_type == "full":
        # Subtract before multiplying: (x - mu) U keeps float32 accuracy for tight components
        # whose U has large entries, where x U - mu U would cancel.
        return (X.unsqueeze(0) - means.unsqueeze(1)) @ prec_chol
    if covariance_type == "tied":
        # One shared U allows a single product then a broadcast, x U - mu U; but that difference
        # cancels when |mu U|^2 (the squared distance from the origin in units of the spread)
        # is large against 1 / eps, so such data subtract first, at K times the cost.
        whitened_means = means @ prec_chol
        bound = whitened_means.detach().square().sum(-1).amax()
        if float(bound) * torch.finfo(X.dtype).eps <= SHARED_PRODUCT_LIMIT:
            return (X @ prec_chol).unsqueeze(0) - whitened_means.unsqueeze(1)
        return (X.unsqueeze(0) - means.unsqueeze(1)) @ prec_chol
    scale = prec_chol if covariance_type == "diag" else prec_chol.unsqueeze(-1)
    return (X.unsqueeze(0) - means.unsqueeze(1)) * scale.unsqueeze(1)


def log_gaussian_prob(
    X: torch.Tensor, means: torch.Tensor, prec_chol: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """log N(x_n | mu_k, Sigma_k) for every sample and component: (N, K).

    The residuals are formed before squaring, so this is accurate in float32 even when the data
    sit far from the origin; it is differentiable in every argument.
    """
    n_features = X.shape[-1]
    y = whitened_residuals(X, means, prec_chol, covariance_type)
    mahalanobis = y.square().sum(-1).T
    log_det = log_det_precision_cholesky(prec_chol, covariance_type, n_features)
    return -0.5 * (n_features * LOG_2PI + mahalanobis) + log_det


def colour_noise(
    noise: torch.Tensor, labels: torch.Tensor, prec_chol: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """Map standard-normal noise (n, D) to N(0, Sigma_label) row by row: z -> z U^-1.

    labels (n,) index the components of `prec_chol`. Full matrices are handled one component
    at a time (K is small), so memory stays O(n D) rather than O(n D^2).
    """
    if covariance_type == "diag":
        return noise / prec_chol[labels]
    if covariance_type == "spherical":
        return noise / prec_chol[labels].unsqueeze(1)
    if covariance_type == "tied":
        return torch.linalg.solve_triangular(prec_chol, noise, upper=True, left=False)
    out = torch.empty_like(noise)
    for component in labels.unique().tolist():
        rows = labels == component
        out[rows] = torch.linalg.solve_triangular(
            prec_chol[component], noise[rows], upper=True, left=False
        )
    return out


def raw_from_precision_cholesky(prec_chol: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Unconstrained parameters: U with its diagonal replaced by its logarithm."""
    if covariance_type in ("diag", "spherical"):
        return prec_chol.log()
    return prec_chol.triu(1) + torch.diag_embed(prec_chol.diagonal(dim1=-2, dim2=-1).log())


def precision_cholesky_from_raw(raw: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Inverse of `raw_from_precision_cholesky`; the strictly lower triangle of `raw` is ignored."""
    if covariance_type in ("diag", "spherical"):
        return raw.exp()
    return raw.triu(1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())


def floor_covariance(
    covariances: torch.Tensor, covariance_type: str, floor: float
) -> torch.Tensor:
    """Raise every covariance eigenvalue to at least `floor` (a positive number).

    Diagonal types are clamped directly. Full/tied matrices are symmetrised and only those whose
    smallest eigenvalue falls below the floor are rebuilt from a clamped eigendecomposition, so a
    well-conditioned covariance passes through unchanged. For matrices the floor is raised to
    `D * eps * largest eigenvalue` where that is larger, the smallest eigenvalue a Cholesky
    factorisation can resolve in the working precision.
    """
    if covariance_type in ("diag", "spherical"):
        return covariances.clamp_min(floor)
    symmetric = 0.5 * (covariances + covariances.mT)
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    resolvable = covariances.shape[-1] * torch.finfo(covariances.dtype).eps
    floor = (resolvable * eigenvalues.amax(-1, keepdim=True)).clamp_min(floor)
    low = (eigenvalues < floor).any(-1)
    if not bool(low.any()):
        return symmetric
    rebuilt = (eigenvectors * eigenvalues.clamp_min(floor).unsqueeze(-2)) @ eigenvectors.mT
    rebuilt = 0.5 * (rebuilt + rebuilt.mT)
    return torch.where(low.unsqueeze(-1).unsqueeze(-1), rebuilt, symmetric)


def safe_precision_cholesky(
    covariances: torch.Tensor, covariance_type: str, floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, covariances) for covariances that should be PD; repairs those that are not.

    The fast path is one batched Cholesky. Only when it fails (cancellation in float32, or
    `reg_covar=0` on degenerate data) are the covariances floored at `floor`, which must be > 0.
    """
    if covariance_type in ("diag", "spherical"):
        covariances = covariances.clamp_min(floor)
        return covariances.rsqrt(), covariances
    lower, info = torch.linalg.cholesky_ex(covariances)
    if bool((info != 0).any()):
        covariances = floor_covariance(covariances, covariance_type, floor)
        lower = torch.linalg.cholesky(covariances)
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    prec_chol = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).mT
    return prec_chol, covariances
