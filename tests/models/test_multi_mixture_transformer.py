"""MultiMixtureTransformer: every method of seed 000, the training regime and the managers."""

import json
import math

import numpy as np
import pytest
import torch

from cerebrum import Cerebrum
from cerebrum.models.multi_mixture_transformer import MultiMixtureTransformer as MMT
from cerebrum.models.multi_mixture_transformer import top_p_sample

SMALL = dict(hidden_dim=16, z_dim=4, rnn_hidden=16, num_states=3, n_mix=2, trans_d_model=8,
             trans_nhead=2, trans_layers=1)


def model(**extra):
    torch.manual_seed(0)
    return MMT(input_dim=3, **{**SMALL, **extra})


def test_forward_returns_every_intermediate_with_shapes():
    m = model(output_dim=5)
    x = torch.randn(2, 7, 3)  # batch-first (B, T, D)
    out = m(x, tgt=torch.randn(2, 6, 5))
    assert out["zs"].shape == out["mu"].shape == out["logvar"].shape == (2, 7, 4)
    assert out["reconstruction"].shape == (2, 7, 3)
    assert out["emissions"].shape == (2, 7, 3) and out["transitions"].shape == (2, 7, 3, 3)
    assert out["hmm_log_likelihood"].shape == (2,)
    assert out["transformer_output"].shape == (2, 6, 5)
    assert all(torch.isfinite(v).all() for v in out.values())
    single = m(torch.randn(2, 3))
    assert single["reconstruction"].shape == (2, 3) and single["zs"].shape == (2, 1, 4)
    assert torch.isfinite(m.loss(x, out)) and torch.isfinite(m.loss(torch.randn(2, 3), single))


def test_time_major_is_the_same_model_transposed():
    """Seed 000's time-major layout, asked for explicitly, gives the batch-first results
    transposed: forward, loss, predict, recognize, regression and generate."""
    m = model(output_dim=2, vocab_size=7, draft_len=3)
    x, tgt = torch.randn(3, 5, 3), torch.randn(3, 4, 2)
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    first = m(x, tgt, generator=seeded())
    second = m(x.transpose(0, 1), tgt.transpose(0, 1), generator=seeded(), time_major=True)
    for key in ("zs", "reconstruction", "emissions", "transitions", "transformer_output"):
        torch.testing.assert_close(first[key], second[key].transpose(0, 1))
    torch.testing.assert_close(first["hmm_log_likelihood"], second["hmm_log_likelihood"])
    torch.testing.assert_close(m.loss(x, first, tgt),
                               m.loss(x.transpose(0, 1), second, tgt.transpose(0, 1),
                                      time_major=True))
    torch.testing.assert_close(m.predict(x), m.predict(x.transpose(0, 1), time_major=True))
    torch.testing.assert_close(m.recognize(x, torch.randn(3, 2, 4, generator=seeded())),
                               m.recognize(x.transpose(0, 1), torch.randn(
                                   3, 2, 4, generator=seeded()).transpose(0, 1),
                                   time_major=True).transpose(0, 1))
    torch.testing.assert_close(m.regression(x, seeded())[0],
                               m.regression(x.transpose(0, 1), seeded(), time_major=True)[0])
    torch.testing.assert_close(m.generate(4, 2, seeded()),
                               m.generate(4, 2, seeded(), time_major=True).transpose(0, 1))
    with pytest.raises(ValueError, match=r"\(B, T, input_dim=3\) batch-first .*time_major"):
        m(torch.randn(5, 2, 4))


def test_seed_loss_is_the_sum_of_its_parts_with_clamped_logvar():
    m = model(objective="seed")
    x = torch.randn(2, 5, 3)
    out = m(x)
    out["logvar"] = out["logvar"] * 0 + 50.0  # beyond the clamp
    mse = ((out["reconstruction"] - x) ** 2).mean()
    kl = -0.5 * (1 + 10.0 - out["mu"].pow(2) - np.exp(10.0)).sum(-1).mean()
    hmm = -out["hmm_log_likelihood"].sum() / 10
    torch.testing.assert_close(m.loss(x, out), mse + kl + hmm)


