"""VariationalRecurrentMarkovGaussianTransformer: shapes, learning, the bound, the regime."""

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cerebrum import MMM, Cerebrum, HiddenMarkov
from cerebrum.models._training import kl_weight
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer as VRMGT

pytestmark = pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")

SMALL = dict(hidden_dim=16, z_dim=2, rnn_hidden=16, num_states=2, n_mix=1, trans_d_model=8,
             trans_nhead=2, trans_layers=1)


def two_regimes(n_sequences=32, n_steps=20, seed=0):
    truth = HiddenMarkov.from_params(
        [0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], [[1.0], [1.0]], [[[0.0, 0.0]], [[3.0, 3.0]]],
        [[[1.0, 1.0]], [[1.0, 1.0]]], covariance_type="diag", dtype=torch.float64)
    X, _ = truth.sample(n_steps, n_sequences=n_sequences, random_state=seed)
    return truth, X.astype(np.float32)


def test_forward_shapes_and_finiteness():
    model = VRMGT(input_dim=2, **SMALL)
    out = model(torch.randn(3, 5, 2), torch.tensor([5, 2, 4]), n_samples=4)
    assert out["log_px_given_z"].shape == out["kl"].shape == (4, 3)
    assert out["emissions"].shape == (4, 3, 5, 2) and out["z"].shape == (4, 3, 5, 2)
    for value in out.values():
        assert torch.isfinite(value).all()
    assert bool((out["kl"] >= 0).all())


def cut_latent(model):
    """Cut z out of the emissions and the recurrence: log p(x | z) no longer depends on z,
    so it equals log p(x), and every quantity but z itself is deterministic."""
    Z = model.config.z_dim
    D = model.config.input_dim
    with torch.no_grad():
        model.emission.net[0].weight[:, :Z] = 0.0
        model.cell.weight_ih[:, D:] = 0.0
        model.encoder[-1].bias[:Z] += 1.0  # make q differ from the prior
    return model


def test_padding_does_not_change_a_sequence():
    model = cut_latent(VRMGT(input_dim=2, **SMALL).double())
    _, X = two_regimes(2, 8)
    x = torch.as_tensor(X.astype(np.float64))
    padded = x.clone()
    padded[1, 5:] = 1e3
    together = model(padded, torch.tensor([8, 5]))
    alone = model(x[1:, :5])
    for key in ("log_px_given_z", "kl"):
        torch.testing.assert_close(together[key][0, 1], alone[key][0, 0])


