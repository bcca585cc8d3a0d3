"""scikit-learn estimator adapters.

`cerebrum.sklearn.GaussianMixture` follows scikit-learn's estimator conventions (hyper-parameters
in the constructor, `n_features` inferred at `fit`, fitted attributes ending in `_`,
`get_params`/`set_params`, cloning) and delegates the work to the `cerebrum.GaussianMixture`
module, which stays available as `module_`. It passes scikit-learn's own estimator checks (see
`tests/test_sklearn_adapter.py` for the list of skipped checks and why).

Needs the `sklearn` extra: `pip install cerebrum[sklearn]`.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "cerebrum.sklearn needs scikit-learn: pip install 'cerebrum[sklearn]'"
    ) from err

from cerebrum.mixtures.gaussian import GaussianMixture as _GaussianMixtureModule

__all__ = ["GaussianMixture"]


class GaussianMixture(DensityMixin, BaseEstimator):
    """A Gaussian mixture with scikit-learn's interface, fitted by Cerebrum.

    Parameters mirror `sklearn.mixture.GaussianMixture` where they exist (same defaults), plus:
    `init_params` also accepts "kmeans++" and "random_from_data" as there, `method` ("em" or
    "gradient"), `dtype` ("float64" by default, as scikit-learn computes; "float32" for speed)
    and `device` ("cpu", "cuda", ...).

    Fitted attributes: `weights_`, `means_`, `covariances_`, `precisions_cholesky_`,
    `precisions_`, `converged_`, `n_iter_`, `lower_bound_`, `n_features_in_`, `module_`.
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        random_state=None,
        method="em",
        dtype="float64",
        device="cpu",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.method = method
        self.dtype = dtype
        self.device = device

    def _torch_dtype(self) -> torch.dtype:
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return getattr(torch, self.dtype)

    def _seed(self):
        """scikit-learn accepts a RandomState; the module takes an int seed."""
        state = self.random_state
        if isinstance(state, np.random.RandomState):
            return int(state.randint(np.iinfo(np.int32).max))
        return state

    def fit(self, X, y=None, sample_weight=None):
        """Fit the mixture to X (n_samples, n_features); `y` is ignored."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        module = _GaussianMixtureModule(
            self.n_components, X.shape[1], self.covariance_type,
            dtype=self._torch_dtype(), device=self.device,
        )
        module.fit(
            X, method=self.method, max_iter=self.max_iter, tol=self.tol,
            init=self.init_params, n_init=self.n_init, reg_covar=self.reg_covar,
            sample_weight=sample_weight, random_state=self._seed(),
        )
        self.module_ = module
        self.weights_ = module.get_weights().astype(np.float64)
        self.means_ = module.get_means().astype(np.float64)
        self.covariances_ = module.get_variances().astype(np.float64)
        self.precisions_cholesky_ = module.get_precisions_cholesky().astype(np.float64)
        if self.covariance_type in ("full", "tied"):
            self.precisions_ = self.precisions_cholesky_ @ np.swapaxes(
                self.precisions_cholesky_, -1, -2
            )
        else:
            self.precisions_ = self.precisions_cholesky_**2
        self.converged_ = module.converged_
        self.n_iter_ = module.n_iter_
        self.lower_bound_ = module.lower_bound_
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the most probable component of each training sample."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    def _checked(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def score_samples(self, X):
        """Log-likelihood of each sample, (n_samples,)."""
        X = self._checked(X)
        return self.module_.score_samples(X).astype(np.float64)

    def score(self, X, y=None):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def predict(self, X):
        """Most probable component of each sample, (n_samples,)."""
        X = self._checked(X)
        return self.module_.predict(X)

    def predict_proba(self, X):
        """Posterior component probabilities, (n_samples, n_components)."""
        X = self._checked(X)
        return self.module_.predict_proba(X).astype(np.float64)

    def sample(self, n_samples=1):
        """Draw samples: (X (n_samples, n_features), component labels (n_samples,))."""
        check_is_fitted(self)
        X, labels = self.module_.sample(n_samples, random_state=self._seed())
        return X.astype(np.float64), labels

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        X = self._checked(X)
        return self.module_.bic(X)

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        X = self._checked(X)
        return self.module_.aic(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device != "cpu"
        return tags