def test_elbo_loss_is_the_negative_bound_of_the_sampled_latents():
    m = model()
    with torch.no_grad():
        m.recon_logvar.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(2, 5, 3)
    out = m(x)
    logvar = out["logvar"].clamp(-10, 10)
    var = m.recon_logvar.exp()
    log_px = -0.5 * ((x - out["reconstruction"]) ** 2 / var + m.recon_logvar
                     + np.log(2 * np.pi)).sum(-1)
    log_q = -0.5 * ((out["zs"] - out["mu"]) ** 2 / logvar.exp() + logvar
                    + np.log(2 * np.pi)).sum(-1)
    log_pz = out["hmm_log_likelihood"]
    expected = -(log_px.sum() - 0.5 * log_q.sum() + 0.5 * log_pz.sum()) / 10
    torch.testing.assert_close(m.loss(x, out, kl_weight=0.5), expected)


def test_gradients_reach_every_parameter():
    m = model(output_dim=2, vocab_size=7, draft_len=4)
    for label in ("pred", "recog", "gen", "reg"):
        m.add_rule(f"{label}_rule", label, 0.5, 1.0)
    x = torch.randn(2, 6, 3)
    tgt = torch.randn(2, 5, 2)
    loss = (m.loss(x, m(x, tgt), tgt) + m.rule_loss()
            + m.regression_loss(x, torch.randint(0, 7, (2, 4)))
            + m.recognize(x, torch.randn(2, 6, 4)).sum())
    loss.backward()
    missing = [n for n, p in m.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_rules_pull_the_weights_toward_their_targets():
    m = model()
    m.add_rule("pred_balance", "pred", reward_target=0.5, reward=10.0)
    assert float(m.rule_loss().detach()) == pytest.approx(10.0 * 0.25)
    optimizer = torch.optim.Adam(m.parameters(), lr=0.05)
    x = torch.randn(4, 5, 3)
    for _ in range(30):
        m.training_step(x, optimizer)
    assert abs(float(m.pred_weights.detach().mean()) - 0.5) < 0.1
    with pytest.raises(ValueError, match="label must be one of pred, recog, gen, reg"):
        m.add_rule("x", "other", 0.5, 1.0)


def test_training_reduces_the_loss_on_a_learnable_task():
    rng = np.random.default_rng(0)
    t = np.arange(20)
    X = np.stack([np.stack([np.sin(t / 3 + p), np.cos(t / 3 + p), np.sin(t / 5 + p)], -1)
                  for p in rng.uniform(0, 6, size=32)]).astype(np.float32)
    for objective in ("elbo", "seed"):
        m = model(objective=objective).fit(X, epochs=40, lr=1e-2, batch_size=8,
                                           random_state=0, validation_split=0.0)
        losses = m.history_["train_loss"]
        if objective == "seed":  # MSE-based: positive, falls by a fraction
            assert losses[-1] < 0.7 * losses[0]
        else:  # a negative bound in nats per step: falls by nats
            assert losses[-1] < losses[0] - 0.3


def test_predict_recognize_generate_shapes_and_reproducibility():
    m = model()
    x = torch.randn(2, 5, 3)
    assert m.predict(x).shape == (2, 3) and m.predict(x[:, 0]).shape == (2, 3)
    assert m.recognize(x[:, 0], torch.randn(2, 3)).shape == (2, 3)  # a target observation
    assert m.recognize(x, torch.randn(2, 5, 4)).shape == (2, 5, 3)  # a target latent path
    a = m.generate(num_steps=6, batch_size=2, generator=torch.Generator().manual_seed(1))
    b = m.generate(num_steps=6, batch_size=2, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 6, 3) and torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="tgt_z must end in z_dim=4 or input_dim=3"):
        m.recognize(x[:, 0], torch.randn(2, 7))


def test_regression_and_its_loss():
    m = model(vocab_size=9, draft_len=5, n_drafts=3)
    x = torch.randn(2, 6, 3)
    logits, entropy = m.regression(x, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (2, 5, 9) and entropy.dim() == 0
    assert 0 <= float(entropy.detach()) <= np.log(9) + 1e-5
    loss = m.regression_loss(x, torch.randint(0, 9, (2, 5)))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="must lie in"):
        m.regression_loss(x, torch.full((2, 5), 9))
    with pytest.raises(ValueError, match="needs a token vocabulary"):
        model(vocab_size=None).regression(x)
    assert model().regression(x)[0].shape[-1] == 256  # the default vocabulary: bytes


