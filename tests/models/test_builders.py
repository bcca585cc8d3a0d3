"""MMModel (every variant from one config) and MMTransformer (mixture-of-experts density)."""

import numpy as np
import pytest
import torch

from cerebrum.models.builders import KINDS, MMModel, MMTransformer

SMALL = dict(input_dim=3, hidden_dim=16, z_dim=2, rnn_hidden=16, num_states=2, n_mix=2,
             trans_d_model=8, trans_nhead=2)


def wave_data(n=24, t=10, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(t)
    return np.stack([np.stack([np.sin(steps / 2 + p), np.cos(steps / 2 + p),
                               rng.normal(size=t) * 0.1], -1)
                     for p in rng.uniform(0, 6, size=n)]).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_every_variant_trains_and_scores(kind):
    torch.manual_seed(0)
    X = wave_data()
    model = MMModel(kind=kind, **SMALL).fit(X, epochs=15, lr=1e-2, batch_size=8,
                                             random_state=0, validation_split=0.0)
    losses = model.history_["train_loss"]
    assert losses[-1] < losses[0]
    scores = model.log_likelihoods(X[:3], n_samples=8)
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_classical_variants_equal_the_classical_models():
    torch.manual_seed(0)
    X = wave_data(4, 6)
    hmm = MMModel(kind="hmm", **SMALL).fit(X, epochs=2, random_state=0, validation_split=0.0)
    np.testing.assert_allclose(hmm.log_likelihoods(X), hmm.model.log_likelihoods(X),
                               rtol=1e-5)
    gmm = MMModel(kind="gmm", **SMALL).fit(X, epochs=2, random_state=0, validation_split=0.0)
    per_frame = gmm.model.score_samples(X.reshape(-1, 3)).reshape(4, 6).sum(1)
    np.testing.assert_allclose(gmm.log_likelihoods(X), per_frame, rtol=1e-5)


def test_mmtransformer_is_causal_and_one_expert_is_one_gaussian():
    torch.manual_seed(0)
    model = MMTransformer(3, n_experts=3, d_model=8, nhead=2).eval()
    x = torch.randn(2, 7, 3)
    base = model(x)
    changed = x.clone()
    changed[:, 4] += 3.0
    after = model(changed)
    torch.testing.assert_close(after[:, :4], base[:, :4])  # steps before 4 cannot see it
    assert not torch.allclose(after[:, 5], base[:, 5])
    single = MMTransformer(3, n_experts=1, d_model=8, nhead=2).eval()
    h = single.body(torch.cat([single.first.expand(2, 1, -1), x[:, :-1]], 1))
    mean, logvar = single.experts[0](h).chunk(2, -1)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * logvar.clamp(
        single.min_logvar, 10.0))).log_prob(x).sum(-1)
    torch.testing.assert_close(single(x), expected)


def test_bad_configs():
    with pytest.raises(ValueError, match="kind must be one of 'vae', 'mdn'"):
        MMModel(kind="gan", input_dim=3)
    with pytest.raises(ValueError, match="divisible"):
        MMModel(kind="vae", input_dim=3, trans_d_model=10, trans_nhead=4)
    with pytest.raises(ValueError, match=r"x must be \(B, T, 3\)"):
        MMModel(kind="mdn", **SMALL).loss(torch.zeros(2, 4, 5))
