"""The calm network (seed 002): config checks, the autoencoder's round trip, the latent
model's causality, and what each loss trains."""

import pytest
import torch

from cerebrum.models.calm import (
    CALMConfig,
    LatentLM,
    TokenAutoencoder,
    autoencoder_loss,
    latent_loss,
)

TINY = dict(vocab_size=11, K=2, seq_z_steps=6, latent_dim=6, ae_width=16, ae_depth=1,
            d_model=16, n_layer=2, ssm_kernel=3, ssm_state=4, hop_mem_slots=5, head_width=16,
            head_depth=1, n_samples=3, n_targets=4)


@pytest.mark.parametrize(("fields", "error", "message"), [
    (dict(K=0), ValueError, "K must be >= 1, got 0"),
    (dict(K="4"), TypeError, "K must be an integer, got str"),
    (dict(loss_type="mse"), ValueError, "loss_type must be one of 'calm', 'rf', 'calm_rf', "
                                        "got 'mse'"),
    (dict(ssm="s4"), ValueError, "ssm must be one of 'conv', 'diag', got 's4'"),
    (dict(head="flow"), ValueError, "head must be one of 'gated', 'calm'"),
    (dict(lm_input="bytes"), ValueError, "lm_input must be one of 'z', 'tokens'"),
    (dict(rf_form="l1"), ValueError, "rf_form must be one of 'cos', 'mse'"),
    (dict(n_samples=1), ValueError, "n_samples must be >= 2, got 1"),
    (dict(alpha=2.0), ValueError, r"alpha must be in \(0.0, 2.0\), got 2.0"),
    (dict(token_dropout=1.0), ValueError, r"token_dropout must be in \[0.0, 1.0\)"),
    (dict(rf_weight=-0.1), ValueError, "rf_weight must be in"),
    (dict(hop_mem_slots=0), ValueError, "hop_mem_slots must be >= 1"),
])
def test_bad_settings_are_clear_errors(fields, error, message):
    with pytest.raises(error, match=message):
        CALMConfig(**{**TINY, **fields})