def test_top_p_sampling_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).expand(2000, 4)
    draws = top_p_sample(logits, 0.8, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 2 / 3) < 0.05
    assert set(top_p_sample(logits, 0.5).tolist()) == {0}


def test_importance_weighted_bound_tightens_with_more_samples():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24, 8, 3)).astype(np.float32)
    m = model().fit(X, epochs=3, random_state=0, validation_split=0.0)
    loose = m.log_likelihoods(X, n_samples=1).mean()
    tight = m.log_likelihoods(X, n_samples=256).mean()
    assert loose < tight and np.isfinite(tight)


def test_round_trip_with_rules_and_classify(tmp_path):
    X = np.random.default_rng(2).normal(size=(12, 6, 3)).astype(np.float32)
    brain = Cerebrum()
    mid = brain.fit_and_add(X, "mmm", epochs=2, random_state=0, **SMALL)
    brain.models[mid].add_rule("r", "gen", 0.7, 2.0)
    brain.fit_and_add(X, "hmm", n_components=2, model_id="h", random_state=0)
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    for key, value in brain.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert loaded.models[mid].rules == {"r": ["gen", 0.7, 2.0]}
    assert torch.equal(loaded.models[mid].rule_loss().detach(),
                       brain.models[mid].rule_loss().detach())
    assert loaded.score(mid, X[:3]) == brain.score(mid, X[:3])
    assert loaded.classify(list(X[:4]))[1].shape == (4, 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_states=0), "num_states must be >= 1"),
    (dict(trans_d_model=10, trans_nhead=4), "divisible"),
    (dict(top_p=0.0), "top_p"),
    (dict(objective="mse"), "objective must be one of elbo, seed"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MMT(input_dim=3, **kwargs)


def test_bad_input():
    m = model()
    with pytest.raises(ValueError, match=r"\(B, T, input_dim=3\).*got shape \(5, 2, 4\)"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"one step \(B, input_dim=3\)"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((2, 2, 3), float("nan")))
    with pytest.raises(ValueError, match="tgt must hold 2 sequences"):
        m(torch.randn(2, 5, 3), tgt=torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="none of its axes empty"):
        m.predict(torch.randn(2, 0, 3))
    with pytest.raises(TypeError, match="must hold real numbers"):
        m(torch.ones(2, 5, 3, dtype=torch.bool))
    x = torch.randn(2, 5, 3, dtype=torch.float64)  # cast to the model's dtype, as the VRMGT
    torch.testing.assert_close(m.predict(x), m.predict(x.float()))
    torch.testing.assert_close(m.predict(x.numpy()), m.predict(x.float()))


def test_fit_with_targets_trains_the_transformer_toward_them():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(16, 6, 3)).astype(np.float32)
    tgt = (X[..., :2] * 2.0).astype(np.float32)  # a learnable map of the inputs
    m = model(output_dim=2)
    before = m.transformer.output_proj.weight.detach().clone()
    m.fit(X, tgt=tgt, epochs=5, random_state=0, validation_split=0.0)
    assert not torch.equal(before, m.transformer.output_proj.weight)
    with pytest.raises(ValueError, match="one target per input step"):
        model(output_dim=2).fit(X, tgt=tgt[:, :4], epochs=1)
    brain = Cerebrum()
    brain.fit_and_add(X, "mmm", tgt=tgt, output_dim=2, epochs=1, random_state=0, **SMALL)


def test_time_major_fit_is_the_batch_first_fit():
    X = np.random.default_rng(4).normal(size=(6, 5, 3)).astype(np.float32)
    first = model().fit(X, epochs=2, random_state=0, validation_split=0.0)
    second = model().fit(np.swapaxes(X, 0, 1), epochs=2, random_state=0, validation_split=0.0,
                         time_major=True)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key])
    with pytest.raises(ValueError, match=r"time_major=True needs X as one \(T, B, D\)"):
        model().fit(list(X), epochs=1, time_major=True)


