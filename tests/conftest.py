import warnings

import numpy as np
import pytest
import torch
from hypothesis import settings

from cerebrum import ConvergenceWarning

# Property tests draw the same examples on every run (CI must not depend on luck); run with
# --hypothesis-profile=explore locally to search new examples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)  # fresh modules draw their initial means from torch's global RNG


@pytest.fixture
def no_convergence_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def random_covariances(rng, covariance_type, n_components, n_features):
    """Well-conditioned random covariances in scikit-learn's shapes."""
    def spd():
        A = rng.normal(size=(n_features, n_features))
        return A @ A.T / n_features + 0.5 * np.eye(n_features)

    if covariance_type == "full":
        return np.stack([spd() for _ in range(n_components)])
    if covariance_type == "tied":
        return spd()
    if covariance_type == "diag":
        return rng.uniform(0.3, 2.0, size=(n_components, n_features))
    return rng.uniform(0.3, 2.0, size=n_components)


def blobs(rng, n_samples=600, n_features=3, n_components=3, spread=6.0):
    """Well-separated Gaussian blobs and their labels."""
    centres = rng.normal(scale=spread, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n_samples)
    return centres[labels] + rng.normal(size=(n_samples, n_features)), labels
