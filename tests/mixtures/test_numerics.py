"""Numerical robustness of the classical models (issue 16, section 1).

- float32 fits and inference stay correct when the data sit far from the origin compared with
  their spread: float32 equals float64 within 1e-4 relative. The reference is the same model
  fitted or evaluated in float64 from the same float32 data (and, for the issue's own examples,
  scikit-learn); the inputs range over offset/spread ratios up to 1e4.
- Gradients stay finite after EM leaves probabilities of exactly 0.
- What a model returns from its getters, `from_params` accepts.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from cerebrum import GaussianMixture, HiddenMarkov
from cerebrum.exceptions import ConvergenceWarning
from cerebrum.mixtures import _gaussian_em as em

RTOL = 1e-4
TYPES = ["full", "diag", "spherical", "tied"]


def far_clusters(offset, spread, n_features, n_per_cluster=1500, seed=0):
    """Two clusters at -offset and +offset (every feature), standard deviation `spread`."""
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.normal(-offset, spread, (n_per_cluster, n_features)),
        rng.normal(offset, spread, (n_per_cluster, n_features)),
    ]).astype(np.float32)


def fit_both(X, covariance_type):
    models = []
    for dtype in (torch.float32, torch.float64):
        model = GaussianMixture(2, X.shape[1], covariance_type=covariance_type, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            model.fit(X.astype(np.float64) if dtype == torch.float64 else X, random_state=0)
        models.append(model)
    return models


def assert_same_model(m32, m64, X):
    X64 = X.astype(np.float64)
    s32, s64 = m32.score(X), m64.score(X64)
    assert abs(s32 - s64) <= RTOL * max(abs(s64), 1.0), (s32, s64)
    np.testing.assert_allclose(
        m32.score_samples(X), m64.score_samples(X64), rtol=RTOL, atol=RTOL * X.shape[1]
    )
    np.testing.assert_allclose(m32.predict_proba(X), m64.predict_proba(X64), atol=RTOL)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_the_issues_gmm_example_matches_float64_and_scikit_learn(covariance_type):
    # two clusters at -100 and +100 with spread 0.1: float32 used to score -4860.56 (diag)
    X = far_clusters(100.0, 0.1, 2, n_per_cluster=5000)
    m32, m64 = fit_both(X, covariance_type)
    assert_same_model(m32, m64, X)
    reference = SklearnGaussianMixture(2, covariance_type=covariance_type, random_state=0)
    reference.fit(X.astype(np.float64))
    assert m32.score(X) == pytest.approx(reference.score(X.astype(np.float64)), rel=RTOL)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    log_ratio=st.floats(0.5, 4.0),
    log_spread=st.floats(-3.0, 2.0),
    n_features=st.integers(1, 3),
    covariance_type=st.sampled_from(TYPES),
)
def test_float32_fit_equals_float64_over_offsets_and_spreads(
    log_ratio, log_spread, n_features, covariance_type
):
    spread = 10.0**log_spread
    X = far_clusters(spread * 10.0**log_ratio, spread, n_features)
    m32, m64 = fit_both(X, covariance_type)
    assert_same_model(m32, m64, X)


def test_the_fast_path_is_kept_just_below_its_limit_and_stays_accurate():
    # Clusters placed so the expanded square's error bound sits just under EXPANDED_FORM_LIMIT:
    # the fit still runs on the GEMM path there, and must still meet the 1e-4 target.
    n_features = 8
    eps = torch.finfo(torch.float32).eps
    ratio = np.sqrt(0.9 * em.EXPANDED_FORM_LIMIT / eps / n_features)
    X = far_clusters(ratio, 1.0, n_features, n_per_cluster=3000)
    m32, m64 = fit_both(X, "diag")
    params = em.GaussianParams(
        m32.log_weights().detach(), m32.means.detach() - torch.from_numpy(X.mean(0)),
        m32._precision_cholesky().detach(),
    )
    assert em.expanded_form_is_accurate(params, "diag")
    assert_same_model(m32, m64, X)


def test_ordinary_data_keeps_the_fast_path():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(8, 16))
    X = (centres[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    model = GaussianMixture(8, 16, covariance_type="diag").fit(X, random_state=0)
    params = em.GaussianParams(
        model.log_weights().detach(), model.means.detach() - torch.from_numpy(X.mean(0)),
        model._precision_cholesky().detach(),
    )
    assert em.expanded_form_is_accurate(params, "diag")


def sticky_chain(n_frames, seed=0):
    rng = np.random.default_rng(seed)
    transmat = np.full((3, 3), 0.05) + 0.85 * np.eye(3)
    states = np.empty(n_frames, dtype=np.int64)
    states[0] = 0
    for t in range(1, n_frames):
        states[t] = rng.choice(3, p=transmat[states[t - 1]])
    return states, transmat, rng


def hmm_pair(transmat, means, variance):
    params = dict(
        startprob=np.full(3, 1 / 3), transmat=transmat, weights=np.ones((3, 1)),
        means=means.reshape(3, 1, 1), covariances=np.full((3, 1, 1), variance),
    )
    return (HiddenMarkov.from_params(covariance_type="diag", **params),
            HiddenMarkov.from_params(covariance_type="diag", dtype=torch.float64, **params))


@pytest.mark.parametrize("variance", [1.0, 1e-4])
def test_the_issues_hmm_example_scores_decodes_and_fits_like_float64(variance):
    # states at -1000, 0, +1000: float32 score was 1.3% off at unit variance, 9x at 1e-4
    states, transmat, rng = sticky_chain(20_000)
    means = np.array([-1000.0, 0.0, 1000.0])
    X = (means[states] + rng.normal(0, np.sqrt(variance), len(states)))[:, None]
    X = X.astype(np.float32)
    X64 = X.astype(np.float64)
    h32, h64 = hmm_pair(transmat, means, variance)
    assert h32.score(X) == pytest.approx(h64.score(X64), rel=RTOL)
    np.testing.assert_allclose(h32.predict_proba(X), h64.predict_proba(X64), atol=RTOL)
    assert (h32.decode(X)[1] == h64.decode(X64)[1]).all()

    fits = []
    for dtype, data in ((torch.float32, X), (torch.float64, X64)):
        model = HiddenMarkov(3, 1, 1, "diag", dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="EM lowered", category=ConvergenceWarning)
            warnings.filterwarnings("ignore", message=".*did not converge")
            model.fit(data, random_state=0, max_iter=30)
        fits.append(model)
    assert fits[0].score(X) == pytest.approx(fits[1].score(X64), rel=RTOL)
    np.testing.assert_allclose(
        np.sort(fits[0].get_variances().ravel()), np.sort(fits[1].get_variances().ravel()),
        rtol=1e-3,
    )


def left_to_right_sequences():
    rng = np.random.default_rng(0)
    sequences = [np.concatenate([rng.normal(m, 0.3, (20, 1)) for m in (-3, 0, 3)])
                 for _ in range(10)]
    return np.concatenate(sequences).astype(np.float32), [60] * 10


def test_gradients_stay_finite_after_em_leaves_zero_probabilities():
    X, lengths = left_to_right_sequences()
    model = HiddenMarkov(3, 1).fit(X, lengths, random_state=0)
    assert (model.get_transmat() == 0).any() and (model.get_startprob() == 0).any()
    model.log_prob(X, lengths).sum().backward()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    before = model.score(X, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, lengths, method="gradient", init="current", max_iter=5, lr=1e-3)
    assert np.isfinite(model.score(X, lengths))
    assert model.score(X, lengths) >= before - 1e-3 * abs(before)
    # the zeros stay exact zeros: scores equal a model built with them
    assert (model.get_transmat() == 0).sum() >= 1


def test_zero_probabilities_score_like_an_explicit_model():
    X, lengths = left_to_right_sequences()
    model = HiddenMarkov(3, 1).fit(X, lengths, random_state=0)
    again = HiddenMarkov.from_params(
        model.get_startprob(), model.get_transmat(), model.get_weights(), model.get_means(),
        model.get_variances(), "diag", dtype=torch.float64,
    )
    assert model.score(X, lengths) == pytest.approx(again.score(X.astype(np.float64), lengths),
                                                   rel=RTOL)


def nearly_singular(lowest):
    """A 3 x 3 symmetric matrix with eigenvalues (1, 0.5, lowest)."""
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    return (basis * np.array([1.0, 0.5, lowest])) @ basis.T


def test_from_params_accepts_covariances_negative_only_by_float32_rounding():
    covariance = nearly_singular(-2.4e-8)  # what a float32 model's get_variances() can return
    model = GaussianMixture.from_params([1.0], np.zeros((1, 3)), covariance[None], "full")
    assert np.isfinite(model.score(np.zeros((2, 3), dtype=np.float32)))
    assert np.linalg.eigvalsh(model.get_variances()[0].astype(np.float64)).min() > -1e-6
    hmm = HiddenMarkov.from_params([1.0], [[1.0]], [[1.0]], np.zeros((1, 1, 3)),
                                   covariance[None, None], "full")
    assert np.isfinite(hmm.score(np.zeros((4, 3), dtype=np.float32)))


@pytest.mark.parametrize("lowest, dtype", [(-1e-2, None), (-2.4e-8, torch.float64)])
def test_from_params_still_refuses_covariances_that_are_not_positive_definite(lowest, dtype):
    covariance = nearly_singular(lowest)
    with pytest.raises(ValueError, match=r"covariances\[0\] is not positive definite"):
        GaussianMixture.from_params([1.0], np.zeros((1, 3)), covariance[None], "full",
                                    dtype=dtype)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_a_models_own_parameters_round_trip_through_from_params(covariance_type):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(400, 3))
    X = np.c_[base, base @ rng.normal(size=(3, 3)) + 1e-4 * rng.normal(size=(400, 3))]
    X = X.astype(np.float32)
    model = GaussianMixture(3, 6, covariance_type=covariance_type).fit(
        X, random_state=0, reg_covar=0
    )
    again = GaussianMixture.from_params(
        model.get_weights(), model.get_means(), model.get_variances(), covariance_type
    )
    assert again.score(X) == pytest.approx(model.score(X), rel=1e-2)