def test_optimizer_and_schedule_are_settable(tmp_path):
    X = np.random.default_rng(5).normal(size=(8, 5, 3)).astype(np.float32)
    settings = dict(epochs=4, batch_size=4, lr=1e-2, random_state=0, validation_split=0.0)
    model().fit(X, schedule="cosine", min_lr_ratio=0.1, out_dir=tmp_path / "c", **settings)
    model().fit(X, out_dir=tmp_path / "k", **settings)
    rates = {}
    for run in ("c", "k"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        rates[run] = [json.loads(line)["lr"] for line in lines if '"lr"' in line]
    assert rates["k"] == [pytest.approx(1e-2)] * 8  # constant: seed 000's regime
    assert rates["c"][0] == pytest.approx(1e-2) and rates["c"][-1] < 0.5e-2
    assert all(a >= b for a, b in zip(rates["c"], rates["c"][1:], strict=False))
    muon = model().fit(X, optimizer="muon", **settings)
    assert np.isfinite(muon.history_["train_loss"]).all()
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine, wsd"):
        model().fit(X, schedule="linear", epochs=1)


def test_generate_samples_the_calibrated_observation_noise():
    """Seed 000's generate draws from the model's generative distribution: with the
    reconstruction noise set, generated frames scatter around the decoded means by it."""
    m = model()
    with torch.no_grad():
        m.recon_logvar.fill_(math.log(4.0))  # noise standard deviation 2
    seeded = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    noisy = m.generate(200, 8, seeded())
    means = m.generate(200, 8, seeded(), mean_only=True)
    residual = noisy - means
    assert residual.std().item() == pytest.approx(2.0, rel=0.05)


def switching_ar1(n_sequences: int, n_steps: int, seed: int) -> np.ndarray:
    """A two-regime switching AR(1) process, D = 2: regime 0 x_t = 0.95 x_{t-1} + 0.3 e_t,
    regime 1 x_t = 0.6 x_{t-1} + 0.8 e_t (e_t scaled by 1 and 0.7 per dimension), switching
    with probability 0.05 per step. (n_sequences, n_steps, 2) float32."""
    rng = np.random.default_rng(seed)
    regimes = ((0.95, 0.3), (0.6, 0.8))
    X = np.zeros((n_sequences, n_steps, 2), np.float32)
    for i in range(n_sequences):
        regime, x = rng.integers(2), np.zeros(2)
        for t in range(n_steps):
            regime = 1 - regime if rng.random() < 0.05 else regime
            a, scale = regimes[regime]
            x = a * x + scale * rng.normal(size=2) * np.array([1.0, 0.7])
            X[i, t] = x
    return X


def variance_and_lag1_autocorrelation(X: np.ndarray):
    """Per dimension, over all sequences: variance (D,), lag-1 autocorrelation (D,)."""
    X = np.asarray(X, np.float64)
    centred = X - X.mean((0, 1))
    variance = (centred ** 2).mean((0, 1))
    return variance, (centred[:, 1:] * centred[:, :-1]).mean((0, 1)) / variance


def test_generated_series_have_the_datas_variance_and_autocorrelation():
    """Trained on a switching AR(1) process, generated series have, per dimension, a variance
    within a factor 2 of the data's and a lag-1 autocorrelation within a factor 2 of it. With
    seed 000's own objective the model learns no dynamics (docs/hybrids.md, "Objectives")."""
    X = switching_ar1(32, 30, seed=0)
    torch.manual_seed(0)
    m = MMT(input_dim=2, hidden_dim=32, z_dim=4, rnn_hidden=32, num_states=2, n_mix=1,
            trans_d_model=8, trans_nhead=2, vocab_size=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
    try:
        m.fit(X, epochs=60, lr=1e-2, kl_anneal_epochs=10, batch_size=4, random_state=0,
              validation_split=0.0)
    finally:
        torch.set_num_threads(threads)
    generated = m.generate(30, 64, torch.Generator().manual_seed(0)).numpy()
    data_var, data_ac = variance_and_lag1_autocorrelation(X)
    gen_var, gen_ac = variance_and_lag1_autocorrelation(generated)
    assert np.all((gen_var > data_var / 2) & (gen_var < data_var * 2)), (gen_var, data_var)
    assert np.all((gen_ac > data_ac / 2) & (gen_ac < data_ac * 2)), (gen_ac, data_ac)


def test_a_seed_that_is_not_an_integer_is_named():
    X = np.zeros((4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="random_state must be None or an integer seed"):
        model().fit(X, epochs=1, random_state="abc")
    with pytest.raises(TypeError, match="random_state must be None or an integer seed"):
        Cerebrum().fit_and_add(X, "mmm", epochs=1, random_state="abc", **SMALL)
