"""The engine's optimisers: which parameters Muon takes, and that the pair acts as one."""

import pytest
import torch
from torch import nn

from cerebrum.models.gpt import GPT
from cerebrum.train.optim import Muon, build_optimizer, hidden_matrices, orthogonalise


def small_gpt():
    torch.manual_seed(0)
    return GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_muon_takes_the_hidden_matrices_and_adamw_everything_else():
    model = small_gpt()
    matrices = hidden_matrices(model)
    names = {id(p): n for n, p in model.named_parameters()}
    taken = sorted(names[id(p)] for p in matrices)
    # qkv, proj, gate_up, down in each of the 2 blocks; not the tied embedding / head
    assert len(taken) == 8 and all(n.startswith("blocks.") for n in taken)
    assert all(p.dim() == 2 for p in matrices)
    optimizer = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.1,
                                betas=(0.9, 0.95), fused=False)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    covered = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_an_untied_head_is_a_hidden_matrix_but_an_embedding_never_is():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    assert hidden_matrices(model) == [model[1].weight]
    model[1].weight = model[0].weight  # tie
    assert hidden_matrices(model) == []


def test_the_pair_steps_both_and_round_trips_its_state():
    model = small_gpt()
    optimizer = build_optimizer(model, name="muon", lr=1e-2, weight_decay=0.0,
                                betas=(0.9, 0.95), fused=False)
    before = [p.detach().clone() for p in model.parameters()]
    _, loss = model(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8)))
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    for group in optimizer.param_groups:  # the schedule's way of setting lr reaches both
        group["lr"] = 0.5
    assert all(g["lr"] == 0.5 for opt in optimizer.optimizers for g in opt.param_groups)
    state = optimizer.state_dict()
    fresh = build_optimizer(small_gpt(), name="muon", lr=1e-2, weight_decay=0.0,
                            betas=(0.9, 0.95), fused=False)
    fresh.load_state_dict(state)
    assert fresh.state_dict()[0]["param_groups"] == state[0]["param_groups"]
    with pytest.raises(ValueError, match="saved state has 1 optimisers"):
        fresh.load_state_dict(state[1:])


@pytest.mark.parametrize("shape", [(32, 32), (48, 16), (16, 48)])
def test_orthogonalise_maps_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    out = orthogonalise(g)
    assert out.dtype == g.dtype and out.shape == g.shape
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.5 and singular.max() < 1.3  # the iteration's known band
    # same singular vectors as the input: U^T out V is diagonal
    inner = u.T @ out @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-10)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_muon(nesterov):
    """Three steps against torch.optim.Muon (bfloat16 iteration: agreement to about 1%)."""
    torch.manual_seed(0)
    ours, theirs = nn.Linear(24, 40, bias=False), nn.Linear(24, 40, bias=False)
    theirs.load_state_dict(ours.state_dict())
    start = ours.weight.detach().clone()
    mine = Muon([ours.weight], lr=0.02, weight_decay=0.1, nesterov=nesterov)
    reference = torch.optim.Muon([theirs.weight], lr=0.02, weight_decay=0.1,
                                 nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        grad = torch.randn(40, 24, generator=torch.Generator().manual_seed(step))
        ours.weight.grad, theirs.weight.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    moved_ours, moved_theirs = ours.weight - start, theirs.weight - start
    assert (moved_ours - moved_theirs).norm() < 0.02 * moved_theirs.norm()


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="matrices only"):
        Muon([nn.Parameter(torch.zeros(3))])


def test_bad_optimizer_and_empty_models():
    with pytest.raises(ValueError, match="optimizer must be one of adamw, muon"):
        build_optimizer(small_gpt(), name="adam", lr=1e-3, weight_decay=0.0,
                        betas=(0.9, 0.95), fused=False)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, name="adamw", lr=1e-3, weight_decay=0.0,
                        betas=(0.9, 0.95), fused=False)
