"""Bad arguments at the classical models' entry points (issue 16, section 4): weights of a
weighted score, sequence lengths that would be truncated or wrap, and sizes no machine holds."""

import warnings

import numpy as np
import pytest
import torch

from cerebrum import GaussianMixture, HiddenMarkov
from cerebrum._util import validation
from cerebrum.exceptions import NotFittedError


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(16).normal(size=(60, 2))


@pytest.fixture(scope="module")
def gmm(data):
    return GaussianMixture.from_params([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]],
                                       [[1.0, 1.0], [1.0, 1.0]])


@pytest.fixture(scope="module")
def hmm():
    return HiddenMarkov.from_params([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], [[1.0], [1.0]],
                                    [[[0.0, 0.0]], [[1.0, 1.0]]], [[[1.0, 1.0]], [[1.0, 1.0]]])


@pytest.mark.parametrize(("weights", "message"), [
    (-np.ones(60), r"must be non-negative, got sample_weight\[0\] = -1.0"),
    (np.r_[np.nan, np.ones(59)], "contains NaN or infinity"),
    (np.zeros(60), "sums to zero"),
    (np.ones(59), r"must have shape \(60,\)"),
])
def test_score_refuses_bad_sample_weights(gmm, data, weights, message):
    with pytest.raises(ValueError, match=message):
        gmm.score(data, sample_weight=weights)


def test_score_with_weights_is_a_weighted_mean(gmm, data):
    weights = np.r_[np.zeros(30), np.ones(30)]
    assert gmm.score(data, sample_weight=weights) == pytest.approx(gmm.score(data[30:]))


@pytest.mark.parametrize(("lengths", "error", "message"), [
    ([150.7, -90.7], TypeError, r"lengths must hold integers, got lengths\[0\] = 150.7"),
    (np.array([2**64 - 1], dtype=np.uint64), ValueError,
     r"lengths\[0\] = 18446744073709551615 is larger than any sequence"),
    (np.array([2**62, 2**62, 2**62, 60], dtype=np.int64), ValueError,
     "lengths sum to 13835058055282163772, but X has 60 rows"),
])
def test_lengths_are_never_truncated_or_wrapped(hmm, data, lengths, error, message):
    with pytest.raises(error, match=message):
        hmm.score(data, lengths=lengths)


def test_whole_float_and_unsigned_lengths_are_accepted(hmm, data):
    expected = hmm.score(data, lengths=[20, 40])
    assert hmm.score(data, lengths=np.array([20, 40], dtype=np.uint64)) == expected
    assert hmm.score(data, lengths=[20.0, 40.0]) == expected


@pytest.mark.parametrize("build", [
    lambda: GaussianMixture(10**12, 3),
    lambda: GaussianMixture(1000, 100_000, "full", dtype=torch.float64),
    lambda: HiddenMarkov(10**7, 3),
])
def test_sizes_no_machine_holds_are_refused_at_construction(build):
    with pytest.raises(ValueError, match=r"needs [\d,.]+ GiB for its parameters alone .*, "
                                         r"more than the [\d,.]+ GiB of memory of cpu"):
        build()


def test_sizes_beyond_this_machines_memory_are_refused(monkeypatch):
    monkeypatch.setattr(validation, "_device_memory", lambda device: 16 * 2**30)
    with pytest.raises(ValueError, match=r"GaussianMixture\(n_components=1000000000, "
                                         r"n_features=3, covariance_type='diag'\) needs 26.1 GiB"):
        GaussianMixture(10**9, 3)
    assert GaussianMixture(1000, 3).n_components == 1000  # ordinary sizes are untouched
    with torch.device("meta"):  # a skeleton allocates nothing: no check
        assert GaussianMixture(10**9, 3).means.is_meta


def test_init_current_on_an_unfitted_model_says_so():
    X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    with pytest.raises(NotFittedError, match="init='current' continues from the model's "
                                             "current parameters, but this HiddenMarkov"):
        HiddenMarkov(2, 2).fit(X, init="current", max_iter=2)
    model = GaussianMixture(2, 2)
    with pytest.warns(UserWarning, match="init='current' on an unfitted .* construction values"):
        model.fit(X, init="current", max_iter=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="init='current'")  # fitted now: no warning
        model.fit(X, init="current", max_iter=2)


@pytest.mark.parametrize("scale, message", [
    (1e39, r"X holds values up to 1e\+39, out of range for torch.float32 .* standardise"),
    (1e30, r"X holds values up to 1e\+30, too large for torch.float32 arithmetic .*float64"),
])
def test_values_beyond_float32_are_named_as_such(scale, message):
    X = np.random.default_rng(0).normal(size=(50, 2))
    X[0, 0] = scale
    model = GaussianMixture(2, 2).fit(np.random.default_rng(1).normal(size=(50, 2)))
    for call in (lambda: GaussianMixture(2, 2).fit(X), lambda: model.score(X),
                 lambda: model.predict_proba(X)):
        with pytest.raises(ValueError, match=message):
            call()
    # float64 holds them: the same data fit there
    GaussianMixture(2, 2, dtype=torch.float64).fit(X / scale * 1e3, max_iter=3)


def test_cases_the_sweep_reported_name_their_argument():
    """bench/robustness_sweep.py: bic/aic check X before taking its length, a seed out of
    torch's range is named, a sample too large for memory is refused before allocating."""
    X = np.random.default_rng(0).normal(size=(40, 2))
    model = GaussianMixture(2, 2).fit(X, random_state=0)
    for method in (model.bic, model.aic):
        with pytest.raises(TypeError, match="X"):
            method(None)
    with pytest.raises(ValueError, match=r"random_state must be in \[0, 2\*\*64 - 1\]"):
        GaussianMixture(2, 2).fit(X, random_state=2**70)
    with pytest.raises(TypeError, match="random_state must be None, an int or a torch"):
        GaussianMixture(2, 2).fit(X, random_state="abc")
    with pytest.raises(ValueError, match=r"n_samples=1000000000000 needs .* GiB for the samples"):
        model.sample(10**12)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_an_absent_device_is_named():
    for model_class in (GaussianMixture, HiddenMarkov):
        with pytest.raises(ValueError, match="device 'cuda:7' was asked for, but this "
                                             "machine has cpu"):
            model_class(2, 2, device="cuda:7")