def test_the_autoencoder_round_trips_a_toy_vocabulary():
    """Every one of the 8^2 chunks of a toy vocabulary decodes back from its posterior mean
    after a short training, also with a little noise on z."""
    torch.manual_seed(0)
    config = CALMConfig(**{**TINY, "vocab_size": 8, "latent_dim": 8, "ae_width": 32,
                           "token_dropout": 0.0, "z_dropout": 0.0})
    ae = TokenAutoencoder(config)
    every = torch.cartesian_prod(torch.arange(8), torch.arange(8))  # (64, K=2)
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss, metrics = autoencoder_loss(ae, every, config, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["ae_acc"] == 1.0
    with torch.no_grad():
        assert torch.equal(ae.reconstruct(every), every)
        assert torch.equal(ae.reconstruct(every, 0.05, g), every)


def test_the_autoencoder_loss_is_cross_entropy_plus_the_floored_kl():
    torch.manual_seed(0)
    config = CALMConfig(**{**TINY, "token_dropout": 0.0, "z_dropout": 0.0, "kl_weight": 0.5,
                           "kl_free_bits": 0.3})
    ae = TokenAutoencoder(config)
    chunks = torch.randint(0, 11, (5, 3, 2))
    loss, metrics = autoencoder_loss(ae, chunks, config, torch.Generator().manual_seed(1))
    mu, log_std = ae.encode(chunks)
    z = mu + log_std.exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
    ce = torch.nn.functional.cross_entropy(ae.decode(z).reshape(-1, 11), chunks.reshape(-1))
    var = (2 * log_std).exp().reshape(-1, 6)
    kl = (0.5 * (mu.reshape(-1, 6) ** 2 + var - 1 - var.log())).mean(0)
    assert loss.item() == pytest.approx((ce + 0.5 * kl.clamp_min(0.3).sum()).item(), rel=1e-5)
    assert metrics["kl"].item() == pytest.approx(kl.sum().item(), rel=1e-5)


@pytest.mark.parametrize(("ssm", "lm_input", "head"), [
    ("conv", "z", "gated"), ("diag", "z", "calm"), ("conv", "tokens", "calm"),
    ("diag", "tokens", "gated")])
def test_the_latent_model_is_causal(ssm, lm_input, head):
    """h[t] (which predicts chunk t) depends on chunks 0..t-1 only: changing chunks from t0 on
    leaves h[0..t0] unchanged and changes h[t0 + 1]."""
    torch.manual_seed(0)
    config = CALMConfig(**{**TINY, "ssm": ssm, "lm_input": lm_input, "head": head})
    ae, lm = TokenAutoencoder(config), LatentLM(config)
    chunks = torch.randint(0, 11, (2, 6, 2))
    changed = chunks.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 11
    with torch.no_grad():
        h = lm(lm.inputs(chunks, ae.encode(chunks)[0]))
        h2 = lm(lm.inputs(changed, ae.encode(changed)[0]))
    assert h.shape == (2, 7, 16)
    assert torch.allclose(h[:, :4], h2[:, :4], atol=1e-6)
    assert not torch.allclose(h[:, 4], h2[:, 4])


def test_the_latent_loss_trains_the_latent_model_only_and_combines_its_terms():
    torch.manual_seed(0)
    config = CALMConfig(**TINY)
    ae, lm = TokenAutoencoder(config), LatentLM(config)
    chunks = torch.randint(0, 11, (3, 6, 2))
    losses = {}
    for loss_type in ("calm", "rf", "calm_rf"):
        cfg = CALMConfig(**{**TINY, "loss_type": loss_type})
        loss, metrics = latent_loss(ae, lm, chunks, cfg, torch.Generator().manual_seed(3))
        losses[loss_type] = (loss, metrics)
    loss, metrics = losses["calm_rf"]
    loss.backward()
    assert all(p.grad is None for p in ae.parameters())
    assert all(p.grad is not None for p in lm.head.parameters())
    calm, rf = losses["calm"][0], losses["rf"][0]
    assert loss.item() == pytest.approx(calm.item() + 0.1 * rf.item(), rel=1e-5)
    assert metrics["energy"].item() == pytest.approx(calm.item(), rel=1e-5)
    assert metrics["energy"].item() == pytest.approx(
        2 * metrics["d_fid"].item() - metrics["d_div"].item(), rel=1e-5)
    assert 0 < metrics["gate_mean"] < 1
    fid = [metrics[f"fid_q{q}"].item() for q in range(4)]
    # the buckets split the 6 positions 2, 2, 1, 1: their weighted mean is d_fid
    assert (2 * fid[0] + 2 * fid[1] + fid[2] + fid[3]) / 6 == pytest.approx(
        metrics["d_fid"].item(), rel=1e-5)


def test_the_conv_latent_models_last_state_depends_on_its_receptive_field_only():
    """Generation runs the blocks on the last n_layer (ssm_kernel - 1) + 1 inputs: the last
    hidden state equals the one computed on the whole sequence."""
    torch.manual_seed(0)
    lm = LatentLM(CALMConfig(**TINY))  # 2 layers, kernel 3: a field of 5
    assert lm.receptive_field == 5
    assert LatentLM(CALMConfig(**{**TINY, "ssm": "diag"})).receptive_field is None
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        assert torch.allclose(lm(x)[:, -1], lm(x[:, -5:])[:, -1], atol=1e-5)
        assert not torch.allclose(lm(x)[:, -1], lm(x[:, -4:])[:, -1], atol=1e-5)


@pytest.mark.parametrize("ssm", ["conv", "diag"])
def test_stepping_the_latent_model_equals_its_forward(ssm):
    torch.manual_seed(0)
    lm = LatentLM(CALMConfig(**{**TINY, "ssm": ssm}))
    x = torch.randn(3, 9, 16)
    state = lm.initial_state(3)
    steps = []
    with torch.no_grad():
        for t in range(9):
            h, state = lm.step(x[:, t], state)
            steps.append(h)
        assert torch.allclose(torch.stack(steps, 1), lm(x), atol=1e-5)
