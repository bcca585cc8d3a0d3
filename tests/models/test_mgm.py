"""The MGM network (cerebrum.models.mgm): causality and batch independence through the whole
model (working memory included), the memory is used but leaks nothing, cached generation
equals recomputation, the seed's settings (hidden 128, 16 experts, top-4, 12 heads) run, and
bad settings are clear errors."""

import pytest
import torch

from cerebrum.models.mgm import MGM, MGMConfig

SMALL = dict(vocab_size=50, block_size=24, n_layer=2, hidden_dim=24, num_heads=3,
             experts_num=8, k_experts=2, expert_dim=12, memory_slots=4, memory_width=10)


def model(**kwargs):
    torch.manual_seed(0)
    return MGM(**{**SMALL, **kwargs}).double().eval()


@pytest.mark.parametrize("nuanced", [False, True])
def test_no_token_sees_a_later_token(nuanced):
    m = model(nuanced_routing=nuanced)
    idx = torch.randint(0, 50, (2, 20))
    logits = m(idx)[0]
    for cut in (1, 7, 19):
        changed = idx.clone()
        changed[:, cut:] = torch.randint(0, 50, changed[:, cut:].shape)
        other = m(changed)[0]
        torch.testing.assert_close(other[:, :cut], logits[:, :cut], atol=1e-12, rtol=1e-12)
        assert not torch.allclose(other[:, cut:], logits[:, cut:])


def test_a_sequence_does_not_depend_on_the_rest_of_its_batch():
    m = model()
    idx = torch.randint(0, 50, (4, 16))
    together = m(idx)[0]
    for b in range(4):
        torch.testing.assert_close(m(idx[b:b + 1])[0][0], together[b], atol=1e-12, rtol=1e-12)


def test_the_memory_is_used_and_carries_nothing_from_the_input():
    m = model()
    idx = torch.randint(0, 50, (1, 12))
    before = m(idx)[0]
    memory = m.memory.detach().clone()
    # its slots are parameters: nothing about any input is written into them
    m(torch.randint(0, 50, (3, 12)))
    assert torch.equal(m.memory, memory)
    with torch.no_grad():
        m.memory.add_(torch.randn_like(m.memory))
    after = m(idx)[0]
    assert not torch.allclose(before, after)  # attention reads the slots
    # and the first token's logits depend on the slots but on no later token (as above)
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_without_memory_the_model_still_runs():
    m = model(memory_slots=0)
    assert m.memory is None and m(torch.randint(0, 50, (2, 5)))[0].shape == (2, 5, 50)


def test_cached_generation_equals_recomputation():
    m = model()
    prompt = torch.randint(0, 50, (2, 5))
    cached = m.generate(prompt, 10, temperature=0)
    plain = m.generate(prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(m.generate(prompt, 8, temperature=1.0, generator=g1),
                       m.generate(prompt, 8, temperature=1.0, generator=g2, use_cache=False))


def test_the_math_kernel_gives_the_same_logits():
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(model()(idx)[0], model(flash_attention_off=True)(idx)[0])


def test_the_seeds_settings_run_and_train():
    torch.manual_seed(0)
    m = MGM(vocab_size=64, block_size=16, n_layer=1, hidden_dim=128, experts_num=16,
            k_experts=4, num_heads=12, memory_slots=8, memory_width=32)
    assert m.config.head_dim == 10 and m.blocks[0].attn.qkv.out_features == 3 * 120
    idx = torch.randint(0, 64, (2, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        _, loss, aux = m(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert aux["load"].shape == (16,) and aux["load"].sum().item() == pytest.approx(1.0)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_the_loss_is_cross_entropy_plus_the_weighted_auxiliary_losses():
    m = model(aux_loss_weight=0.5, z_loss_weight=0.25)
    idx = torch.randint(0, 50, (2, 9))
    _, loss, aux = m(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(loss, aux["nll"] + 0.5 * aux["balance"] + 0.25 * aux["z_loss"])


def test_experts_cycle_through_the_types_with_spread_curvatures():
    c = MGMConfig(experts_num=16)
    assert c.expert_types()[:8] == c.expert_types()[8:]
    curv = c.initial_curvatures()
    assert curv[1] == -0.5 and curv[9] == -2.0 and curv[2] == 0.5 and curv[10] == 2.0
    assert curv[0] is None and curv[4] is None


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(k_experts=9, experts_num=8), ValueError,
     r"k_experts must be <= experts_num \(8\), got k_experts=9"),
    (dict(manifolds=("euclidean", "klein")), ValueError, "unknown manifold 'klein'"),
    (dict(manifolds="euclidean"), TypeError, "manifolds must be a sequence"),
    (dict(num_heads=30, hidden_dim=24), ValueError, r"num_heads \(30\) must be <= hidden_dim"),
    (dict(curvature_range=(-1.0, 2.0)), ValueError, "curvature_range must be"),
    (dict(hidden_dim=0), ValueError, "hidden_dim must be >= 1"),
    (dict(nuanced_routing="yes"), TypeError, "nuanced_routing must be a bool"),
    (dict(expert_dim=7), ValueError, "a complex expert needs an even expert_dim"),
    (dict(aux_loss_weight=-1.0), ValueError, "aux_loss_weight must be >= 0"),
])
def test_bad_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        MGMConfig(**{**SMALL, **kwargs})


def test_too_long_inputs_are_refused():
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model()(torch.zeros(1, 25, dtype=torch.long))
