"""Top-K routing and dropless dispatch (cerebrum.nn.routing): the sorted dispatch equals a
dense reference, weights are renormalised, the auxiliary losses equal their formulas (and 1
under uniform routing), a token's output does not depend on the other tokens, and the nuanced
gate starts as the plain one."""

import pytest
import torch
from torch import nn

from cerebrum.nn.manifolds import MANIFOLDS, GeometricExpert
from cerebrum.nn.routing import (
    EXPERT_FEATURES,
    MixtureOfExperts,
    Routing,
    TopKRouter,
    token_geometry,
)


def moe(n_experts=6, k=2, dim=8, nuanced=False):
    torch.manual_seed(0)
    experts = [GeometricExpert(dim, 6, MANIFOLDS[i % 8]) for i in range(n_experts)]
    features = (lambda: torch.randn(n_experts, EXPERT_FEATURES)) if nuanced else None
    return MixtureOfExperts(dim, experts, k, nuanced=nuanced, expert_features=features).double()


def test_sparse_dispatch_equals_the_dense_reference():
    layer = moe(n_experts=8, k=3)
    x = torch.randn(40, 8, dtype=torch.float64)
    routing = layer.route(x)
    torch.testing.assert_close(layer.dispatch(x, routing), layer.dense_reference(x, routing),
                               atol=1e-12, rtol=1e-12)
    out, _ = layer(x.view(5, 8, 8))
    torch.testing.assert_close(out.view(40, 8), layer.dense_reference(x, routing))


def test_weights_are_the_renormalised_top_k_probabilities():
    layer = moe(k=3)
    routing = layer.route(torch.randn(20, 8, dtype=torch.float64))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(20, dtype=torch.float64))
    top = routing.probs.topk(3, -1)
    assert torch.equal(routing.experts, top.indices)
    torch.testing.assert_close(routing.weights, top.values / top.values.sum(-1, keepdim=True))


def test_the_auxiliary_losses_equal_their_formulas():
    torch.manual_seed(1)
    logits = torch.randn(30, 5, dtype=torch.float64)
    probs = logits.softmax(-1)
    top = probs.topk(2, -1)
    routing = Routing(experts=top.indices, weights=top.values / top.values.sum(-1, keepdim=True),
                      probs=probs, logits=logits)
    f = torch.tensor([(top.indices == e).sum().item() / 60 for e in range(5)],
                     dtype=torch.float64)
    expected = 5 * sum(f[e] * probs[:, e].mean() for e in range(5))
    torch.testing.assert_close(routing.balance_loss(5), expected)
    torch.testing.assert_close(routing.z_loss(), (logits.logsumexp(-1) ** 2).mean())


def test_uniform_routing_gives_a_balance_loss_of_one():
    n, e, k = 24, 6, 2
    probs = torch.full((n, e), 1 / e, dtype=torch.float64)
    experts = torch.stack([torch.arange(n) % e, (torch.arange(n) + 1) % e], 1)
    routing = Routing(experts=experts, weights=torch.full((n, k), 0.5, dtype=torch.float64),
                      probs=probs, logits=torch.zeros(n, e, dtype=torch.float64))
    assert routing.balance_loss(e).item() == pytest.approx(1.0)
    torch.testing.assert_close(routing.load(e), torch.full((e,), 1 / e, dtype=torch.float64))
    # everything on one expert: E * 1 * P_e
    collapsed = Routing(experts=torch.zeros(n, 1, dtype=torch.long),
                        weights=torch.ones(n, 1, dtype=torch.float64), probs=probs,
                        logits=probs)
    assert collapsed.balance_loss(e).item() == pytest.approx(1.0)
    peaked = torch.zeros(n, e, dtype=torch.float64)
    peaked[:, 0] = 1
    collapsed.probs = peaked
    assert collapsed.balance_loss(e).item() == pytest.approx(e)


def test_a_tokens_output_does_not_depend_on_the_other_tokens():
    layer = moe(n_experts=8, k=2)
    x = torch.randn(16, 8, dtype=torch.float64)
    together, _ = layer(x)
    for i in (0, 7, 15):
        alone, _ = layer(x[i:i + 1])
        torch.testing.assert_close(alone[0], together[i], atol=1e-12, rtol=1e-12)


def test_the_nuanced_gate_starts_as_the_plain_gate_and_learns():
    torch.manual_seed(2)
    plain = TopKRouter(8, 5, 2)
    nuanced = TopKRouter(8, 5, 2, nuanced=True)
    nuanced.gate.load_state_dict(plain.gate.state_dict())
    x = torch.randn(10, 8)
    features = torch.randn(5, EXPERT_FEATURES)
    torch.testing.assert_close(nuanced(x, features).probs, plain(x).probs)
    nuanced(x, features).probs[:, 0].sum().backward()
    assert nuanced.geometry.grad.abs().sum() > 0
    assert token_geometry(x).shape == (10, 3)
    with pytest.raises(ValueError, match="nuanced routing needs the experts' features"):
        nuanced(x)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: TopKRouter(8, 4, 5), ValueError, r"k \(experts chosen per token\) must be <= "
                                              r"n_experts \(4\), got k=5"),
    (lambda: TopKRouter(8, 4, 0), ValueError, "k must be >= 1"),
    (lambda: TopKRouter(8, 2.5, 1), TypeError, "n_experts must be an integer"),
    (lambda: MixtureOfExperts(8, [], 1), ValueError, "at least one expert"),
    (lambda: TopKRouter(8, 4, 2)(torch.randn(2, 3, 8)), ValueError, r"x must be \(N, C\)"),
])
def test_bad_settings_are_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_router_computes_in_float32_under_autocast():
    router = TopKRouter(8, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(nn.Linear(8, 8)(torch.randn(3, 8)))
    assert routing.probs.dtype == torch.float32
