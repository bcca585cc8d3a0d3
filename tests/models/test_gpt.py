"""The GPT baseline: causality, the KV cache, sampling, bad input."""

import pytest
import torch

from cerebrum.models.gpt import GPT, GPTConfig, sample_next

TINY = dict(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=16)
#: The small-model options on, with the bigram table made non-zero (it starts at zero).
OPTIONS = dict(mlp="relu2", qk_norm=True, bigram_buckets=64)
VARIANTS = pytest.mark.parametrize("options", [{}, OPTIONS], ids=["plain", "options"])


def model(**options):
    torch.manual_seed(0)
    m = GPT(**TINY, **options).eval()
    if m.bigram is not None:
        torch.nn.init.normal_(m.bigram.table.weight, std=0.5)
    return m


@VARIANTS
def test_logits_are_causal_and_embeddings_tied(options):
    m = model(**options)
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


@VARIANTS
def test_cached_generation_equals_recomputing_everything(options):
    m = model(**options)
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


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    for qk_norm in (False, True):
        m = model(qk_norm=qk_norm)
        idx = torch.randint(0, 50, (2, 12))
        before, _ = m(idx)
        with torch.no_grad():
            for block in m.blocks:  # the first two thirds of qkv's rows make q and k
                block.attn.qkv.weight[:2 * 16].mul_(7.0)
        after, _ = m(idx)
        assert torch.allclose(after, before, atol=1e-5) == qk_norm


def test_bigram_table_sees_the_previous_token():
    m = model(**OPTIONS)
    table = m.bigram
    previous = torch.arange(51).unsqueeze(1)  # every previous token; 50 = the start marker
    pairs = torch.stack([table.bucket(torch.full((51, 1), t), previous) for t in range(50)])
    assert pairs.min() >= 0 and pairs.max() < 64
    load = torch.bincount(pairs.flatten(), minlength=64)
    # 2,550 pairs spread over all 64 rows, none with more than twice its share
    assert (load > 0).all() and load.max() < 2 * pairs.numel() / 64
    # the embedding of token t at position i depends on token i - 1 through the table only
    x = torch.tensor([[3, 7, 7]])
    y = torch.tensor([[4, 7, 7]])
    ex = m.embed(x) + table(x, torch.tensor([[50]]))
    ey = m.embed(y) + table(y, torch.tensor([[50]]))
    assert not torch.allclose(ex[0, 1], ey[0, 1]) and torch.allclose(ex[0, 2], ey[0, 2])


def test_zero_init_residual_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    m = GPT(**TINY, zero_init_residual=True, mlp="relu2")
    idx = torch.randint(0, 50, (2, 12))
    x = m.embed(idx)
    cos, sin = m.rope_cos[:12], m.rope_sin[:12]
    for block in m.blocks:
        torch.testing.assert_close(block(x, cos, sin), x)
    assert all(b.attn.proj.weight.abs().sum() == 0 and b.mlp.down.weight.abs().sum() == 0
               for b in m.blocks)
    _, loss = m(idx, idx)
    loss.backward()  # and yet they learn: the output projections get gradients
    assert all(b.mlp.down.weight.grad.abs().sum() > 0 for b in m.blocks)


def test_a_new_bigram_table_starts_as_the_plain_model():
    plain, optioned = model(), GPT(**TINY, bigram_buckets=64).eval()
    missing = optioned.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["bigram.table.weight"]
    idx = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(optioned(idx)[0], plain(idx)[0])


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
    with pytest.raises(ValueError, match="bigram_buckets must be >= 0, got -1"):
        GPTConfig(bigram_buckets=-1)
    with pytest.raises(TypeError, match="qk_norm must be a bool"):
        GPTConfig(qk_norm="yes")
    with pytest.raises(ValueError, match="mlp must be one of swiglu, relu2"):
        GPTConfig(mlp="gelu")


def test_the_network_module_stands_alone():
    """gpt.py imports only torch (the Hugging Face export ships it verbatim), and importing it
    loads neither numba nor the engine nor the managers."""
    import subprocess
    import sys

    code = ("import sys, cerebrum.models.gpt; "
            "print(sorted(m for m in sys.modules if m == 'numba' or "
            "m.startswith(('cerebrum.train', 'cerebrum.brain', 'cerebrum.mixtures'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("value", [0, 1, 7, -1, True, 2.0, "3", None])
@pytest.mark.parametrize("minimum", [0, 1])
def test_its_copy_of_check_positive_int_behaves_as_the_librarys(value, minimum):
    from cerebrum._util.validation import check_positive_int as library
    from cerebrum.models.gpt import check_positive_int as copy

    def outcome(check):
        try:
            return check(value, name="x", minimum=minimum)
        except (TypeError, ValueError) as err:
            return type(err), str(err)

    assert outcome(copy) == outcome(library)
