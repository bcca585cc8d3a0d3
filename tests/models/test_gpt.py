"""The GPT baseline: causality, the KV cache, sampling, bad input."""

import pytest
import torch

from cerebrum.models.gpt import GPT, GPTConfig, sample_next

TINY = dict(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=16)


def model():
    torch.manual_seed(0)
    return GPT(**TINY).eval()


def test_logits_are_causal_and_embeddings_tied():
    m = model()
    idx = torch.randint(0, 50, (2, 12))
    base, _ = m(idx)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    after, _ = m(changed)
    torch.testing.assert_close(after[:, :7], base[:, :7])
    assert not torch.allclose(after[:, 7], base[:, 7])
    assert m.head.weight is m.embed.weight


def test_loss_is_the_cross_entropy_and_ignores_masked_targets():
    m = model()
    idx = torch.randint(0, 50, (2, 10))
    targets = torch.randint(0, 50, (2, 10))
    targets[0, :3] = -100
    logits, loss = m(idx, targets)
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


def test_cached_generation_equals_recomputing_everything():
    m = model()
    prompt = torch.randint(0, 50, (2, 5))
    out = m.generate(prompt, 12, temperature=0)
    x = prompt
    for _ in range(12):
        logits, _ = m(x)
        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, x)
    assert torch.equal(m.generate(prompt, 12, top_k=1), out)  # top-1 sampling is greedy
    a = m.generate(prompt, 8, temperature=0.9, top_p=0.9,
                   generator=torch.Generator().manual_seed(3))
    b = m.generate(prompt, 8, temperature=0.9, top_p=0.9,
                   generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(3000, 4)
    draws = sample_next(logits, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(draws.flatten().tolist()) == {0, 1}


def test_bad_input_and_settings():
    m = model()
    with pytest.raises(ValueError, match=r"sequence length 25 exceeds the model's context"):
        m(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        m.generate(torch.zeros(1, 20, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="must be a multiple of n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match=r"idx must be \(B, T\)"):
        m(torch.zeros(5, dtype=torch.long))
