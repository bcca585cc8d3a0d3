"""The compiled CPU recursions against the PyTorch ones of `hmm_inference` (themselves checked
against brute-force enumeration in test_hmm_inference.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum.mixtures import _hmm_compiled as compiled
from cerebrum.mixtures import hmm_inference as inference
from cerebrum.mixtures._sequences import SequenceBatch

pytestmark = pytest.mark.skipif(not compiled.ENABLED, reason="numba not installed")


def random_problem(seed, n_states, lengths, dtype, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    log_start = torch.log_softmax(torch.randn(n_states, generator=gen, dtype=dtype), 0)
    log_trans = torch.log_softmax(
        2 * torch.randn(n_states, n_states, generator=gen, dtype=dtype), 1)
    lengths = torch.tensor(lengths)
    log_b = spread * torch.randn(n_states, int(lengths.sum()), generator=gen, dtype=dtype)
    batch = SequenceBatch(torch.zeros(int(lengths.sum()), 1, dtype=dtype), lengths)
    return log_start, log_trans, log_b, batch


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_states=st.integers(1, 5),
       lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_compiled_equals_pytorch_recursions(seed, n_states, lengths):
    log_start, log_trans, log_b, batch = random_problem(seed, n_states, lengths, torch.float64)
    padded = batch.pad(log_b)  # (S, B, T)
    gamma, counts, log_lik, ok = compiled.forward_backward(
        log_start, log_trans, log_b, batch.lengths)
    assert bool(ok.all())
    ref = inference.forward_backward(log_start, log_trans, padded, batch.lengths)
    torch.testing.assert_close(gamma, batch.unpad(ref.posteriors), rtol=0, atol=1e-12)
    torch.testing.assert_close(counts, ref.transitions, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_lik, ref.log_likelihood, rtol=1e-12, atol=1e-10)
    forward_only, ok = compiled.log_likelihood(log_start, log_trans, log_b, batch.lengths)
    assert bool(ok.all())
    torch.testing.assert_close(forward_only, ref.log_likelihood, rtol=1e-12, atol=1e-10)
    paths, best = compiled.viterbi(log_start, log_trans, log_b, batch.lengths)
    ref_paths, ref_best = inference.viterbi(
        log_start, log_trans, padded.permute(1, 2, 0), batch.lengths)
    torch.testing.assert_close(paths, batch.unpad(ref_paths))
    torch.testing.assert_close(best, ref_best, rtol=1e-12, atol=1e-10)


def test_float32_input_gives_float32_results_close_to_float64():
    problem = random_problem(0, 4, [500, 3, 200], torch.float64)
    log_start, log_trans, log_b, batch = problem
    exact = compiled.forward_backward(log_start, log_trans, log_b, batch.lengths)
    single = compiled.forward_backward(log_start.float(), log_trans.float(), log_b.float(),
                                       batch.lengths)
    assert [t.dtype for t in single[:3]] == [torch.float32] * 3
    torch.testing.assert_close(single[0].double(), exact[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(single[2].double(), exact[2], rtol=1e-6, atol=0)


def test_a_step_below_float64_scaling_marks_only_its_sequence():
    """State 0 cannot leave itself; a frame 1000 nats more likely elsewhere leaves a forward
    normaliser of exp(-1000), which float64 scaling cannot hold: that sequence is marked."""
    log_start = torch.tensor([0.0, -torch.inf], dtype=torch.float64)
    log_trans = torch.tensor([[0.0, -torch.inf], [-0.7, -0.7]], dtype=torch.float64)
    log_b = torch.zeros(2, 6, dtype=torch.float64)
    log_b[0, 1] = -1000.0
    lengths = torch.tensor([3, 3])
    log_lik, ok = compiled.log_likelihood(log_start, log_trans, log_b, lengths)
    assert ok.tolist() == [False, True]
    assert log_lik[1] == pytest.approx(0.0)
    assert compiled.forward_backward(log_start, log_trans, log_b, lengths)[3].tolist() == [
        False, True]


def test_usable_only_for_cpu_tensors_without_gradient():
    x = torch.zeros(3)
    assert compiled.usable(x)
    assert not compiled.usable(x.requires_grad_())
    assert not compiled.usable(torch.zeros(3, dtype=torch.float16))


def test_one_million_steps_with_16_states_stay_finite_in_float32():
    log_start, log_trans, log_b, batch = random_problem(1, 16, [1_000_000], torch.float32)
    log_lik, ok = compiled.log_likelihood(log_start, log_trans, log_b, batch.lengths)
    assert bool(ok.all()) and torch.isfinite(log_lik).all()
    exact, _ = compiled.log_likelihood(log_start.double(), log_trans.double(), log_b.double(),
                                       batch.lengths)
    torch.testing.assert_close(log_lik.double(), exact, rtol=1e-6, atol=0)
