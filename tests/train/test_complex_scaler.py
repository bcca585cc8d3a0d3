"""ComplexFilteredGradScaler (cerebrum.train.complex_scaler) on CPU: the standard scaler
cannot unscale complex gradients; this one gives the same update as an unscaled reference
step, and an injected inf / NaN (in a complex or a real gradient) skips the step of every
parameter, across optimisers, and lowers the scale."""

import pytest
import torch
from torch import nn

from cerebrum.models.mgm import MGM
from cerebrum.train.complex_scaler import ComplexFilteredGradScaler


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.real = nn.Linear(4, 4)
        self.weight = nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))

    def forward(self, x):
        z = self.real(x).to(torch.complex64) @ self.weight
        return z.abs().pow(2).mean()


def optimisers(model):
    return [torch.optim.AdamW([model.real.weight, model.real.bias], lr=0.1),
            torch.optim.AdamW([model.weight], lr=0.1)]


def test_the_standard_scaler_cannot_unscale_complex_gradients():
    model = Mixed()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.randn(3, 4))).backward()
    with pytest.raises(NotImplementedError, match="ComplexFloat"):
        scaler.unscale_(optimisers(model)[1])


def test_a_scaled_step_equals_the_unscaled_reference_step():
    x = torch.randn(3, 4)
    reference, scaled = Mixed(), Mixed()
    ref_opts, opts = optimisers(reference), optimisers(scaled)
    reference(x).backward()
    for o in ref_opts:
        o.step()
    scaler = ComplexFilteredGradScaler("cpu", init_scale=2.0 ** 12)
    scaler.scale(scaled(x)).backward()
    for o in opts:
        scaler.unscale_(o)
    torch.testing.assert_close(scaled.weight.grad, reference.weight.grad)
    for o in opts:
        scaler.step(o)
    scaler.update()
    for (name, a), b in zip(scaled.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert scaler.get_scale() == 2.0 ** 12  # no overflow: unchanged (growth_interval 2000)


@pytest.mark.parametrize("where", ["complex", "real"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_an_injected_inf_skips_every_parameter_and_lowers_the_scale(where, value):
    model = Mixed()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = optimisers(model)
    scaler = ComplexFilteredGradScaler("cpu", init_scale=2.0 ** 12)
    scaler.scale(model(torch.randn(3, 4))).backward()
    if where == "complex":
        model.weight.grad[1, 2] = complex(value, 0.0)
    else:
        model.real.bias.grad[0] = value
    for o in opts:
        scaler.unscale_(o)
    assert scaler.found_inf_any()
    for o in opts:
        scaler.step(o)
    scaler.update()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert scaler.get_scale() == 2.0 ** 11
    # the next clean step goes through
    for o in opts:
        o.zero_grad()
    scaler.scale(model(torch.randn(3, 4))).backward()
    for o in opts:
        scaler.step(o)
    scaler.update()
    assert not torch.equal(model.weight, before["weight"])


def test_fp16_autocast_training_of_an_mgm_with_complex_parameters():
    torch.manual_seed(0)
    model = MGM(vocab_size=40, block_size=16, n_layer=1, hidden_dim=16, num_heads=2,
                experts_num=8, k_experts=2, expert_dim=8, memory_slots=2, memory_width=8,
                complex_parameters="native")
    assert any(p.is_complex() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = ComplexFilteredGradScaler("cpu", init_scale=2.0 ** 10)
    idx = torch.randint(0, 40, (4, 16))
    losses = []
    for _ in range(6):
        with torch.autocast("cpu", dtype=torch.float16):
            _, loss, _ = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(torch.view_as_real(p) if p.is_complex() else p).all()
               for p in model.parameters())
