"""The vector quantiser and the VQ-VAE: straight-through gradients, the EMA codebook update
against a hand computation, initialisation and restart of codes, frozen use, clear errors."""

import numpy as np
import pytest
import torch

from cerebrum.data.gridworld import GridWorldSpec, cell_classes, puzzle_batch
from cerebrum.nn.vq import VQVAE, VectorQuantizer, codebook_usage, farthest_points


def quantizer_with(codebook, decay=0.5):
    q = VectorQuantizer(len(codebook), len(codebook[0]), decay=decay)
    q.codebook.copy_(torch.tensor(codebook))
    q.embed_sum.copy_(q.codebook)
    q.initialised.fill_(True)
    return q


def test_straight_through_passes_the_gradient_unchanged_to_the_input():
    q = quantizer_with([[0.0, 0.0], [1.0, 1.0]]).eval()
    z = torch.tensor([[0.1, 0.2], [0.9, 0.7]], requires_grad=True)
    quantised, codes, _ = q(z)
    assert codes.tolist() == [0, 1]
    assert torch.equal(quantised.detach(), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    (quantised * weight).sum().backward()
    assert torch.equal(z.grad, weight)  # d(quantised)/dz is the identity


def test_the_commitment_term_pulls_the_encoder_output_to_its_code():
    q = quantizer_with([[0.0, 0.0], [1.0, 1.0]]).eval()
    z = torch.tensor([[0.1, 0.2]], requires_grad=True)
    _, _, commitment = q(z)
    assert commitment.item() == pytest.approx((0.01 + 0.04) / 2)
    commitment.backward()
    assert torch.allclose(z.grad, torch.tensor([[0.1, 0.2]]))  # 2 (z - e) / 2


def test_the_ema_update_matches_a_hand_computation():
    q = quantizer_with([[0.0, 0.0], [4.0, 4.0], [9.0, 9.0]], decay=0.5).train()
    q.cluster_size.copy_(torch.tensor([2.0, 2.0, 2.0]))
    q.embed_sum.copy_(torch.tensor([[0.0, 0.0], [8.0, 8.0], [18.0, 18.0]]))
    z = torch.tensor([[1.0, 0.0], [3.0, 5.0], [5.0, 3.0]])  # codes 0, 1, 1
    q(z)
    assert torch.allclose(q.cluster_size, torch.tensor([1.5, 2.0, 1.0]))
    assert torch.allclose(q.embed_sum, torch.tensor([[0.5, 0.0], [8.0, 8.0], [9.0, 9.0]]))
    total, eps, k = 4.5, q.eps, 3
    smoothed = (torch.tensor([1.5, 2.0, 1.0]) + eps) / (total + k * eps) * total
    assert torch.allclose(q.codebook, q.embed_sum / smoothed[:, None])
    before = q.codebook.clone()
    q.eval()(z)  # evaluation mode: frozen
    assert torch.equal(q.codebook, before)


def test_the_first_batch_gives_every_distinct_vector_a_code():
    q = VectorQuantizer(4, 2, decay=0.9).train()
    points = torch.tensor([[0.0, 0.0]] * 20 + [[5.0, 0.0]] * 3 + [[0.0, 5.0]])
    _, codes, _ = q(points)
    assert len(set(codes.tolist())) == 3
    assert farthest_points(points, 3).tolist() == [[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]


def test_a_dead_code_restarts_on_a_merged_cluster():
    # codes 0 and 1 live; code 2 dead and far away; the batch holds a cluster at (10, 0) that
    # code 1 absorbs: the restart moves code 2 onto it
    q = quantizer_with([[0.0, 0.0], [6.0, 0.0], [-50.0, -50.0]], decay=0.9).train()
    q.cluster_size.copy_(torch.tensor([10.0, 10.0, 0.0]))
    z = torch.cat([torch.zeros(40, 2), torch.full((40, 2), 0.0) + torch.tensor([2.0, 0.0]),
                   torch.tensor([[10.0, 0.0]] * 4)])
    q(z)
    assert torch.allclose(q.codebook[2], torch.tensor([10.0, 0.0]))
    assert int(q.quantize(torch.tensor([10.0, 0.0]))) == 2


def small_batch(seed=0, size=8):
    spec = GridWorldSpec(size=3, n_moves=2, cell_pixels=4)
    return puzzle_batch(spec, np.random.default_rng(seed), size)["frames"].flatten(0, 1)


def test_gradients_reach_the_encoder_and_the_codebook_learns_the_cells():
    torch.manual_seed(0)
    vq = VQVAE(image_size=12, patch=4, codebook_size=12, code_dim=8, hidden=32, decay=0.8)
    out = vq(small_batch())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vq.parameters())
    optimiser = torch.optim.Adam(vq.parameters(), lr=1e-2)
    first, batches = None, [small_batch(seed) for seed in range(4)]
    for step in range(100):
        optimiser.zero_grad()
        loss = vq(batches[step % 4]).reconstruction_loss
        first = first if first is not None else loss.item()
        loss.backward()
        optimiser.step()
    assert loss.item() < first / 5
    frames = small_batch(999)
    codes = vq.encode(frames)
    assert codes.shape == (len(frames), vq.tokens_per_image) == (len(frames), 9)
    rebuilt = vq.decode(codes)
    assert rebuilt.dtype == torch.uint8 and rebuilt.shape == frames.shape
    accuracy = (cell_classes(rebuilt, 4) == cell_classes(frames, 4)).float().mean()
    assert accuracy > 0.9  # of held-out images (the bench trains to 100%)
    usage = codebook_usage(codes, 12)
    assert 0 < usage["used"] <= 1 and 1 <= usage["perplexity"] <= 12


def test_encode_never_moves_the_codebook():
    vq = VQVAE(image_size=12, patch=4, codebook_size=4, code_dim=4).train()
    vq(small_batch())
    before = vq.codebook.clone()
    vq.encode(small_batch(1))
    assert torch.equal(vq.codebook, before)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: VQVAE(image_size=10, patch=3), "vq_patch"),
    (lambda: VectorQuantizer(8, 4, decay=1.0), "codebook_decay"),
    (lambda: VectorQuantizer(1, 4), "codebook_size"),
    (lambda: VQVAE(image_size=9, patch=3)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)),
     "images must be"),
    (lambda: VQVAE(image_size=9, patch=3).decode(torch.zeros(1, 4, dtype=torch.long)),
     "codes must be"),
    (lambda: VQVAE(image_size=9, patch=3, codebook_size=4).decode(
        torch.full((1, 9), 4, dtype=torch.long)), "codes must be in"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
