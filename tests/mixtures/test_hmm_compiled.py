"""The compiled CPU recursions against the PyTorch ones of `hmm_inference` (themselves checked
against brute-force enumeration in test_hmm_inference.py)."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum._util.sequences import SequenceBatch
from cerebrum.exceptions import ConvergenceWarning
from cerebrum.mixtures import HiddenMarkov
from cerebrum.mixtures import _hmm_compiled as compiled
from cerebrum.mixtures import hmm_inference as inference

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


def _signatures():
    return {kernel.__name__: set(kernel.signatures) for kernel in compiled.kernels()}


def test_warm_up_compiles_every_specialisation_a_fit_uses():
    """After warm_up, fitting, scoring and decoding in float32 and float64 add no new
    specialisation, so a first timed fit pays no compilation (however warm_up got them:
    compiled, loaded from numba's cache, or already present in this process)."""
    result = compiled.warm_up()
    assert result.compiled >= 0 and result.loaded >= 0 and result.seconds >= 0
    assert result.cache_dir == compiled.cache_dir()
    warmed = _signatures()
    assert set(warmed) == {"_log_likelihood_kernel", "_forward_backward_kernel",
                           "_viterbi_kernel"}
    for name, signatures in warmed.items():
        assert {sig[2].dtype.name for sig in signatures} >= {"float32", "float64"}, name
    X = torch.randn(6, 7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for dtype in compiled.DTYPES:
        model = HiddenMarkov(2, 2, n_mix=2, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # two iterations are enough
            model.fit(X, max_iter=2, tol=0)
        model.score(X)
        model.decode(X)
        model.predict_proba([X[0, :3], X[1]])
    assert _signatures() == warmed
    again = compiled.warm_up()
    assert (again.compiled, again.loaded) == (0, 0)


def test_demo_reports_the_warm_up_and_the_cache_it_used(monkeypatch):
    from cerebrum import demo

    def reporting(*result):
        monkeypatch.setattr(compiled, "warm_up", lambda dtypes=None: compiled.WarmUp(*result))
        return demo.warm_up_hmm_kernels()

    line = reporting(4.31, 6, 0, "/cache/mixtures_ab12")
    assert line.startswith("compiled the HMM kernels in 4.3 s") and "/cache/mixtures_ab12" in line
    assert "every process" in reporting(4.31, 6, 0, None)
    line = reporting(0.24, 0, 6, "/cache/mixtures_ab12")
    assert line.startswith("loaded the compiled HMM kernels from numba's cache in 0.2 s")
    assert "/cache/mixtures_ab12" in line
    assert "already compiled" in reporting(0.01, 0, 0, "/cache/mixtures_ab12")
