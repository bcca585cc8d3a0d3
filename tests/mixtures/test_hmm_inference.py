"""Log-space HMM inference against brute-force enumeration, and parallel equal to sequential."""

import itertools
import math

import numpy as np
import pytest
import torch

from cerebrum.mixtures import hmm_inference as inference


def random_model(rng, n_states, batch, n_steps):
    start = rng.dirichlet(np.ones(n_states))
    trans = rng.dirichlet(np.ones(n_states), size=n_states)
    log_emit = rng.normal(scale=2.0, size=(batch, n_steps, n_states))
    return (torch.as_tensor(np.log(start)), torch.as_tensor(np.log(trans)),
            torch.as_tensor(log_emit))


def brute_force(log_start, log_trans, log_emit, length):
    """Every path of one sequence: log-likelihood, posteriors, best path and its score."""
    n_states = log_start.shape[0]
    scores = {}
    for path in itertools.product(range(n_states), repeat=length):
        score = log_start[path[0]] + log_emit[0, path[0]]
        for t in range(1, length):
            score = score + log_trans[path[t - 1], path[t]] + log_emit[t, path[t]]
        scores[path] = float(score)
    values = np.array(list(scores.values()))
    log_likelihood = np.logaddexp.reduce(values)
    gamma = np.zeros((length, n_states))
    for path, score in scores.items():
        gamma[np.arange(length), list(path)] += math.exp(score - log_likelihood)
    best = max(scores, key=scores.get)
    return log_likelihood, gamma, np.array(best), scores[best]


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 4])
@pytest.mark.parametrize("n_states", [1, 2, 3])
def test_padded_batch_matches_enumeration(n_states, chunk_size):
    rng = np.random.default_rng(n_states)
    lengths = torch.tensor([6, 1, 4, 5])
    log_start, log_trans, log_emit = random_model(rng, n_states, len(lengths), 6)
    gamma, log_lik = inference.posteriors(log_start, log_trans, log_emit, lengths, chunk_size)
    path, best = inference.viterbi(log_start, log_trans, log_emit, lengths, chunk_size)
    for b, length in enumerate(lengths.tolist()):
        ref_ll, ref_gamma, ref_path, ref_best = brute_force(
            log_start, log_trans, log_emit[b], length
        )
        assert float(log_lik[b]) == pytest.approx(ref_ll, rel=1e-12)
        np.testing.assert_allclose(gamma[b, :length].numpy(), ref_gamma, atol=1e-12)
        assert torch.all(gamma[b, length:] == 0)
        np.testing.assert_allclose(gamma[b, :length].sum(-1).numpy(), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(path[b, :length].numpy(), ref_path)
        assert torch.all(path[b, length:] == -1)
        assert float(best[b]) == pytest.approx(ref_best, rel=1e-12)


@pytest.mark.parametrize("chunk_size", [3, 7, 50])
def test_chunked_equals_sequential_on_long_sequences(chunk_size):
    rng = np.random.default_rng(10)
    lengths = torch.tensor([500, 317, 1, 499])
    log_start, log_trans, log_emit = random_model(rng, 5, len(lengths), 500)
    sequential = {}
    for name, semiring in (("log", "log"), ("max", "max")):
        alpha, total = inference.forward(log_start, log_trans, log_emit, lengths, semiring,
                                         chunk_size=10**9)
        beta = inference.backward(log_trans, log_emit, lengths, semiring, chunk_size=10**9)
        sequential[name] = (alpha, total, beta)
    for name, semiring in (("log", "log"), ("max", "max")):
        alpha, total = inference.forward(log_start, log_trans, log_emit, lengths, semiring,
                                         chunk_size=chunk_size)
        beta = inference.backward(log_trans, log_emit, lengths, semiring, chunk_size=chunk_size)
        ref_alpha, ref_total, ref_beta = sequential[name]
        torch.testing.assert_close(alpha, ref_alpha, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(total, ref_total, rtol=1e-12, atol=0)
        torch.testing.assert_close(beta, ref_beta, rtol=1e-10, atol=1e-10)
    path, _ = inference.viterbi(log_start, log_trans, log_emit, lengths, chunk_size)
    ref_path, _ = inference.viterbi(log_start, log_trans, log_emit, lengths, 10**9)
    torch.testing.assert_close(path, ref_path)


def test_padded_sequence_equals_it_alone():
    rng = np.random.default_rng(11)
    log_start, log_trans, log_emit = random_model(rng, 4, 1, 300)
    alone, _ = inference.posteriors(log_start, log_trans, log_emit[:, :120], torch.tensor([120]))
    padded, _ = inference.posteriors(log_start, log_trans, log_emit, torch.tensor([120]))
    torch.testing.assert_close(padded[:, :120], alone, rtol=1e-10, atol=1e-12)


def test_one_million_steps_is_finite_in_float32():
    rng = np.random.default_rng(12)
    n_steps, n_states = 1_000_000, 16
    log_start, log_trans, _ = random_model(rng, n_states, 1, 1)
    log_emit = torch.randn(1, n_steps, n_states, generator=torch.Generator().manual_seed(0))
    _, log_lik = inference.forward(
        log_start.float(), log_trans.float(), log_emit, torch.tensor([n_steps])
    )
    assert torch.isfinite(log_lik).all()
    # Against float64 on a prefix we can afford sequentially.
    prefix = log_emit[:, :2000].double()
    _, exact = inference.forward(log_start, log_trans, prefix, torch.tensor([2000]),
                                 chunk_size=10**9)
    _, fast = inference.forward(log_start.float(), log_trans.float(), prefix.float(),
                                torch.tensor([2000]))
    assert float(fast) == pytest.approx(float(exact), rel=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 16, 1000])
def test_scaled_forward_backward_equals_log_space(chunk_size):
    """The probability-space E step (any chunking) against the log-space one, on a padded
    batch; the two share no recursion code."""
    rng = np.random.default_rng(5)
    lengths = torch.tensor([300, 1, 57, 299, 2])
    log_start, log_trans, log_emit = random_model(rng, 4, len(lengths), 300)
    exact = inference.log_space_expectations(log_start, log_trans, log_emit, lengths, 7)
    fast = inference.forward_backward(
        log_start, log_trans, log_emit.permute(2, 0, 1), lengths, chunk_size
    )
    np.testing.assert_allclose(fast.log_likelihood, exact.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(fast.posteriors.permute(1, 2, 0), exact.posteriors, atol=1e-12)
    np.testing.assert_allclose(fast.transitions, exact.transitions, rtol=1e-10)
    assert float(fast.transitions.sum()) == pytest.approx(float((lengths - 1).sum()), rel=1e-12)
    scores = inference.log_likelihood(
        log_start, log_trans, log_emit.permute(2, 0, 1), lengths, chunk_size
    )
    np.testing.assert_allclose(scores, exact.log_likelihood, rtol=1e-12)


def test_time_varying_transitions_match_enumeration():
    """Transitions that change in time (B, T, S, S), as a recurrent network produces them:
    the forward log-likelihood equals the sum over all S^T paths, and constant ones equal the
    fixed-matrix recursion."""
    gen = torch.Generator().manual_seed(5)
    B, T, S = 3, 5, 3
    log_start = torch.log_softmax(torch.randn(B, S, generator=gen, dtype=torch.float64), -1)
    log_trans = torch.log_softmax(torch.randn(B, T, S, S, generator=gen, dtype=torch.float64),
                                  -1)
    log_emit = torch.randn(B, T, S, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    for chunk_size in (None, 2):
        _, log_lik = inference.forward(log_start, log_trans, log_emit, lengths,
                                           chunk_size=chunk_size)
        for b in range(B):
            n = int(lengths[b])
            terms = []
            for path in itertools.product(range(S), repeat=n):
                value = log_start[b, path[0]] + log_emit[b, 0, path[0]]
                for t in range(1, n):
                    value = (value + log_trans[b, t, path[t - 1], path[t]]
                             + log_emit[b, t, path[t]])
                terms.append(value)
            assert float(log_lik[b]) == pytest.approx(float(torch.logsumexp(
                torch.stack(terms), 0)), rel=1e-12)
    fixed = log_trans[0, 1]
    _, expected = inference.forward(log_start, fixed, log_emit, lengths)
    _, varying = inference.forward(log_start, fixed.expand(B, T, S, S), log_emit, lengths)
    torch.testing.assert_close(varying, expected)