def test_gradients_reach_every_parameter():
    model = VRMGT(input_dim=2, **SMALL)
    loss = model.training_loss(torch.randn(4, 6, 2), torch.tensor([6, 6, 3, 1]), 1.0)
    loss.backward()
    missing = [name for name, p in model.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_training_learns_and_approaches_the_true_likelihood():
    truth, X = two_regimes()
    model = VRMGT(input_dim=2, **SMALL)
    model.fit(X, epochs=60, lr=5e-3, random_state=0, kl_anneal_epochs=4)
    losses = model.history_["train_loss"]
    assert losses[-1] < 0.6 * losses[0]
    _, X_test = two_regimes(8, 20, seed=1)
    per_frame = model.log_likelihoods(X_test).mean() / 20
    exact = truth.log_likelihoods(X_test.astype(np.float64)).mean() / 20
    assert per_frame == pytest.approx(exact, abs=0.15)  # nats per frame


def test_kl_annealing_and_gradient_clipping_hold():
    _, X = two_regimes(8, 10)
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        model = VRMGT(input_dim=2, **SMALL).fit(X, epochs=6, lr=1e-2, clip_norm=0.05,
                                                kl_anneal_epochs=4, validation_split=0.25,
                                                patience=None, random_state=0)
    finally:
        handle.remove()
    assert model.history_["kl_weight"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [kl_weight(e, 0) for e in range(3)] == [1.0, 1.0, 1.0]
    assert norms and max(norms) <= 0.05 * (1 + 1e-4)
    assert max(model.history_["grad_norm"]) > 0.05  # the raw gradients were larger


def test_importance_weighted_bound_rises_to_the_exact_value():
    """With z cut out (see cut_latent) log p(x | z) = log p(x) exactly, and the
    importance-weighted bound must rise toward it as the number of samples grows."""
    torch.manual_seed(0)
    model = cut_latent(VRMGT(input_dim=2, **SMALL).double())
    _, X = two_regimes(32, 6)
    X = X.astype(np.float64)
    exact = model(torch.as_tensor(X))["log_px_given_z"][0].detach().numpy().mean()
    bounds = {k: model.log_likelihoods(X, n_samples=k).mean() for k in (1, 64, 4096)}
    # the bound holds in expectation; averaged over 32 sequences the noise is far below the gaps
    assert bounds[1] < bounds[64] < bounds[4096] <= exact + 0.05
    assert exact - bounds[4096] < 0.1 * (exact - bounds[1])


def test_save_load_round_trip_and_classify_with_a_hidden_markov(tmp_path):
    _, X = two_regimes(16, 12)
    brain = Cerebrum()
    brain.fit_and_add(X, "vrmgt", model_id="v", epochs=3, random_state=0, **SMALL)
    brain.fit_and_add(X, "hmm", n_components=2, model_id="h", random_state=0)
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    for key, value in brain.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert loaded.score("v", X[:4]) == brain.score("v", X[:4])
    assert loaded.models["v"].history_ == brain.models["v"].history_
    _, scores, candidates = loaded.classify(list(X[:5]))
    assert list(candidates) == ["v", "h"] and scores.shape == (5, 2)
    again = Cerebrum()
    again.fit_and_add(X, "vrmgt", model_id="v", epochs=3, random_state=0, **SMALL)
    assert again.score("v", X[:4]) == brain.score("v", X[:4])  # reproducible


def test_seed001_example3_as_written():
    """Seed 001 example 3: model_type='mmm' on the MMM facade is seed 001's deep model, the
    VRMGT. The seed's sizes are kept; the data is small so that 200 epochs stay quick."""
    data = np.random.default_rng(0).normal(size=(4, 3, 128)).astype(np.float32)
    mmm = MMM()
    model_id = mmm.fit_and_add(
        data=data,
        model_type='mmm',
        input_dim=128,
        hidden_dim=256,
        z_dim=32,
        rnn_hidden=64,
        num_states=4,
        n_mix=5,
        trans_d_model=64,
        trans_nhead=4,
        trans_layers=2,
        output_dim=128,
        epochs=200,
        kl_anneal_epochs=50,
        lr=1e-4,
        clip_norm=5.0
    )
    model = mmm.models[model_id]
    assert isinstance(model, VRMGT) and len(model.history_["train_loss"]) >= 1
    assert np.isfinite(mmm.get_log_likelihoods(model_id, data, n_samples=2)).all()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(input_dim=2, num_states=0), ValueError, "num_states must be >= 1"),
    (dict(input_dim=2, trans_d_model=10, trans_nhead=4), ValueError, "divisible"),
    (dict(input_dim=2, output_dim=3), ValueError, "must equal input_dim"),
    (dict(input_dim=2.5), TypeError, "input_dim must be an integer"),
])
def test_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        VRMGT(**kwargs)


def test_bad_input():
    model = VRMGT(input_dim=2, **SMALL)
    with pytest.raises(ValueError, match="X has 3 features, but this"):
        model.log_likelihoods(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"x must be \(B, T, input_dim\)"):
        model(torch.zeros(4, 2))
    bad = np.zeros((2, 4, 2))
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, epochs=1)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(np.zeros((2, 4, 2)), epochs=1, validation_split=1.5)


def test_targets_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="tgt is not supported by the VRMGT"):
        VRMGT(input_dim=2, **SMALL).fit(np.zeros((2, 3, 2)), tgt=np.zeros((2, 3, 2)))
