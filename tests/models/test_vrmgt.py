"""VariationalRecurrentMarkovGaussianTransformer: shapes, learning, the bound, the regime."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cerebrum import Cerebrum, HiddenMarkov
from cerebrum.brain.hybrids import kl_weight
from cerebrum.mixtures import hmm_inference
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
    assert out["reconstruction"].shape == (3, 5, 2)
    assert out["state_posteriors"].shape == (4, 3, 5, 2)
    assert out["state_means"].shape == (4, 3, 5, 2, 2)
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
    torch.testing.assert_close(together["reconstruction"][1, :5], alone["reconstruction"][0])
    assert bool((together["reconstruction"][1, 5:] == 0).all())  # zero past the end


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
    """The KL weight per epoch follows min(1, epoch / kl_anneal_epochs); every update sees
    gradients clipped to clip_norm, and the raw gradients (summed per step by hooks that run
    as each parameter's gradient is complete, before the engine clips) were larger, so the
    clipping was at work."""
    _, X = two_regimes(8, 10)
    model = VRMGT(input_dim=2, **SMALL)
    raw_squares, raw, clipped = [], [], []

    def on_gradient(p):
        raw_squares.append(float(torch.linalg.vector_norm(p.grad)) ** 2)

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        clipped.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        if raw_squares:
            raw.append(sum(raw_squares) ** 0.5)
            raw_squares.clear()

    hooks = [p.register_post_accumulate_grad_hook(on_gradient) for p in model.parameters()]
    hooks.append(register_optimizer_step_pre_hook(before_step))
    try:
        model.fit(X, epochs=6, lr=1e-2, clip_norm=0.05, kl_anneal_epochs=4,
                  validation_split=0.25, patience=None, random_state=0)
    finally:
        for handle in hooks:
            handle.remove()
    assert model.history_["kl_weight"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [kl_weight(e, 0) for e in range(3)] == [1.0, 1.0, 1.0]
    assert len(clipped) == len(raw) == 6  # 6 training sequences: one batch per epoch
    assert max(clipped) <= 0.05 * (1 + 1e-4)
    assert min(raw) > 0.05  # the raw gradients were larger


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


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(input_dim=2, num_states=0), ValueError, "num_states must be >= 1"),
    (dict(input_dim=2, trans_d_model=10, trans_nhead=4), ValueError, "divisible"),
    (dict(input_dim=2, output_dim=0), ValueError, "output_dim must be >= 1"),
    (dict(input_dim=2.5), TypeError, "input_dim must be an integer"),
])
def test_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        VRMGT(**kwargs)


def test_bad_input():
    model = VRMGT(input_dim=2, **SMALL)
    with pytest.raises(ValueError, match="X has 3 features, but this"):
        model.log_likelihoods(np.zeros((2, 4, 3)))
    # a 2-D tensor is one sequence (T, D); one that cannot be the layout names it
    assert model(torch.zeros(4, 2))["reconstruction"].shape == (4, 2)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\): expected batch-first "
                                         r"\(B, T, input_dim=2\) or one sequence \(T, "
                                         r"input_dim=2\); for seed 000's time-major"):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x has shape"):
        model(torch.zeros(2, 4, 2, 1))
    bad = np.zeros((2, 4, 2))
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, epochs=1)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(np.zeros((2, 4, 2)), epochs=1, validation_split=1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"holds out all 3 sequences .* leaving none to train"):
        model.fit(np.zeros((3, 4, 2)), epochs=1, validation_split=0.99)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------- the engine's services


FIT = dict(epochs=4, lr=5e-3, batch_size=4, kl_anneal_epochs=2, validation_split=0.25,
           patience=None)


def small_model(seed):
    torch.manual_seed(seed)
    return VRMGT(input_dim=2, **SMALL)


def test_resume_after_sigint_equals_the_uninterrupted_run(tmp_path):
    """SIGINT from inside the loss at step 5 (of 8: 6 training sequences in batches of 4,
    4 epochs): the step ends, a checkpoint is written, fit raises KeyboardInterrupt and leaves
    the model as it was; a fresh
    model resumed from out_dir (random_state=None: the run's own seed, read back) ends
    exactly where the straight run ends, history and weights."""
    import os
    import signal

    from cerebrum.train.engine import latest_checkpoint, read_checkpoint

    _, X = two_regimes(8, 6)
    out = tmp_path / "run"
    interrupted = small_model(0)
    calls = {"n": 0}
    training_loss = interrupted.training_loss

    def interrupt_at_fifth_step(*args, **kwargs):
        calls["n"] += interrupted.training  # not the evaluations' calls (in eval mode)
        if calls["n"] == 5 and interrupted.training:
            os.kill(os.getpid(), signal.SIGINT)
        return training_loss(*args, **kwargs)

    interrupted.training_loss = interrupt_at_fifth_step
    before = {k: v.clone() for k, v in interrupted.state_dict().items()}
    torch.manual_seed(7)  # random_state=None: the run's seed comes from the global RNG
    with pytest.raises(KeyboardInterrupt, match="interrupted after step 5 of 8; the model is "
                                                "as it was before fit; fit again with resume"):
        interrupted.fit(X, out_dir=out, **FIT)
    assert calls["n"] == 5 and not interrupted.history_  # as before fit: empty
    for key, value in before.items():  # an interrupted fit leaves the model as it was
        assert torch.equal(value, interrupted.state_dict()[key]), key
    header, _ = read_checkpoint(latest_checkpoint(out))
    assert header["step"] == 5 and header["data"]["drawn"] == 5

    straight = small_model(0).fit(X, random_state=header["config"]["seed"], **FIT)
    torch.manual_seed(123)  # the checkpoint restores the weights and every RNG
    resumed = small_model(1).fit(X, out_dir=out, resume=True, **FIT)
    assert resumed.history_ == straight.history_
    assert not resumed.history_["interrupted"] and len(resumed.history_["val_loss"]) == 4
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert resumed.score(X) == straight.score(X)


def test_out_dir_gets_checkpoints_and_a_metrics_log_with_the_kl_weight(tmp_path):
    import json

    from cerebrum.train.engine import read_checkpoint

    _, X = two_regimes(8, 6)
    out = tmp_path / "run"
    brain = Cerebrum()
    model_id = brain.fit_and_add(X, "vrmgt", out_dir=out, checkpoint_every=3, random_state=0,
                                 **FIT, **SMALL)
    # 2 batches per epoch: a checkpoint every 3 epochs (step 6) and at the end (step 8)
    names = sorted(p.name for p in out.glob("checkpoint-*.safetensors"))
    assert names == ["checkpoint-00000006.safetensors", "checkpoint-00000008.safetensors"]
    header, _ = read_checkpoint(out / names[-1])
    assert header["extra"]["model"] == "VariationalRecurrentMarkovGaussianTransformer"
    assert header["extra"]["config"]["z_dim"] == SMALL["z_dim"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["kl_weight"] for r in steps] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert [r["epoch"] for r in steps] == [0, 0, 1, 1, 2, 2, 3, 3]
    evaluations = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evaluations] == [2, 4, 6, 8]
    # held back from early stopping while the KL weight anneals, then the monitored metric
    assert ["eval/val_loss" in r for r in evaluations] == [False, False, True, True]
    history = brain.models[model_id].history_
    assert history["val_loss"] == [next(v for k, v in r.items() if k.startswith("eval/"))
                                   for r in evaluations]
    assert history["kl_weight"] == [0.0, 0.5, 1.0, 1.0]
    assert (out / "curves.npz").is_file()


def test_early_stopping_restores_the_best_weights():
    """Scripted validation losses: the two epochs of KL annealing (lowest of all) do not
    count; the best counted epoch is 4; patience 2 stops after epoch 6, and the weights are
    those of epoch 4."""
    _, X = two_regimes(8, 6)
    model = small_model(0)
    scripted = iter([1.0, 1.0, 5.0, 4.0, 3.0, 3.5, 3.75, 2.0, 2.0, 2.0])
    snapshots = []

    def validation_loss(x, lengths, generator=None):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return torch.tensor(next(scripted))

    model.validation_loss = validation_loss
    model.fit(X, epochs=10, lr=1e-2, batch_size=4, kl_anneal_epochs=2, validation_split=0.25,
              patience=2, random_state=0)
    history = model.history_
    assert history["val_loss"] == [1.0, 1.0, 5.0, 4.0, 3.0, 3.5, 3.75]
    assert history["early_stopped"] and len(history["train_loss"]) == 7
    assert history["best_val_loss"] == 3.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[4][key]), key
    assert not torch.equal(snapshots[6]["start_logits"], snapshots[4]["start_logits"])


def test_data_too_large_for_float32_is_refused_before_training():
    X = np.random.default_rng(0).normal(size=(6, 5, 2)).astype(np.float32) * 1e30
    model = small_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"too large for torch\.float32 arithmetic"):
        model.fit(X, epochs=2, random_state=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_failed_fit_of_a_trained_model_leaves_it_as_it_was():
    # lr=1e9 on a trained model: the loss turns NaN after some updates have been applied
    _, X = two_regimes(8, 6)
    model = small_model(0).fit(X, epochs=2, random_state=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history, score = model.history_, model.score(X)
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        model.fit(X, epochs=3, lr=1e9, random_state=0)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert model.history_ is history and model.score(X) == score


# ---------------------------------------------------------------- issue 21: reconstruction,
# one layout, the conditional model p(y | x), generation


def switching_ar(n_sequences, n_steps, seed, coefficients=((0.95, 0.8), (0.5, -0.7)),
                 scales=((0.3, 0.3), (0.6, 0.6)), offset=(0.0, 0.0), stay=0.95, burn_in=50):
    """A two-regime switching AR(1) process, D = 2: per dimension
    x_t = coefficients[r_t] * x_{t-1} + scales[r_t] * eps_t (+ offset), the regime r_t a
    Markov chain that stays with probability `stay`; started burn_in steps early, so the
    sequences are stationary from their first step. (B, T, 2) float32."""
    rng = np.random.default_rng(seed)
    a, s = np.asarray(coefficients), np.asarray(scales)
    regime = rng.integers(0, 2, n_sequences)
    x = np.zeros((n_sequences, 2))
    out = np.empty((n_sequences, burn_in + n_steps, 2))
    for t in range(burn_in + n_steps):
        regime = np.where(rng.random(n_sequences) < stay, regime, 1 - regime)
        x = a[regime] * x + s[regime] * rng.normal(size=(n_sequences, 2))
        out[:, t] = x
    return (out[:, burn_in:] + np.asarray(offset)).astype(np.float32)


def variance_and_lag1(X):
    """Per-dimension variance over all frames and lag-1 autocorrelation within sequences,
    both about the pooled mean: (D,), (D,)."""
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.reshape(-1, X.shape[-1]).mean(0)
    variance = (centred ** 2).mean((0, 1))
    return variance, (centred[:, 1:] * centred[:, :-1]).mean((0, 1)) / variance


#: one optimiser step per epoch over all sequences: short, deterministic fits for the tests
QUICK = dict(lr=2e-2, validation_split=0.0, random_state=0)


def test_reconstruction_is_the_smoothed_state_posterior_mean():
    """reconstruction = mean over the K samples of sum_j p(s_t = j | x, z) E[x_t | s_t = j,
    ...], the state posteriors those of the forward-backward algorithm on the emissions."""
    torch.manual_seed(0)
    model = VRMGT(input_dim=2, **SMALL).double()
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    lengths = torch.tensor([6, 4, 5])
    out = model(x, lengths, n_samples=3, generator=torch.Generator().manual_seed(0))
    gamma, _ = hmm_inference.posteriors(
        torch.log_softmax(model.start_logits, 0), torch.log_softmax(model.transition_logits, 1),
        out["emissions"].reshape(9, 6, 2), lengths.repeat(3))
    torch.testing.assert_close(out["state_posteriors"], gamma.view(3, 3, 6, 2))
    expected = (gamma.view(3, 3, 6, 2, 1) * out["state_means"]).sum(-2).mean(0)
    torch.testing.assert_close(out["reconstruction"], expected)
    valid = hmm_inference.valid_mask(lengths, 6)
    sums = out["state_posteriors"].sum(-1)  # (K, B, T): a distribution on every valid step
    torch.testing.assert_close(sums[:, valid], torch.ones_like(sums[:, valid]))
    assert bool((out["reconstruction"][~valid] == 0).all())


def test_one_layout_for_forward():
    """Batch-first (B, T, D); a 2-D tensor is one sequence; time-major only when asked for;
    float64 tensors and NumPy arrays are cast to the model's dtype; a boolean tensor is
    refused. With z cut out (cut_latent) the reconstruction is deterministic."""
    torch.manual_seed(0)
    model = cut_latent(VRMGT(input_dim=2, **SMALL))
    x = torch.randn(2, 5, 2)
    batch = model(x)["reconstruction"]
    one = model(x[1])["reconstruction"]
    assert one.shape == (5, 2)
    torch.testing.assert_close(one, batch[1])
    time_major = model(x.transpose(0, 1), time_major=True)
    assert time_major["reconstruction"].shape == (5, 2, 2)  # like the input
    assert time_major["log_px_given_z"].shape == (1, 2)  # the rest stays batch-first
    torch.testing.assert_close(time_major["reconstruction"], batch.transpose(0, 1))
    for given in (x.double(), x.numpy().astype(np.float64)):
        out = model(given)["reconstruction"]
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, batch)
    with pytest.raises(TypeError, match=r"dtype torch\.bool"):
        model(x > 0)
    with pytest.raises(ValueError, match="x looks time-major: pass time_major=True"):
        model(torch.zeros(5, 3, 2), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match=r"X has shape \(2, 5, 2, 1\): expected batch-first"):
        model.log_likelihoods(x.numpy()[..., None])
    with pytest.raises(ValueError, match="X looks time-major, pass time_major=True"):
        model.log_likelihoods(x.numpy().swapaxes(0, 1), [5, 5])
    # the verbs: a time-major array scores as its batch-first transpose
    X = x.numpy()
    np.testing.assert_allclose(model.log_likelihoods(X.swapaxes(0, 1), time_major=True,
                                                     n_samples=2),
                               model.log_likelihoods(X, n_samples=2), rtol=1e-6)


def test_seed001_reconstruction_loop_identifies_speakers():
    """Seed 001, section 4, at the model level: one VRMGT per speaker (two different
    switching AR processes), and each held-out sequence goes to the model that reconstructs
    it best, by the seed's own line."""
    speakers = {
        "speakerA": dict(),
        "speakerB": dict(coefficients=((-0.5, 0.2), (0.0, 0.9)), scales=((0.5, 0.8), (0.3, 0.3)),
                         offset=(0.5, -0.5)),
    }
    models = {}
    for i, (name, process) in enumerate(speakers.items()):
        torch.manual_seed(i)
        models[name] = VRMGT(input_dim=2, **SMALL).fit(
            switching_ar(48, 20, seed=i, **process), epochs=20, batch_size=48, **QUICK)
    correct = []
    for i, (name, process) in enumerate(speakers.items()):
        for input_sequence in torch.as_tensor(switching_ar(10, 20, seed=100 + i, **process)):
            with torch.no_grad():
                losses = {
                    model_id: F.mse_loss(models[model_id](input_sequence)['reconstruction'],
                                         input_sequence).item()
                    for model_id in models
                }
            predicted = min(losses, key=losses.get)
            correct.append(predicted == name)
    assert np.mean(correct) >= 0.95, correct


def conversion_data(n_sequences, n_steps, seed):
    """x: a switching AR(1) process (D = 2); y_t = W x_t + 0.1 noise (O = 3): a feature
    conversion whose exact log p(y | x) is known."""
    W = np.array([[1.0, 0.5], [-0.5, 1.0], [0.8, -0.8]], dtype=np.float32)
    X = switching_ar(n_sequences, n_steps, seed)
    noise = np.random.default_rng(seed + 1).normal(size=(n_sequences, n_steps, 3))
    return X, (X @ W.T + 0.1 * noise).astype(np.float32)


def test_conditional_model_learns_a_feature_conversion():
    """Seed 001's tgt and output_dim != input_dim: fitted with targets, the VRMGT is
    p(y | x); on held-out data its bound on log p(y | x) beats an unconditional VRMGT's
    bound on log p(y) by far (y is a noisy map of the given x), and stays below the
    exact value."""
    X, Y = conversion_data(48, 20, seed=0)
    X_test, Y_test = conversion_data(32, 20, seed=100)
    torch.manual_seed(0)
    conditional = VRMGT(input_dim=2, output_dim=3, **SMALL).fit(
        X, tgt=Y, epochs=30, batch_size=48, **QUICK)
    torch.manual_seed(0)
    unconditional = VRMGT(input_dim=3, **SMALL).fit(Y, epochs=30, batch_size=48, **QUICK)
    per_frame = conditional.log_likelihoods(X_test, tgt=Y_test, n_samples=16).mean() / 20
    baseline = unconditional.log_likelihoods(Y_test, n_samples=16).mean() / 20
    exact = 3 * -0.5 * (1 + np.log(2 * np.pi * 0.01))  # E log N(y; Wx, 0.01 I) per frame
    assert baseline + 1.0 < per_frame < exact + 0.1, (per_frame, baseline, exact)


def test_conditional_shapes_forms_and_errors():
    torch.manual_seed(0)
    model = VRMGT(input_dim=2, output_dim=3, **SMALL)
    x, y = torch.randn(2, 4, 2), torch.randn(2, 4, 3)
    out = model(x, tgt=y, n_samples=2)
    assert out["reconstruction"].shape == (2, 4, 3) and out["emissions"].shape == (2, 2, 4, 2)
    assert model(x[0], tgt=y[0])["reconstruction"].shape == (4, 3)
    assert model(x.transpose(0, 1), tgt=y.transpose(0, 1),
                 time_major=True)["reconstruction"].shape == (4, 2, 3)
    # the sequence forms agree: padded with lengths, and a list
    padded = model.log_likelihoods(x.numpy(), [3, 4], tgt=y.numpy(), n_samples=2)
    listed = model.log_likelihoods([x[0, :3].numpy(), x[1].numpy()],
                                   tgt=[y[0, :3].numpy(), y[1].numpy()], n_samples=2)
    np.testing.assert_allclose(padded, listed, rtol=1e-6)
    assert model.score(x.numpy(), tgt=y.numpy(), n_samples=2) == pytest.approx(
        model.log_likelihoods(x.numpy(), tgt=y.numpy(), n_samples=2).sum())
    assert model.generate(4, x=x).shape == (2, 4, 3)
    assert model.generate(3, 5, x=x[0]).shape == (5, 3, 3)  # 5 samples for one x
    needs = r"is required for .*: this VRMGT has output_dim=3 != input_dim=2"
    for call in (lambda: model.fit(x.numpy(), epochs=1), lambda: model(x),
                 lambda: model.log_likelihoods(x.numpy()), lambda: model.generate(4)):
        with pytest.raises(ValueError, match=needs):
            call()
    with pytest.raises(ValueError, match=r"tgt has shape \(2, 4, 2\): expected batch-first "
                                         r"\(B, T, output_dim=3\)"):
        model(x, tgt=y[..., :2])
    with pytest.raises(ValueError, match="tgt must have one target per input step"):
        model(x, tgt=y[:, :3])
    with pytest.raises(ValueError, match="tgt has 2 features per step, but this VRMGT was "
                                         "built with output_dim=3"):
        model.fit(x.numpy(), tgt=y[..., :2].numpy(), epochs=1)
    with pytest.raises(ValueError, match=r"one target per input step: its lengths \[4, 4\]"):
        model.fit(x.numpy(), [4, 3], tgt=[y[0].numpy(), y[1].numpy()], epochs=1)
    with pytest.raises(ValueError, match="batch_size must be 1 or x's 2 rows"):
        model.generate(4, 3, x=x)
    with pytest.raises(ValueError, match="x has 4 steps: generating num_steps=5"):
        model.generate(5, x=x)


def test_the_density_model_keeps_its_parameters_and_old_configs_load():
    """output_dim defaults to input_dim, and with O == D every parameter has the shape it had
    before conditional models existed, so saved models and configs load as they were."""
    from cerebrum.models.vrmgt import VRMGTConfig

    config = VRMGTConfig(input_dim=2, output_dim=None, **SMALL)
    assert config.output_dim == 2
    model = VRMGT(config)
    H, C, Z, hidden = SMALL["rnn_hidden"], SMALL["trans_d_model"], SMALL["z_dim"], 16
    assert model.encoder[0].weight.shape == (hidden, 2 + H + C)
    assert model.cell.weight_ih.shape == (3 * H, 2 + Z)
    assert model.emission.net[-1].weight.shape == (2 * 1 * (1 + 2 * 2), hidden)
    assert model.first_input.shape == (2,)


def test_generate_shapes_and_reproducibility():
    torch.manual_seed(0)
    model = VRMGT(input_dim=2, **SMALL)
    first = model.generate(6, 3, generator=torch.Generator().manual_seed(0))
    again = model.generate(6, 3, generator=torch.Generator().manual_seed(0))
    assert first.shape == (3, 6, 2) and torch.equal(first, again)
    assert torch.isfinite(first).all() and not first.requires_grad
    means = model.generate(6, 3, generator=torch.Generator().manual_seed(0), mean_only=True)
    assert means.shape == (3, 6, 2) and not torch.equal(means, first)


def test_generation_reproduces_a_switching_ar_process():
    """Fitted to a two-regime switching AR(1) process (D = 2), the VRMGT's samples have the
    data's per-dimension variance within a factor 2 (0.5x to 2x) and its lag-1
    autocorrelation within +-0.25 (the data's is about 0.76 and -0.27). The same checks fail
    before training, and means alone (mean_only) lack the variance: the check can tell."""
    torch.manual_seed(0)
    model = VRMGT(input_dim=2, **SMALL)
    data_var, data_lag1 = variance_and_lag1(switching_ar(512, 25, seed=1))

    def matches(samples):
        var, lag1 = variance_and_lag1(samples.numpy())
        return bool(np.all((0.5 * data_var < var) & (var < 2 * data_var))
                    and np.all(np.abs(lag1 - data_lag1) < 0.25)), var, lag1

    untrained, *_ = matches(model.generate(25, 256, generator=torch.Generator().manual_seed(0)))
    assert not untrained
    model.fit(switching_ar(64, 25, seed=0), epochs=30, batch_size=64, **QUICK)
    ok, var, lag1 = matches(model.generate(25, 256, generator=torch.Generator().manual_seed(0)))
    assert ok, (var, data_var, lag1, data_lag1)
    means = model.generate(25, 256, generator=torch.Generator().manual_seed(0), mean_only=True)
    assert np.all(variance_and_lag1(means.numpy())[0] < 0.5 * data_var)


def test_forward_refuses_nan_input():
    model = VRMGT(input_dim=2, **SMALL)
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        model(torch.full((1, 4, 2), float("nan")))
