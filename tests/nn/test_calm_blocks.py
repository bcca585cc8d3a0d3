"""The blocks of the calm family (seed 002): SSMs, Hopfield retrieval, energy heads and losses,
each against an independent reference (loops, float64 recurrences) or an invariant."""

import itertools
import math

import pytest
import torch

from cerebrum.nn.energy import (
    GatedEnergyHead,
    MLPEnergyHead,
    energy_loss,
    energy_terms,
    rf_loss,
)
from cerebrum.nn.hopfield import HopfieldMemory, hopfield_retrieve
from cerebrum.nn.ssm import CausalDepthwiseConv, DiagonalSSM, GatedSSM

# ----------------------------------------------------------------------------- energy


@pytest.mark.parametrize("alpha", [1.0, 0.5, 1.5])
def test_energy_terms_equal_a_brute_force_double_loop(alpha):
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(3, 5, 4, generator=g)   # 3 positions, N = 5, Dz = 4
    targets = torch.randn(3, 6, 4, generator=g)   # M = 6
    d_fid, d_div = energy_terms(samples, targets, alpha)
    for p in range(3):
        x, y = samples[p].double(), targets[p].double()
        fid = sum(torch.linalg.norm(x[i] - y[j]) ** alpha
                  for i in range(5) for j in range(6)) / 30
        div = sum(torch.linalg.norm(x[i] - x[k]) ** alpha
                  for i, k in itertools.permutations(range(5), 2)) / 20
        assert d_fid[p].item() == pytest.approx(fid.item(), rel=1e-5)
        assert d_div[p].item() == pytest.approx(div.item(), rel=1e-5)
    assert torch.allclose(energy_loss(samples, targets, alpha), 2 * d_fid - d_div)


def test_energy_terms_have_finite_gradients_where_samples_coincide():
    samples = torch.zeros(2, 3, 4, requires_grad=True)
    d_fid, d_div = energy_terms(samples, torch.ones(2, 2, 4))
    (2 * d_fid - d_div).sum().backward()
    assert torch.isfinite(samples.grad).all()


@pytest.mark.parametrize("head_class", [GatedEnergyHead, MLPEnergyHead])
def test_the_energy_loss_recovers_a_gaussians_mean_and_spread(head_class):
    """A head trained by the energy loss alone on samples of N(mean, diag(std^2)) in 2-D
    (a constant hidden state) generates that distribution: mean within 0.2 (0.13 of the
    larger std) and standard deviation within 10% (5,000 generated samples; measured: within
    0.13 and 4% for two seeds; the tolerance covers the head's finite training, an improper
    loss such as the MSE would collapse the spread to 0)."""
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5])
    head = head_class(4, 2, width=32, depth=2)
    h = torch.zeros(64, 8, 4)  # 64 positions x 8 samples
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(500):
        for group in optimizer.param_groups:
            group["lr"] = 5e-3 if step < 300 else 1e-3
        noise = torch.randn(64, 8, 2, generator=g)
        z, _ = head(h, noise)
        targets = mean + std * torch.randn(64, 16, 2, generator=g)
        loss = energy_loss(z, targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z, _ = head(torch.zeros(5000, 4), torch.randn(5000, 2, generator=g))
    assert torch.allclose(z.mean(0), mean, atol=0.2), z.mean(0)
    assert torch.allclose(z.std(0), std, rtol=0.1), z.std(0)


def test_the_gated_head_outputs_g_delta_plus_one_minus_g_noise():
    torch.manual_seed(0)
    head = GatedEnergyHead(6, 3, width=16)
    h, noise = torch.randn(2, 5, 6), torch.randn(2, 5, 3)
    z, gate = head(h, noise)
    delta, g = head.parts(h, noise)
    assert torch.equal(gate, g) and ((g > 0) & (g < 1)).all()
    assert torch.allclose(z, g * delta + (1 - g) * noise, atol=1e-6)
    # and the gate is the one computed from [h, noise] through the head's own layers
    x = head.blocks(head.inp(torch.cat([h, noise], -1)))
    assert torch.allclose(g, torch.sigmoid(head.out(head.norm(x))[..., 3:]))


def test_rf_loss_is_one_minus_the_cosine_of_the_flows_directions():
    noise = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    z_pred = torch.tensor([[0.0, 3.0], [1.0, 0.0]])  # orthogonal; opposite
    assert torch.allclose(rf_loss(z_pred, noise, target, "cos"), torch.tensor([1.0, 2.0]))
    assert torch.allclose(rf_loss(z_pred, noise, target, "mse"),
                          ((z_pred - target) ** 2).mean(-1))
    with pytest.raises(ValueError, match="rf_form must be one of cos, mse, got 'l1'"):
        rf_loss(z_pred, noise, target, "l1")


def test_energy_terms_refuse_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        energy_terms(torch.zeros(3, 1, 2), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 2\)"):
        energy_terms(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2), alpha=2.0)
    with pytest.raises(ValueError, match="must share their leading shape"):
        energy_terms(torch.zeros(3, 2, 2), torch.zeros(4, 2, 2))


# ----------------------------------------------------------------------------- Hopfield


