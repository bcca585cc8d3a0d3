"""HiddenMarkov against hmmlearn, brute-force enumeration and its own invariants."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum import ConvergenceWarning, HiddenMarkov, NotFittedError
from cerebrum.mixtures import _hmm_compiled as compiled
from cerebrum.mixtures import hmm_inference as inference

hmmlearn = pytest.importorskip("hmmlearn.hmm")


def random_params(rng, n_states, n_mix, n_features, covariance_type, spread=3.0):
    startprob = rng.dirichlet(np.ones(n_states))
    transmat = rng.dirichlet(np.ones(n_states) * 3, size=n_states)
    weights = rng.dirichlet(np.ones(n_mix) * 2, size=(n_states,))
    means = rng.normal(scale=spread, size=(n_states, n_mix, n_features))
    if covariance_type == "diag":
        covariances = rng.uniform(0.5, 2.0, size=(n_states, n_mix, n_features))
    elif covariance_type == "spherical":
        covariances = rng.uniform(0.5, 2.0, size=(n_states, n_mix))
    else:
        shape = (n_states, n_features, n_features) if covariance_type == "tied" else (
            n_states, n_mix, n_features, n_features)
        factor = rng.normal(size=shape)
        covariances = factor @ np.swapaxes(factor, -1, -2) / n_features + np.eye(n_features)
    return startprob, transmat, weights, means, covariances


def reference_model(params, covariance_type, letters, n_iter=10):
    """hmmlearn set to the same parameters with its M step equal to plain maximum likelihood."""
    startprob, transmat, weights, means, covariances = params
    n_states, n_mix = weights.shape
    if n_mix == 1:
        ref = hmmlearn.GaussianHMM(
            n_components=n_states, covariance_type=covariance_type, n_iter=n_iter, tol=0.0,
            init_params="", params=letters.replace("w", ""), covars_prior=0.0,
            covars_weight=1.0 if covariance_type == "diag" else 0.0,
        )
        ref.means_, ref.covars_ = means[:, 0], covariances[:, 0]
    else:
        ref = hmmlearn.GMMHMM(
            n_components=n_states, n_mix=n_mix, covariance_type=covariance_type, n_iter=n_iter,
            tol=0.0, init_params="", params=letters,
        )
        ref.weights_, ref.means_, ref.covars_ = weights, means, covariances
    ref.startprob_, ref.transmat_ = startprob, transmat
    return ref


@pytest.fixture(params=["compiled", "pytorch"])
def backend(request, monkeypatch):
    """Run a test with the compiled CPU recursions and again with the PyTorch ones."""
    if request.param == "compiled" and not compiled.ENABLED:
        pytest.skip("numba not installed")
    monkeypatch.setattr(compiled, "ENABLED", request.param == "compiled")
    return request.param


@pytest.fixture
def sequences():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(520, 3)) * 1.5
    X[:260] += 2.0
    return X, [150, 150, 1, 139, 80]


# hmmlearn's GMMHMM takes the covariance update about the previous means (a generalised EM
# step), where exact EM uses the updated means, so with both "m" and "c" the two part ways after
# the first iteration. Each of the two is compared on its own, and GaussianHMM on everything.
@pytest.mark.parametrize(
    ("n_mix", "letters"), [(1, "stmc"), (2, "stmw"), (2, "stcw")]
)
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_em_matches_hmmlearn_per_iteration(backend, sequences, covariance_type, n_mix, letters):
    X, lengths = sequences
    params = random_params(np.random.default_rng(1), 3, n_mix, 3, covariance_type)
    ref = reference_model(params, covariance_type, letters)
    ours = HiddenMarkov.from_params(*params, covariance_type=covariance_type,
                                    dtype=torch.float64)
    np.testing.assert_allclose(ours.score(X, lengths), ref.score(X, lengths), rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X, lengths), ref.predict_proba(X, lengths),
                               atol=1e-10)
    logprob, states = ours.decode(X, lengths)
    ref_logprob, ref_states = ref.decode(X, lengths)
    np.testing.assert_allclose(logprob, ref_logprob, rtol=1e-12)
    np.testing.assert_array_equal(states, ref_states)

    ref.fit(X, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, lengths, init="current", max_iter=10, tol=0.0, reg_covar=0.0,
                 params=letters)
    assert ours.n_iter_ == 10
    np.testing.assert_allclose(ours.history_, ref.monitor_.history, rtol=1e-6)
    np.testing.assert_allclose(ours.get_transmat(), ref.transmat_, atol=1e-8)
    np.testing.assert_allclose(ours.get_startprob(), ref.startprob_, atol=1e-8)
    ref_means = ref.means_ if n_mix > 1 else ref.means_[:, None]
    np.testing.assert_allclose(ours.get_means(), ref_means, atol=1e-7)
    ref_covars = ref.covars_ if n_mix > 1 else (
        ref._covars_[:, None] if covariance_type == "diag" else ref.covars_[:, None])
    np.testing.assert_allclose(ours.get_variances(), ref_covars, atol=1e-7)


@pytest.mark.parametrize(("n_mix", "covariance_type"),
                         [(1, "diag"), (1, "full"), (1, "spherical"), (2, "diag"), (2, "full"),
                          (2, "spherical"), (2, "tied")])
def test_parameter_count_matches_hmmlearn(sequences, n_mix, covariance_type):
    X, lengths = sequences
    params = random_params(np.random.default_rng(2), 3, n_mix, 3, covariance_type)
    ours = HiddenMarkov.from_params(*params, covariance_type=covariance_type,
                                    dtype=torch.float64)
    if n_mix == 1:
        ref = hmmlearn.GaussianHMM(n_components=3, covariance_type=covariance_type)
        ref.means_ = params[3][:, 0]
        ref.covars_ = params[4][:, 0]
    else:
        ref = hmmlearn.GMMHMM(n_components=3, n_mix=n_mix, covariance_type=covariance_type)
        ref.weights_, ref.means_, ref.covars_ = params[2], params[3], params[4]
    ref.startprob_, ref.transmat_, ref.n_features = params[0], params[1], 3
    if n_mix == 1:
        np.testing.assert_allclose(ours.bic(X, lengths), ref.bic(X, lengths), rtol=1e-10)
        np.testing.assert_allclose(ours.aic(X, lengths), ref.aic(X, lengths), rtol=1e-10)
    # hmmlearn 0.3.3's GMMHMM counts the mixture weights as M - 1 in all, but every state has
    # its own M weights: S (M - 1) free parameters.
    hmmlearn_count = sum(ref._get_n_fit_scalars_per_param().values())
    assert ours.n_parameters == hmmlearn_count + (3 - 1) * (n_mix - 1)
    n_frames = sum(lengths)
    assert ours.bic(X, lengths) == pytest.approx(
        -2 * ours.score(X, lengths) + ours.n_parameters * math.log(n_frames), rel=1e-12)


def brute_force(model, x):
    """log p(x), posteriors and the best path of one short sequence by enumerating all paths."""
    startprob, transmat = model.get_startprob(), model.get_transmat()
    means, covariances, weights = model.get_means(), model.get_variances(), model.get_weights()
    n_states = len(startprob)

    def log_emission(state, frame):
        total = 0.0
        for m in range(weights.shape[1]):
            diff = frame - means[state, m]
            variance = covariances[state, m]
            density = np.exp(-0.5 * np.sum(diff**2 / variance)) / np.sqrt(
                np.prod(2 * np.pi * variance))
            total += weights[state, m] * density
        return math.log(total)

    scores = {}
    for path in itertools.product(range(n_states), repeat=len(x)):
        score = math.log(startprob[path[0]]) + log_emission(path[0], x[0])
        for t in range(1, len(x)):
            score += math.log(transmat[path[t - 1], path[t]]) + log_emission(path[t], x[t])
        scores[path] = score
    values = np.array(list(scores.values()))
    log_lik = np.logaddexp.reduce(values)
    gamma = np.zeros((len(x), n_states))
    for path, score in scores.items():
        gamma[np.arange(len(x)), list(path)] += math.exp(score - log_lik)
    best = max(scores, key=scores.get)
    return log_lik, gamma, np.array(best), scores[best]


def test_padded_batch_matches_enumeration(backend):
    rng = np.random.default_rng(3)
    params = random_params(rng, 3, 2, 2, "diag", spread=1.0)
    model = HiddenMarkov.from_params(*params, covariance_type="diag", dtype=torch.float64)
    seqs = [rng.normal(size=(n, 2)) for n in (5, 1, 3, 6)]
    log_liks = model.log_likelihoods(seqs)
    proba = model.predict_proba(seqs)
    _, states = model.decode(seqs)
    offset = 0
    for b, x in enumerate(seqs):
        ref_ll, ref_gamma, ref_path, _ = brute_force(model, x)
        assert log_liks[b] == pytest.approx(ref_ll, rel=1e-12)
        np.testing.assert_allclose(proba[offset:offset + len(x)], ref_gamma, atol=1e-12)
        np.testing.assert_array_equal(states[offset:offset + len(x)], ref_path)
        offset += len(x)
    assert model.score(seqs) == pytest.approx(sum(log_liks), rel=1e-12)


def fitted_model(dtype=torch.float64, covariance_type="diag", n_mix=2, seed=0):
    params = random_params(np.random.default_rng(seed), 3, n_mix, 2, covariance_type)
    return HiddenMarkov.from_params(*params, covariance_type=covariance_type, dtype=dtype)


def test_input_forms_agree():
    model = fitted_model()
    X, _ = model.sample(40, n_sequences=3, random_state=0)  # (3, 40, 2)
    flat = X.reshape(-1, 2)
    expected = model.log_likelihoods(X)
    np.testing.assert_allclose(model.log_likelihoods(list(X)), expected, rtol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods(flat, [40, 40, 40]), expected, rtol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods(torch.as_tensor(X)), expected, rtol=1e-12)
    # a padded (B, T, D) array with lengths equals the list of the unpadded sequences
    padded = X.copy()
    padded[1, 25:] = 1e6
    np.testing.assert_allclose(
        model.log_likelihoods(padded, lengths=[40, 25, 40]),
        model.log_likelihoods([X[0], X[1, :25], X[2]]), rtol=1e-12,
    )
    # one (T, D) array without lengths is one sequence
    assert model.log_likelihoods(X[0]).shape == (1,)


def test_padded_batch_equals_one_by_one_and_posteriors_sum_to_one(backend):
    model = fitted_model(torch.float32)
    rng = np.random.default_rng(4)
    seqs = [rng.normal(size=(n, 2)).astype(np.float32) * 3 for n in (300, 7, 1, 120)]
    together = model.log_likelihoods(seqs)
    alone = [model.log_likelihoods(x)[0] for x in seqs]
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    proba = model.predict_proba(seqs)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    _, states = model.decode(seqs)
    alone_states = np.concatenate([model.decode(x)[1] for x in seqs])
    np.testing.assert_array_equal(states, alone_states)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_mix=st.integers(1, 3),
       covariance_type=st.sampled_from(["diag", "full", "tied", "spherical"]))
def test_em_never_lowers_the_likelihood(seed, n_mix, covariance_type):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 2)) + np.repeat(rng.normal(scale=3, size=(4, 2)), 30, axis=0)
    model = HiddenMarkov(3, 2, n_mix=n_mix, covariance_type=covariance_type,
                         dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, [60, 40, 20], max_iter=15, tol=0.0, reg_covar=0.0, random_state=seed)
    history = np.array(model.history_)
    assert np.all(np.diff(history) >= -1e-8 * np.abs(history[1:]))


def test_sample_then_fit_recovers_the_model():
    truth = HiddenMarkov.from_params(
        [0.6, 0.3, 0.1],
        [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]],
        [[0.5, 0.5], [0.3, 0.7], [1.0, 0.0]],
        np.array([[[0, 0], [2, 0]], [[8, 8], [9, 6]], [[-8, 8], [-8, 8]]], float),
        np.full((3, 2, 2), 0.4), covariance_type="diag", dtype=torch.float64,
    )
    X, Z = truth.sample(400, n_sequences=10, random_state=0)
    assert X.shape == (10, 400, 2) and Z.shape == (10, 400)
    model = HiddenMarkov(3, 2, n_mix=2, dtype=torch.float64).fit(list(X), random_state=0)
    assert model.converged_
    assert model.score(X) >= truth.score(X) - 5.0  # the fit is at least as likely as the truth
    # states match up to a relabelling
    predicted = model.predict(X).reshape(10, 400)
    agreement = max(np.mean(np.array(perm)[predicted] == Z)
                    for perm in itertools.permutations(range(3)))
    assert agreement > 0.98
    order = np.argsort(model.get_means()[:, :, 0].mean(1))
    np.testing.assert_allclose(model.get_transmat()[np.ix_(order, order)],
                               truth.get_transmat()[np.ix_([2, 0, 1], [2, 0, 1])], atol=0.04)


def test_sample_is_reproducible_and_shaped():
    model = fitted_model(covariance_type="full")
    a, sa = model.sample(50, random_state=3)
    b, sb = model.sample(50, random_state=3)
    assert a.shape == (50, 2) and sa.shape == (50,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    # transitions of a long sample follow the transition matrix
    _, states = model.sample(20000, random_state=1)
    counts = np.zeros((3, 3))
    np.add.at(counts, (states[:-1], states[1:]), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), model.get_transmat(),
                               atol=0.03)


@pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")
def test_gradient_fit_approaches_em():
    model = fitted_model(seed=5)
    X, _ = model.sample(200, n_sequences=4, random_state=0)
    em = HiddenMarkov(3, 2, n_mix=2, dtype=torch.float64).fit(X, random_state=0)
    start = HiddenMarkov(3, 2, n_mix=2, dtype=torch.float64).fit(X, random_state=0, max_iter=1)
    before = start.score(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start.fit(X, method="gradient", init="current", max_iter=150, lr=0.03, tol=0.0)
    assert start.score(X) > before
    assert start.score(X) == pytest.approx(em.score(X), rel=0.01)


def test_params_letters_restrict_the_update():
    model = fitted_model()
    X, _ = model.sample(100, n_sequences=3, random_state=0)
    means, covariances = model.get_means(), model.get_variances()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, init="current", params="st", max_iter=3)
    np.testing.assert_allclose(model.get_means(), means, rtol=1e-12)  # centring round trip
    np.testing.assert_allclose(model.get_variances(), covariances, rtol=1e-12)


def test_n_init_keeps_the_best_run():
    model = fitted_model(seed=9)
    X, _ = model.sample(150, n_sequences=4, random_state=0)
    finals = []
    for seed in range(3):
        finals.append(HiddenMarkov(3, 2, dtype=torch.float64).fit(X, random_state=seed)
                      .history_[-1])
    best = HiddenMarkov(3, 2, dtype=torch.float64).fit(X, n_init=4, random_state=0)
    assert best.history_[-1] >= min(finals) - 1e-6


def test_convergence_warning_when_max_iter_is_reached():
    model = fitted_model()
    X, _ = model.sample(100, random_state=0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        HiddenMarkov(3, 2).fit(X, max_iter=1, random_state=0)


def test_underflow_fallback_in_float32_matches_float64(backend):
    """Emissions hundreds of nats apart push the scaled recursions below float32's range; the
    affected sequences are recomputed in log space and must agree with float64."""
    params = random_params(np.random.default_rng(11), 3, 1, 4, "diag", spread=30.0)
    params[1][0] = [0.999998, 1e-6, 1e-6]
    model32 = HiddenMarkov.from_params(*params, covariance_type="diag", dtype=torch.float32)
    model64 = HiddenMarkov.from_params(*params, covariance_type="diag", dtype=torch.float64)
    X = np.random.default_rng(12).normal(scale=30.0, size=(300, 4))
    np.testing.assert_allclose(model32.log_likelihoods(X, [200, 100]),
                               model64.log_likelihoods(X, [200, 100]), rtol=1e-5)
    np.testing.assert_allclose(model32.predict_proba(X, [200, 100]),
                               model64.predict_proba(X, [200, 100]), atol=1e-4)


def test_steps_beyond_float64_scaling_fall_back_to_log_space(backend):
    """A state that cannot leave itself and a frame 1000 nats more likely elsewhere: the scaled
    recursions (compiled or not) cannot represent the step, the exact log-space pass must."""
    model = HiddenMarkov.from_params(
        [1.0, 0.0], [[1.0, 0.0], [0.5, 0.5]], [[1.0], [1.0]], [[[0.0]], [[45.0]]],
        [[[1.0]], [[1.0]]], covariance_type="diag", dtype=torch.float64,
    )
    X = np.array([[0.0], [45.0], [0.0], [0.0], [45.0], [0.0]])
    with torch.no_grad():
        batch, params, log_b = model._emissions_of(X, [3, 3])
    _, expected = inference.forward(
        params.log_start, params.log_trans, batch.pad(log_b).permute(1, 2, 0), batch.lengths)
    np.testing.assert_allclose(model.log_likelihoods(X, [3, 3]), expected.numpy(), rtol=1e-12)
    assert np.isfinite(model.log_likelihoods(X, [3, 3])).all()
    np.testing.assert_allclose(model.predict_proba(X, [3, 3])[:, 0], 1.0)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"X": np.zeros((10, 2)), "lengths": [4, 4]}, "lengths sum to 8, but X has 10 rows"),
        ({"X": np.zeros((10, 2)), "lengths": [10, 0]}, r"lengths must be positive: lengths\[1\]"),
        ({"X": [np.zeros((3, 2)), np.zeros((0, 2))]}, r"X\[1\] is a sequence of length 0"),
        ({"X": np.zeros((10, 3))}, "X has 3 features, but this HiddenMarkov was built with"),
        ({"X": np.full((10, 2), np.nan)}, "X contains NaN or infinity"),
        ({"X": [np.zeros((3, 2))], "lengths": [3]}, "lengths must be None when X is a list"),
    ],
)
def test_bad_sequences_are_rejected(kwargs, message):
    model = fitted_model()
    with pytest.raises(ValueError, match=message):
        model.score(**kwargs)


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (1, [[0.5, 0.4, 0.0], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5]], r"transmat must sum to 1.*row 0"),
        (0, [1.2, -0.1, -0.1], "startprob must be non-negative"),
        (0, [0.5, 0.5], r"startprob must have shape \(3,\)"),
        (2, [[0.5, 0.6], [0.5, 0.5], [0.5, 0.5]], "weights must sum to 1"),
        (4, -np.ones((3, 2, 2)), "covariances must be positive"),
    ],
)
def test_bad_params_are_rejected(index, value, message):
    params = list(random_params(np.random.default_rng(0), 3, 2, 2, "diag"))
    params[index] = value
    with pytest.raises(ValueError, match=message):
        HiddenMarkov.from_params(*params, covariance_type="diag")


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="n_mix must be >= 1"):
        HiddenMarkov(3, 2, n_mix=0)
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        HiddenMarkov(3, 2, covariance_type="banded")
    with pytest.raises(NotFittedError, match="not fitted"):
        HiddenMarkov(3, 2).score(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="X has 2 frames, but n_components=3 needs"):
        HiddenMarkov(3, 2).fit(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="params may only contain the letters"):
        HiddenMarkov(3, 2).fit(np.zeros((5, 2)), params="stx")


def test_failed_fit_leaves_the_model_untouched():
    model = fitted_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    X = np.ones((50, 2))
    X[17, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.fit(X)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_log_prob_is_differentiable_and_matches_score():
    model = fitted_model()
    X, _ = model.sample(30, n_sequences=2, random_state=0)
    log_lik = model(torch.as_tensor(X))
    assert log_lik.shape == (2,)
    np.testing.assert_allclose(log_lik.detach().numpy(), model.log_likelihoods(X), rtol=1e-10)
    log_lik.sum().backward()
    assert model.means.grad is not None and torch.isfinite(model.means.grad).all()
    assert model.transition_logits.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu = fitted_model(torch.float64)
    X, _ = cpu.sample(500, n_sequences=3, random_state=0)
    gpu = fitted_model(torch.float64).to("cuda")
    np.testing.assert_allclose(gpu.log_likelihoods(X), cpu.log_likelihoods(X), rtol=1e-10)
    np.testing.assert_array_equal(gpu.decode(X)[1], cpu.decode(X)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu.fit(X, init="current", max_iter=5, tol=0.0)
        gpu.fit(X, init="current", max_iter=5, tol=0.0)
    np.testing.assert_allclose(gpu.history_, cpu.history_, rtol=1e-8)
