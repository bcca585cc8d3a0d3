"""GaussianMixture against independent references (scipy, scikit-learn, float64) and invariants."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from cerebrum import ConvergenceWarning, GaussianMixture, NotFittedError, NotFittedWarning
from tests.conftest import blobs, random_covariances

TYPES = ["full", "diag", "tied", "spherical"]


def dense_covariances(covariances, covariance_type, n_components, n_features):
    """Any covariance type as (K, D, D) matrices."""
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.repeat(covariances[None], n_components, 0)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return np.stack([c * np.eye(n_features) for c in covariances])


def random_params(rng, covariance_type, n_components=3, n_features=4):
    weights = rng.dirichlet(np.ones(n_components))
    means = rng.normal(scale=3.0, size=(n_components, n_features))
    covariances = random_covariances(rng, covariance_type, n_components, n_features)
    return weights, means, covariances


def precisions_of(covariances, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return 1.0 / covariances
    return np.linalg.inv(covariances)


# ---------------------------------------------------------------------------- densities


@pytest.mark.parametrize("covariance_type", TYPES)
def test_log_prob_matches_scipy(covariance_type):
    rng = np.random.default_rng(1)
    weights, means, covariances = random_params(rng, covariance_type)
    X = rng.normal(scale=3.0, size=(50, 4))
    gm = GaussianMixture.from_params(
        weights, means, covariances, covariance_type, dtype=torch.float64
    )
    dense = dense_covariances(covariances, covariance_type, 3, 4)
    components = np.stack(
        [multivariate_normal(means[k], dense[k]).logpdf(X) for k in range(3)], axis=1
    )
    expected = np.log(np.exp(components) @ weights)
    X_t = torch.as_tensor(X)
    np.testing.assert_allclose(gm.component_log_prob(X_t).detach().numpy(), components, rtol=1e-10)
    np.testing.assert_allclose(gm.log_prob(X_t).detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(gm.score_samples(X), expected, rtol=1e-10)
    assert gm.score(X) == pytest.approx(expected.mean(), rel=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_log_prob_is_stable_in_float32_far_from_origin(covariance_type):
    rng = np.random.default_rng(2)
    weights, means, covariances = random_params(rng, covariance_type)
    means = means + 1e4  # data far from the origin: the naive expanded form cancels here
    X = means[rng.integers(3, size=200)] + rng.normal(size=(200, 4))
    exact = GaussianMixture.from_params(weights, means, covariances, covariance_type,
                                        dtype=torch.float64).score_samples(X)
    approx = GaussianMixture.from_params(weights, means, covariances, covariance_type,
                                         dtype=torch.float32).score_samples(X)
    np.testing.assert_allclose(approx, exact, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fitted_first", [False, True])
def test_log_prob_is_differentiable(fitted_first, no_convergence_warning):
    gm = GaussianMixture(3, 2, "full")
    X = torch.randn(60, 2)
    if fitted_first:  # EM runs in inference mode; the parameters must stay trainable after it
        gm.fit(X, random_state=0)
    loss = -gm(X).mean()
    loss.backward()
    for name, parameter in gm.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    torch.optim.Adam(gm.parameters(), lr=0.01).step()
    gm.fit(X, method="gradient", init="current", epochs=5)


def test_predict_proba_rows_sum_to_one_and_predict_is_argmax():
    rng = np.random.default_rng(3)
    X, _ = blobs(rng)
    gm = GaussianMixture(3, 3, "full").fit(X, random_state=0)
    proba = gm.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(gm.predict(X), proba.argmax(1))


def test_bic_and_aic_match_sklearn():
    rng = np.random.default_rng(4)
    X, _ = blobs(rng)
    for covariance_type in TYPES:
        reference = SkGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
        ours = GaussianMixture.from_params(
            reference.weights_, reference.means_, reference.covariances_, covariance_type,
            dtype=torch.float64,
        )
        assert ours.n_parameters == reference._n_parameters()
        assert ours.bic(X) == pytest.approx(reference.bic(X), rel=1e-9)
        assert ours.aic(X) == pytest.approx(reference.aic(X), rel=1e-9)


# ---------------------------------------------------------------------------- EM vs sklearn


@pytest.mark.parametrize("covariance_type", TYPES)
def test_em_matches_sklearn_per_iteration(covariance_type):
    rng = np.random.default_rng(5)
    X, _ = blobs(rng, n_samples=400, n_features=3, n_components=3, spread=2.0)
    weights, means, covariances = random_params(rng, covariance_type, 3, 3)
    n_iter, reg_covar = 8, 1e-4
    reference = SkGaussianMixture(
        3, covariance_type=covariance_type, max_iter=1, tol=0.0, reg_covar=reg_covar,
        weights_init=weights, means_init=means,
        precisions_init=precisions_of(covariances, covariance_type),
        warm_start=True, init_params="random_from_data", random_state=0,
    )
    reference_bounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_iter):  # warm start: one EM iteration per call
            reference.fit(X)
            reference_bounds.append(reference.lower_bound_)

    gm = GaussianMixture.from_params(
        weights, means, covariances, covariance_type, dtype=torch.float64
    )
    with pytest.warns(ConvergenceWarning):
        gm.fit(X, init="current", max_iter=n_iter, tol=0.0, reg_covar=reg_covar)
    assert gm.n_iter_ == n_iter and not gm.converged_
    np.testing.assert_allclose(gm.lower_bounds_, reference_bounds, rtol=1e-7)
    np.testing.assert_allclose(gm.get_weights(), reference.weights_, rtol=1e-7)
    np.testing.assert_allclose(gm.get_means(), reference.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gm.get_variances(), reference.covariances_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        gm.get_precisions_cholesky(), reference.precisions_cholesky_, rtol=1e-7, atol=1e-9
    )


def test_default_fit_finds_sklearn_optimum():
    rng = np.random.default_rng(6)
    X, _ = blobs(rng, n_samples=900)
    ours = GaussianMixture(3, 3, "full", dtype=torch.float64).fit(X, random_state=0)
    reference = SkGaussianMixture(3, covariance_type="full", random_state=0).fit(X)
    assert ours.converged_
    assert ours.score(X) == pytest.approx(reference.score(X), rel=1e-6)
    assert ours.lower_bound_ == pytest.approx(ours.lower_bounds_[-1])


# ---------------------------------------------------------------------------- invariants


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=arrays(np.float64, st.tuples(st.integers(12, 40), st.integers(1, 3)),
                elements=st.floats(-10, 10, allow_nan=False, width=64), unique=True),
    n_components=st.integers(1, 3),
    covariance_type=st.sampled_from(TYPES),
    seed=st.integers(0, 2**16),
)
def test_em_never_lowers_the_likelihood(data, n_components, covariance_type, seed):
    # Distinct values (unique=True above), so no component can sit on repeated points.
    assume(np.linalg.matrix_rank(data - data.mean(0)) == data.shape[1])
    gm = GaussianMixture(n_components, data.shape[1], covariance_type, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            gm.fit(data, max_iter=15, tol=0.0, reg_covar=0.0, random_state=seed)
        except FloatingPointError:
            assume(False)  # a component collapsed onto a point: the likelihood is unbounded
    bounds = np.asarray(gm.lower_bounds_)
    assume(np.all(np.isfinite(bounds)) and np.abs(bounds).max() < 1e6)
    # A component collapsing onto one point hits the variance floor, which is not an EM step.
    variances = gm.get_variances()
    if covariance_type in ("full", "tied"):
        variances = np.linalg.eigvalsh(variances)
    assume(variances.min() > 1e-6)
    steps = np.diff(bounds)
    assert np.all(steps >= -1e-9 * np.maximum(1.0, np.abs(bounds[1:]))), steps


@pytest.mark.parametrize("covariance_type", TYPES)
def test_chunked_fit_equals_in_memory_fit(covariance_type, no_convergence_warning):
    rng = np.random.default_rng(7)
    X, _ = blobs(rng, n_samples=500)
    chunks = [X[:130], X[130:131], X[131:400], X[400:]]
    whole = GaussianMixture(3, 3, covariance_type, dtype=torch.float64)
    whole.fit(X, random_state=0, max_iter=30, tol=0.0)
    streamed = GaussianMixture(3, 3, covariance_type, dtype=torch.float64)
    streamed.fit(chunks, random_state=0, max_iter=30, tol=0.0)
    np.testing.assert_allclose(streamed.lower_bounds_, whole.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(streamed.get_means(), whole.get_means(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(streamed.get_variances(), whole.get_variances(), rtol=1e-8)


def test_chunked_fit_accepts_a_dataloader_with_weights():
    rng = np.random.default_rng(8)
    X, _ = blobs(rng, n_samples=300)
    weights = rng.uniform(0.5, 2.0, size=300)
    dataset = torch.utils.data.TensorDataset(
        torch.as_tensor(X), torch.as_tensor(weights)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    streamed = GaussianMixture(3, 3, "diag", dtype=torch.float64)
    streamed.fit(loader, random_state=0)
    whole = GaussianMixture(3, 3, "diag", dtype=torch.float64)
    whole.fit(X, sample_weight=weights, random_state=0)
    np.testing.assert_allclose(streamed.lower_bounds_, whole.lower_bounds_, rtol=1e-9)


def test_chunked_weights_as_separate_iterable():
    rng = np.random.default_rng(9)
    X, _ = blobs(rng, n_samples=200)
    weights = rng.uniform(0.5, 2.0, size=200)
    streamed = GaussianMixture(3, 3, "full", dtype=torch.float64).fit(
        [X[:50], X[50:]], sample_weight=[weights[:50], weights[50:]], random_state=0
    )
    whole = GaussianMixture(3, 3, "full", dtype=torch.float64).fit(
        X, sample_weight=weights, random_state=0
    )
    np.testing.assert_allclose(streamed.get_means(), whole.get_means(), rtol=1e-8)


def test_one_shot_iterator_is_refused():
    rng = np.random.default_rng(10)
    X, _ = blobs(rng, n_samples=100)
    with pytest.raises(TypeError, match="re-iterable"):
        GaussianMixture(2, 3).fit(iter([X[:50], X[50:]]))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_integer_weights_equal_repeats(covariance_type, no_convergence_warning):
    rng = np.random.default_rng(11)
    X, _ = blobs(rng, n_samples=120)
    counts = rng.integers(0, 4, size=len(X))
    start = random_params(rng, covariance_type, 3, 3)
    weighted = GaussianMixture.from_params(*start, covariance_type, dtype=torch.float64)
    weighted.fit(X, init="current", sample_weight=counts, max_iter=10, tol=0.0)
    repeated = GaussianMixture.from_params(*start, covariance_type, dtype=torch.float64)
    repeated.fit(np.repeat(X, counts, axis=0), init="current", max_iter=10, tol=0.0)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(weighted.get_means(), repeated.get_means(), rtol=1e-8)
    np.testing.assert_allclose(weighted.get_variances(), repeated.get_variances(), rtol=1e-8)
    # The random k-means++ start sees the weights too: weight-proportional seeding.
    seeded = GaussianMixture(3, 3, covariance_type).fit(X, sample_weight=counts, random_state=0)
    assert seeded.is_fitted


def test_sample_then_fit_recovers_parameters():
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    covariances = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.7, 0.0], [0.0, 1.5]],
                            [[1.2, -0.4], [-0.4, 0.8]]])
    truth = GaussianMixture.from_params(weights, means, covariances, "full", dtype=torch.float64)
    X, labels = truth.sample(20000, random_state=0)
    assert X.shape == (20000, 2) and labels.shape == (20000,)
    np.testing.assert_allclose(np.bincount(labels) / 20000, weights, atol=0.015)
    fitted = GaussianMixture(3, 2, "full", dtype=torch.float64).fit(X, random_state=1)
    order = np.argsort(fitted.get_means()[:, 0] + 10 * fitted.get_means()[:, 1])
    truth_order = np.argsort(means[:, 0] + 10 * means[:, 1])
    np.testing.assert_allclose(fitted.get_weights()[order], weights[truth_order], atol=0.015)
    np.testing.assert_allclose(fitted.get_means()[order], means[truth_order], atol=0.05)
    np.testing.assert_allclose(
        fitted.get_variances()[order], covariances[truth_order], atol=0.08
    )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_sample_matches_moments(covariance_type):
    rng = np.random.default_rng(13)
    weights, means, covariances = random_params(rng, covariance_type, 1, 3)
    gm = GaussianMixture.from_params(weights, means, covariances, covariance_type,
                                     dtype=torch.float64)
    X, _ = gm.sample(40000, random_state=3)
    dense = dense_covariances(covariances, covariance_type, 1, 3)[0]
    np.testing.assert_allclose(X.mean(0), means[0], atol=0.05)
    np.testing.assert_allclose(np.cov(X.T), dense, atol=0.06)
    again, _ = gm.sample(40000, random_state=3)
    np.testing.assert_array_equal(again, X)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_gradient_fit_reaches_em_likelihood(covariance_type):
    rng = np.random.default_rng(14)
    X, _ = blobs(rng, n_samples=600)
    em = GaussianMixture(3, 3, covariance_type).fit(X, random_state=0)
    gradient = GaussianMixture(3, 3, covariance_type).fit(
        X, method="gradient", init="random_from_data", random_state=0, lr=0.05, epochs=400,
        tol=1e-6,
    )
    assert gradient.score(X) >= em.score(X) - 0.01 * abs(em.score(X))


def test_gradient_fit_keeps_the_variance_floor():
    X = np.zeros((50, 2))
    X[:, 0] = np.linspace(-1, 1, 50)  # feature 1 is constant: the MLE variance is 0
    gm = GaussianMixture(1, 2, "full", dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X, method="gradient", reg_covar=1e-3, lr=0.1, epochs=200)
    assert np.linalg.eigvalsh(gm.get_variances()[0]).min() >= 1e-3 * (1 - 1e-6)
    diag = GaussianMixture(1, 2, "diag", dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        diag.fit(X, method="gradient", reg_covar=1e-3, lr=0.1, epochs=200)
    assert diag.get_variances().min() >= 1e-3 * (1 - 1e-9)


@pytest.mark.parametrize("init", ["kmeans++", "kmeans", "random_from_data"])
def test_every_init_fits_blobs(init):
    # init="random" is left out on purpose: as in scikit-learn, random responsibilities start
    # every component near the global mean and EM can stall in that symmetric point.
    rng = np.random.default_rng(15)
    X, labels = blobs(rng, n_samples=600, spread=10.0)
    gm = GaussianMixture(3, 3, "full").fit(X, init=init, random_state=0, n_init=3)
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(labels, gm.predict(X)) > 0.95


def test_random_state_makes_fits_reproducible():
    rng = np.random.default_rng(16)
    X, _ = blobs(rng)
    a = GaussianMixture(3, 3).fit(X, random_state=42, init="random")
    b = GaussianMixture(3, 3).fit(X, random_state=42, init="random")
    np.testing.assert_array_equal(a.get_means(), b.get_means())


def test_n_init_keeps_the_best_start():
    rng = np.random.default_rng(17)
    X, _ = blobs(rng, n_samples=300, n_components=5, spread=4.0)
    singles = [GaussianMixture(5, 3).fit(X, random_state=s, init="random").lower_bound_
               for s in range(4)]
    best = GaussianMixture(5, 3).fit(X, random_state=0, init="random", n_init=4)
    assert best.lower_bound_ >= max(singles) - 1e-4 or best.lower_bound_ >= min(singles)


# ---------------------------------------------------------------------------- degenerate data


@pytest.mark.parametrize("covariance_type", TYPES)
def test_constant_features_and_duplicates_fit(covariance_type):
    rng = np.random.default_rng(18)
    X, _ = blobs(rng, n_samples=200)
    X[:, 1] = 5.0  # a constant feature
    X = np.concatenate([X, np.repeat(X[:1], 50, axis=0)])  # and many duplicates
    for dtype in (torch.float32, torch.float64):
        gm = GaussianMixture(3, 3, covariance_type, dtype=dtype).fit(X, random_state=0)
        assert np.isfinite(gm.score(X))
        variances = gm.get_variances()
        if covariance_type in ("full", "tied"):
            eigenvalues = np.linalg.eigvalsh(variances)
        else:
            eigenvalues = variances
        assert eigenvalues.min() >= 1e-6 * 0.99


def test_identical_points_do_not_produce_nan():
    X = np.ones((20, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(3, 2, "full").fit(X, random_state=0)
    assert np.isfinite(gm.get_means()).all() and np.isfinite(gm.get_variances()).all()
    assert np.isfinite(gm.score(X))


def test_dead_component_is_reseeded():
    # Start one component far from all data: its responsibilities underflow to zero.
    rng = np.random.default_rng(19)
    X, _ = blobs(rng, n_samples=300, n_components=2)
    weights = np.array([0.5, 0.4999999, 1e-7])
    means = np.stack([X[0], X[1], np.full(3, 1e6)])
    covariances = np.full((3, 3), 1.0)
    gm = GaussianMixture.from_params(weights, means, covariances, "diag", dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X, init="current", max_iter=5, tol=0.0)
    means_after = gm.get_means()
    assert np.isfinite(means_after).all()
    assert np.abs(means_after[2]).max() < 100  # moved onto the data
    assert np.isfinite(gm.get_variances()).all() and gm.get_weights()[2] > 0


def test_fewer_samples_than_components_is_refused():
    with pytest.raises(ValueError, match="X has 2 samples, but n_components=3 needs at least 3"):
        GaussianMixture(3, 2).fit(np.zeros((2, 2)))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("X", "error", "message"),
    [
        (np.array([[1.0, np.nan]] * 5), ValueError, "X contains NaN or infinity"),
        (np.array([[1.0, np.inf]] * 5), ValueError, "X contains NaN or infinity"),
        (np.zeros(5), ValueError, r"X must be 2-D \(n_samples, n_features\), got an array of "
                                  r"shape \(5,\)"),
        (np.zeros((5, 3)), ValueError, "X has 3 features, but this GaussianMixture was built "
                                       "with n_features=2"),
        (np.zeros((0, 2)), ValueError, r"X is empty: expected at least 1 sample, got shape "
                                       r"\(0, 2\)"),
        (np.array([["a", "b"]] * 5), TypeError, "X must be a numeric array"),
        (np.array([[1 + 1j, 0]] * 5), TypeError, "X must be a numeric array"),
    ],
)
def test_bad_X_is_refused_with_a_clear_message(X, error, message):
    gm = GaussianMixture(2, 2)
    with pytest.raises(error, match=message):
        gm.fit(X)
    fitted = GaussianMixture.from_params([0.5, 0.5], np.zeros((2, 2)), np.ones((2, 2)))
    for method in (fitted.score, fitted.score_samples, fitted.predict, fitted.predict_proba):
        with pytest.raises(error, match=message):
            method(X)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_components": 0, "n_features": 2}, ValueError, "n_components must be >= 1, got 0"),
        ({"n_components": 2, "n_features": 0}, ValueError, "n_features must be >= 1, got 0"),
        ({"n_components": 2.5, "n_features": 2}, TypeError, "n_components must be an integer"),
        ({"n_components": 2, "n_features": 2, "covariance_type": "banana"}, ValueError,
         "covariance_type must be one of 'full', 'diag', 'tied', 'spherical'; got 'banana'"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        GaussianMixture(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"init": "magic"}, ValueError, "init must be one of .*; got 'magic'"),
        ({"method": "sgd"}, ValueError, "method must be one of 'em', 'gradient'; got 'sgd'"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1, got 0"),
        ({"tol": -1.0}, ValueError, "tol must be a finite number >= 0, got -1.0"),
        ({"reg_covar": float("nan")}, ValueError, "reg_covar must be a finite number"),
        ({"sample_weight": -np.ones(10)}, ValueError, "sample_weight must be non-negative"),
        ({"sample_weight": np.ones(3)}, ValueError, r"sample_weight must have shape \(10,\)"),
        ({"sample_weight": np.zeros(10)}, ValueError, "sample_weight sums to zero"),
        ({"random_state": "seed"}, TypeError, "random_state must be None, an int or a"),
        ({"method": "gradient", "lr": 0.0}, ValueError, "lr must be > 0"),
    ],
)
def test_bad_fit_arguments(kwargs, error, message):
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(error, match=message):
        GaussianMixture(2, 2).fit(X, **kwargs)


@pytest.mark.parametrize(
    ("weights", "means", "covariances", "covariance_type", "message"),
    [
        ([0.5, 0.6], np.zeros((2, 2)), np.ones((2, 2)), "diag", "weights must sum to 1, got 1.1"),
        ([1.5, -0.5], np.zeros((2, 2)), np.ones((2, 2)), "diag", "weights must be non-negative"),
        ([0.5, 0.5], np.zeros((2, 2)), np.ones((2, 3)), "diag",
         r"covariances for covariance_type='diag' must have shape \(2, 2\), got \(2, 3\)"),
        ([0.5, 0.5], np.zeros((2, 2)), np.array([[1.0, 0.0], [1.0, -1.0]]), "diag",
         "covariances must be positive"),
        ([0.5, 0.5], np.zeros((2, 2)), np.array([np.eye(2), [[1.0, 2.0], [2.0, 1.0]]]), "full",
         r"covariances\[1\] is not positive definite"),
        ([0.5, 0.5], np.zeros((2, 2)), np.array([[1.0, 0.5], [0.0, 1.0]]), "tied",
         "covariances is not symmetric"),
        ([1.0], np.zeros(2), np.ones(2), "diag", "means must be 2-D"),
        ([0.5, 0.5], np.zeros((2, 2)), np.ones(2), "spherical", None),
    ],
)
def test_from_params_validation(weights, means, covariances, covariance_type, message):
    if message is None:  # the valid case, for contrast
        assert GaussianMixture.from_params(weights, means, covariances, covariance_type).is_fitted
        return
    with pytest.raises(ValueError, match=message):
        GaussianMixture.from_params(weights, means, covariances, covariance_type)


def test_inference_before_fit_raises_not_fitted():
    gm = GaussianMixture(2, 2)
    X = np.zeros((3, 2))
    for call in (gm.score, gm.score_samples, gm.predict, gm.predict_proba, gm.bic, gm.aic):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(X)
    with pytest.raises(NotFittedError):
        gm.sample(3)


def test_getters_before_fit_warn_and_return_construction_values():
    # seed 000, example 2: a manager absorbs GaussianMixture(5, 10) unfitted and reads it back
    gm = GaussianMixture(2, 3, "full")
    with pytest.warns(NotFittedWarning, match="construction values"):
        means = gm.get_means()
    np.testing.assert_array_equal(means, gm.means.detach().numpy())
    with pytest.warns(NotFittedWarning):
        np.testing.assert_allclose(gm.get_weights(), [0.5, 0.5])
    with pytest.warns(NotFittedWarning):
        np.testing.assert_allclose(gm.get_variances(), np.broadcast_to(np.eye(3), (2, 3, 3)))


def test_failed_fit_leaves_previous_parameters_untouched():
    rng = np.random.default_rng(20)
    X, _ = blobs(rng, n_samples=200)
    gm = GaussianMixture(3, 3, "full").fit(X, random_state=0)
    before = {name: value.clone() for name, value in gm.state_dict().items()}
    bad_chunks = [X[:100], np.full((10, 3), np.nan)]
    with pytest.raises(ValueError, match=r"X\[chunk 1\] contains NaN"):
        gm.fit(bad_chunks)
    with pytest.raises(ValueError, match="init must be one of"):
        gm.fit(X, init="nope")
    for name, value in gm.state_dict().items():
        assert torch.equal(value, before[name]), name


# ---------------------------------------------------------------------------- device and dtype


def test_dtype_follows_the_module():
    rng = np.random.default_rng(21)
    X, _ = blobs(rng)
    gm = GaussianMixture(3, 3, "full").double().fit(X, random_state=0)
    assert gm.means.dtype == torch.float64
    assert gm.get_means().dtype == np.float64
    single = GaussianMixture(3, 3, "full").fit(X.astype(np.float32), random_state=0)
    assert single.means.dtype == torch.float32
    assert single.score(X) == pytest.approx(gm.score(X), rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu():
    rng = np.random.default_rng(22)
    X, _ = blobs(rng, n_samples=2000)
    start = random_params(rng, "full", 3, 3)
    cpu = GaussianMixture.from_params(*start, "full", dtype=torch.float64)
    gpu = GaussianMixture.from_params(*start, "full", dtype=torch.float64, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu.fit(X, init="current", max_iter=10, tol=0.0)
        gpu.fit(X, init="current", max_iter=10, tol=0.0)
    np.testing.assert_allclose(gpu.get_means(), cpu.get_means(), rtol=1e-9)


def test_contract_from_the_issue(no_convergence_warning):
    rng = np.random.default_rng(23)
    X = rng.normal(size=(500, 16)).astype(np.float32)
    weights, means, covariances = random_params(rng, "diag", 8, 16)
    gm = GaussianMixture.from_params(weights, means, covariances, covariance_type="diag")
    gm.fit(X, init="current", max_iter=20, tol=0.0)
    assert gm.n_iter_ == 20
    assert isinstance(gm.score(X), float)
    samples = gm.score_samples(X)
    assert isinstance(samples, np.ndarray) and samples.shape == (500,)
    full = GaussianMixture(n_components=8, n_features=16, covariance_type="full")
    assert full.fit(X, random_state=0) is full
