"""SVF blocks: the cached SVD, adapted weights, mixtures, weight substitution."""

import pytest
import torch
from torch import nn

from cerebrum.models.gpt import GPT
from cerebrum.nn.svf import (
    SVFBasis,
    mixture_scales,
    resolve_targets,
    scale_of,
    substituted_weights,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 6))
        self.attn = nn.Linear(6, 6)

    def forward(self, x):
        return self.attn(self.mlp(x))


def test_svd_reconstructs_the_weight_to_float_tolerance():
    torch.manual_seed(0)
    net = Net()
    basis = SVFBasis(net, resolve_targets(net, "mlp"))
    for i, module in enumerate(basis.modules):
        U, sigma, Vh = basis.basis(i)
        assert U.shape == (module.out_features, min(module.weight.shape))
        assert Vh.shape == (min(module.weight.shape), module.in_features)
        torch.testing.assert_close(U @ torch.diag(sigma) @ Vh, module.weight.detach(),
                                   atol=1e-6, rtol=1e-5)


def test_scale_one_is_the_base_weight_bit_for_bit():
    assert torch.equal(scale_of(torch.zeros(5)), torch.ones(5))
    net = Net()
    basis = SVFBasis(net, ["mlp.0", "mlp.2"])
    for i, module in enumerate(basis.modules):
        ones = scale_of(torch.zeros(basis.ranks[i]))
        assert torch.equal(basis.adapted_weight(i, ones), module.weight.detach())


def test_adapted_weight_matches_an_independent_float64_svd():
    torch.manual_seed(1)
    net = Net()
    basis = SVFBasis(net, ["mlp.0"])
    z = torch.randn(basis.ranks[0])
    W = net.mlp[0].weight.detach().double()
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    expected = U @ torch.diag(s * 2 * torch.sigmoid(z.double())) @ Vh
    torch.testing.assert_close(basis.adapted_weight(0, scale_of(z)).double(), expected,
                               atol=1e-5, rtol=1e-5)


def test_the_basis_is_recomputed_when_the_weight_changes():
    net = Net()
    basis = SVFBasis(net, ["mlp.0"])
    first = basis.basis(0)
    assert basis.basis(0) is first and basis.is_current()  # cached
    with torch.no_grad():
        net.mlp[0].weight.mul_(2.0)
    assert not basis.is_current()
    U, sigma, Vh = basis.basis(0)
    torch.testing.assert_close(sigma, 2 * first[1])
    torch.testing.assert_close(U @ torch.diag(sigma) @ Vh, net.mlp[0].weight.detach(),
                               atol=1e-5, rtol=1e-5)


def test_a_one_hot_mixture_is_that_expert_exactly():
    torch.manual_seed(2)
    zs = [[torch.randn(6), torch.randn(6)] for _ in range(3)]
    for k in range(3):
        alpha = torch.zeros(3)
        alpha[k] = 1.0
        for got, z in zip(mixture_scales(zs, alpha), zs[k], strict=True):
            assert torch.equal(got, scale_of(z))
    with pytest.raises(ValueError, match="alpha"):
        mixture_scales(zs, torch.ones(2))


def test_substituted_weights_shadow_and_restore():
    net = Net()
    x = torch.randn(3, 6)
    before = net(x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    zero = torch.zeros_like(net.attn.weight)
    with substituted_weights([net.attn], [zero]):
        torch.testing.assert_close(net(x), net.attn.bias.expand(3, 6))
        assert net.attn.weight is zero
        assert isinstance(dict(net.named_parameters())["attn.weight"], nn.Parameter)
    assert torch.equal(net(x), before)
    with pytest.raises(RuntimeError, match="boom"), substituted_weights([net.attn], [zero]):
        raise RuntimeError("boom")
    assert isinstance(net.attn.weight, nn.Parameter)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_targets_select_the_gpt_mlp_and_skip_the_tied_head():
    gpt = GPT(n_layer=2, n_head=2, n_embd=16, block_size=8)
    assert resolve_targets(gpt, "mlp") == ["blocks.0.mlp.gate_up", "blocks.0.mlp.down",
                                           "blocks.1.mlp.gate_up", "blocks.1.mlp.down"]
    assert "head" not in resolve_targets(gpt, "all")
    assert resolve_targets(gpt, ["blocks.1.attn.*"]) == ["blocks.1.attn.qkv",
                                                         "blocks.1.attn.proj"]
    with pytest.raises(ValueError, match="targets"):
        resolve_targets(gpt, "everything")
    with pytest.raises(ValueError, match="targets"):
        resolve_targets(gpt, ["nothing.*"])
    with pytest.raises(ValueError, match=r"not nn\.Linear"):
        SVFBasis(gpt, ["blocks.0.norm1"])


def test_parameter_counts_beside_lora():
    net = Net()
    basis = SVFBasis(net, ["mlp.0", "mlp.2"])   # (10, 6) and (6, 10)
    assert basis.parameter_count() == 6 + 6
    assert basis.lora_parameter_count(4) == 4 * 16 + 4 * 16
