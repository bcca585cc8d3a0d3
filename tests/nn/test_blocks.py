"""The neural blocks against torch.distributions, brute force and their own invariants."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cerebrum import HiddenMarkov
from cerebrum.mixtures import hmm_inference
from cerebrum.nn import (
    Decoder,
    DraftScorer,
    Encoder,
    MixtureDecoder,
    RecurrentNetwork,
    TimeSeriesTransformer,
    TinyDiffusionBlock,
    gaussian_kl,
    gaussian_log_prob,
)


def test_gaussian_helpers_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    x, mu, mu2 = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    lv, lv2 = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    other = torch.distributions.Normal(mu2, torch.exp(0.5 * lv2))
    torch.testing.assert_close(gaussian_log_prob(x, mu, lv), normal.log_prob(x).sum(-1))
    torch.testing.assert_close(gaussian_kl(mu, lv, mu2, lv2),
                               torch.distributions.kl_divergence(normal, other).sum(-1))
    standard = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, lv),
                               torch.distributions.kl_divergence(normal, standard).sum(-1))


def test_encoder_decoder_shapes_and_clamping():
    enc = Encoder(5, 16, 3)
    with torch.no_grad():
        enc.head.bias.fill_(100.0)
    mu, logvar = enc(torch.randn(2, 7, 5))
    assert mu.shape == logvar.shape == (2, 7, 3) and float(logvar.detach().max()) == 10.0
    assert Encoder(5, 16, 3, variational=False)(torch.randn(4, 5)).shape == (4, 3)
    out = Decoder(3, 16, 5, output_activation="sigmoid")(mu)
    assert out.shape == (2, 7, 5) and bool(((out > 0) & (out < 1)).all())
    with pytest.raises(ValueError, match="output_activation"):
        Decoder(3, 16, 5, output_activation="tanh")


def test_mixture_decoder_normalises_weights_and_clamps_variances():
    dec = MixtureDecoder(4, 16, 2, n_mix=3, n_groups=5, min_variance=0.5, max_variance=2.0)
    params = dec(torch.randn(6, 4) * 50)
    assert params.log_weights.shape == (6, 5, 3) and params.means.shape == (6, 5, 3, 2)
    torch.testing.assert_close(params.log_weights.exp().sum(-1), torch.ones(6, 5))
    assert float(params.logvar.detach().min()) >= math.log(0.5) - 1e-6
    assert float(params.logvar.detach().max()) <= math.log(2.0) + 1e-6
    x = torch.randn(6, 2)
    manual = torch.logsumexp(params.log_weights + gaussian_log_prob(
        x[:, None, None], params.means, params.logvar), -1)
    torch.testing.assert_close(params.log_prob(x[:, None, :]), manual)


def test_recurrent_network_is_causal():
    net = RecurrentNetwork(3, 8, 4, cell="lstm")
    x = torch.randn(2, 10, 3)
    base = net(x)
    changed = x.clone()
    changed[:, 6] += 5.0
    after = net(changed)
    torch.testing.assert_close(after.transitions[:, :7], base.transitions[:, :7])
    torch.testing.assert_close(after.emissions[:, :6], base.emissions[:, :6])
    assert not torch.allclose(after.emissions[:, 6], base.emissions[:, 6])
    torch.testing.assert_close(base.transitions.exp().sum(-1), torch.ones(2, 10, 4))


def test_rnn_hmm_forward_equals_hidden_markov_when_the_rnn_is_constant():
    """Zero the RNN heads' weights and put fixed GMM-HMM parameters in their biases: the
    differentiable forward pass over its outputs must equal HiddenMarkov.log_likelihoods."""
    rng = np.random.default_rng(0)
    S, M, D = 3, 2, 2
    start, trans = rng.dirichlet(np.ones(S)), rng.dirichlet(np.ones(S), size=S)
    weights = rng.dirichlet(np.ones(M), size=S)
    means, variances = rng.normal(size=(S, M, D)), rng.uniform(0.5, 2.0, size=(S, M, D))
    hmm = HiddenMarkov.from_params(start, trans, weights, means, variances,
                                   covariance_type="diag", dtype=torch.float64)
    net = RecurrentNetwork(D, 8, S, n_mix=M).double()
    with torch.no_grad():
        for head in (net.to_start, net.to_transitions, net.to_emissions):
            head.weight.zero_()
        net.to_start.bias.copy_(torch.as_tensor(np.log(start)))
        net.to_transitions.bias.copy_(torch.as_tensor(np.log(trans)).reshape(-1))
        net.to_emissions.bias.copy_(torch.as_tensor(np.concatenate(
            [np.log(weights).ravel(), means.ravel(), np.log(variances).ravel()])))
    X, _ = hmm.sample(12, n_sequences=4, random_state=0)
    params = net(torch.as_tensor(X))
    _, log_lik = hmm_inference.forward(params.start, params.transitions, params.emissions,
                                       torch.full((4,), 12))
    np.testing.assert_allclose(log_lik.detach().numpy(), hmm.log_likelihoods(X), rtol=1e-10)
    log_lik.sum().backward()
    assert net.to_emissions.bias.grad is not None


def test_transformer_masks_padding_and_future():
    model = TimeSeriesTransformer(3, 16, 4, 2, 5, target_dim=5).eval()
    src, tgt = torch.randn(2, 6, 3), torch.randn(2, 4, 5)
    lengths = torch.tensor([6, 4])
    base = model(src, tgt, src_lengths=lengths)
    noisy = src.clone()
    noisy[1, 4:] = 1e3  # padding of sequence 1
    torch.testing.assert_close(model(noisy, tgt, src_lengths=lengths)[1], base[1])
    later = tgt.clone()
    later[:, 2:] += 1.0  # the decoder is causal: steps 0, 1 cannot see steps 2, 3
    torch.testing.assert_close(model(src, later, src_lengths=lengths)[:, :2], base[:, :2])
    assert model(src).shape == (2, 6, 5)
    with pytest.raises(ValueError, match="divisible"):
        TimeSeriesTransformer(3, 10, 4, 1, 5)


def test_draft_scorer_nll_is_the_teacher_forced_cross_entropy_and_causal():
    scorer = DraftScorer(vocab_size=9, plan_dim=4, d_model=16, nhead=2).eval()
    drafts = torch.randint(0, 9, (3, 5), generator=torch.Generator().manual_seed(0))
    plan = torch.randn(3, 2, 4)
    logits, nll = scorer(drafts, plan)
    manual = -torch.log_softmax(logits, -1).gather(-1, drafts[..., None]).squeeze(-1).sum(1)
    torch.testing.assert_close(nll, manual)
    changed = drafts.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 9
    torch.testing.assert_close(scorer(changed, plan)[0][:, :4], logits[:, :4])


def test_tiny_diffusion_block_is_a_small_residual_step():
    block = TinyDiffusionBlock(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(block(x), x + 0.1 * block.f(x))
    assert isinstance(block.f, nn.Sequential)