def test_hopfield_retrieval_equals_the_explicit_formula():
    g = torch.Generator().manual_seed(0)
    q, keys, values = (torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g),
                       torch.randn(6, 5, generator=g))
    out = hopfield_retrieve(q, keys, values, beta=0.7)
    for i in range(4):
        logits = [0.7 * float(q[i].double() @ keys[s].double()) for s in range(6)]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        expected = sum(w * values[s].double() for s, w in enumerate(weights)) / sum(weights)
        assert torch.allclose(out[i].double(), expected, atol=1e-5)


def test_hopfield_with_large_beta_returns_the_nearest_stored_pattern():
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(10, 16, generator=g), dim=-1)
    values = torch.randn(10, 7, generator=g)
    queries = keys + 0.2 * torch.randn(10, 16, generator=g)  # noisy versions of each key
    nearest = torch.cdist(queries, keys).argmin(-1)
    assert torch.equal(nearest, torch.arange(10))  # the noise left each query nearest its key
    out = hopfield_retrieve(queries, keys, values, beta=1000.0)
    assert torch.allclose(out, values[nearest], atol=1e-5)


def test_hopfield_memory_is_position_wise_and_checks_its_arguments():
    torch.manual_seed(0)
    layer = HopfieldMemory(8, 5)
    assert layer.beta == pytest.approx(1 / math.sqrt(8))
    x = torch.randn(2, 6, 8)
    y = layer(x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    changed = (layer(x2) - y).abs().amax((0, 2)) > 0
    assert changed.tolist() == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="slots \\(hop_mem_slots\\) must be a positive integer"):
        HopfieldMemory(8, 0)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        HopfieldMemory(8, 4, beta=-1.0)


# ----------------------------------------------------------------------------- SSMs


def test_the_causal_depthwise_conv_equals_an_explicit_loop():
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(3, 4)
    x = torch.randn(2, 7, 3)
    y = conv(x)
    w, b = conv.conv.weight[:, 0], conv.conv.bias  # (D, k), (D,)
    for t in range(7):
        expected = b.clone()
        for j in range(4):
            s = t - 3 + j
            if s >= 0:
                expected = expected + w[:, j] * x[:, s]
        assert torch.allclose(y[:, t], expected, atol=1e-6)


def test_the_diagonal_ssm_equals_its_recurrence():
    """The FFT convolution equals stepping s_t = exp(dt A) s_{t-1} + (exp(dt A) - 1)/A x_t,
    y_t = 2 Re(C s_t) + skip x_t in complex128."""
    torch.manual_seed(0)
    ssm = DiagonalSSM(3, state_size=4)
    with torch.no_grad():
        ssm.log_dt.uniform_(-2.0, -0.5)  # a kernel that is not negligible
    x = torch.randn(2, 9, 3)
    y = ssm(x)
    dt = ssm.log_dt.detach().double().exp().unsqueeze(-1)
    a = torch.complex(-ssm.log_a_real.detach().double().exp(), ssm.a_imag.detach().double())
    c = torch.view_as_complex(ssm.c.detach().double().contiguous())
    decay, gain = torch.exp(dt * a), (torch.exp(dt * a) - 1) / a
    state = torch.zeros(2, 3, 4, dtype=torch.complex128)
    for t in range(9):
        state = decay * state + gain * x[:, t].double().unsqueeze(-1)
        expected = 2 * (c * state).sum(-1).real + ssm.skip.detach().double() * x[:, t].double()
        assert torch.allclose(y[:, t].double(), expected, atol=1e-5), t


@pytest.mark.parametrize("kind", ["conv", "diag"])
def test_the_gated_ssms_are_causal(kind):
    torch.manual_seed(0)
    layer = GatedSSM(8, kind=kind, kernel_size=3)
    x = torch.randn(2, 10, 8)
    y = layer(x)
    future = x.clone()
    future[:, 6:] = torch.randn(2, 4, 8)
    y2 = layer(future)
    assert torch.equal(y[:, :6], y2[:, :6]) or torch.allclose(y[:, :6], y2[:, :6], atol=1e-6)
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


@pytest.mark.parametrize("kind", ["conv", "diag"])
def test_stepping_the_gated_ssms_equals_their_forward(kind):
    torch.manual_seed(0)
    layer = GatedSSM(8, kind=kind, kernel_size=3, state_size=4)
    x = torch.randn(2, 10, 8)
    state = layer.initial_state(2)
    steps = []
    for t in range(10):
        y, state = layer.step(x[:, t], state)
        steps.append(y)
    assert torch.allclose(torch.stack(steps, 1), layer(x), atol=1e-5)


def test_the_ssms_refuse_bad_settings():
    with pytest.raises(ValueError, match="ssm must be one of conv, diag, got 'lstm'"):
        GatedSSM(8, kind="lstm")
    with pytest.raises(ValueError, match=r"kernel_size \(ssm_kernel\) must be >= 1, got 0"):
        GatedSSM(8, kernel_size=0)
    with pytest.raises(TypeError, match="state_size must be an integer"):
        DiagonalSSM(8, state_size=2.5)
