"""NEAT's byte network: every switch combination, causality through the whole model, the
fresh model's bits per byte, the engineering switches and the config's errors."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from cerebrum.models.neat import NEATConfig, NEATNetwork

TINY = dict(block_size=48, n_layer=2, n_head=2, n_embd=16, local_dim=16, local_heads=2,
            ngram_buckets=64, entropy_layers=1, entropy_dim=16, attention_window=8,
            n_persistent=2, memory_dim=8, memory_hidden=8, memory_chunk=4, max_patch_length=6)

COMBINATIONS = [dict(use_blt_processor=b, use_titans_memory=t)
                for b, t in itertools.product([False, True], repeat=2)]
VARIANTS = [
    *COMBINATIONS,
    dict(use_blt_processor=True, use_titans_memory=True, titans_mode="mag"),
    dict(use_blt_processor=True, patching="monotonic", patch_size=3.0),
    dict(use_blt_processor=True, patching="space"),
    dict(use_blt_processor=True, patching="fixed", patch_size=3.0),
    dict(use_titans_memory=True, dynamic_component_activation=True, surprise_threshold=0.5),
    dict(use_sliding_window=True),
]


def network(**switches):
    torch.manual_seed(0)
    net = NEATNetwork(NEATConfig(**{**TINY, **switches}))
    net.eval()
    if net.entropy_model is not None:  # a trained-looking entropy model: random weights
        for p in net.entropy_model.parameters():
            p.data.normal_(0, 0.5)
    return net


def ids(B=2, T=40, seed=0):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("switches", VARIANTS, ids=str)
def test_logits_of_byte_i_depend_on_bytes_up_to_i_only(switches):
    net = network(**switches)
    x = ids()
    if net.entropy_model is not None:
        net.calibrate(x)
        assert not math.isnan(float(net.threshold))
    with torch.no_grad():
        logits = net(x)[0]
        assert logits.shape == (2, 40, 259) and logits.dtype == torch.float32
        for i in (0, 7, 21, 39):
            changed = x.clone()
            changed[:, i] = (changed[:, i] + 101) % 256
            other = net(changed)[0]
            torch.testing.assert_close(other[:, :i], logits[:, :i], atol=1e-5, rtol=0)
            assert (other[:, i:] - logits[:, i:]).abs().max() > 1e-4  # i itself counts


@pytest.mark.parametrize("switches", COMBINATIONS, ids=str)
def test_a_fresh_model_scores_about_8_bits_per_byte(switches):
    net = network(**switches)
    x = ids(T=48)
    with torch.no_grad():
        nll = F.cross_entropy(net(x[:, :-1])[0].flatten(0, 1), x[:, 1:].flatten())
    assert float(nll) / math.log(2) == pytest.approx(8.0, abs=0.15)


@pytest.mark.parametrize("switches", COMBINATIONS, ids=str)
def test_gradients_reach_every_trained_parameter(switches):
    net = network(**switches)
    net.train()
    x = ids()
    _, loss = net(x[:, :-1], x[:, 1:])
    loss.backward()
    for name, p in net.named_parameters():
        if name.startswith("entropy_model"):
            assert p.grad is None, name  # frozen: the entropies carry no gradient
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        net = network(use_blt_processor=True, use_titans_memory=True,
                      gradient_checkpointing=flag)
        net.train()
        x = ids()
        net(x[:, :-1], x[:, 1:])[1].backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_mixed_precision_runs_in_bf16_with_float32_weights_and_logits():
    net = network(use_blt_processor=True, use_titans_memory=True, mixed_precision=True)
    x = ids()
    logits, loss = net(x[:, :-1], x[:, 1:])
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    loss.backward()


def test_dynamic_activation_skips_quiet_memory_writes():
    x = ids()
    busy = network(use_titans_memory=True)
    quiet = network(use_titans_memory=True, dynamic_component_activation=True,
                    surprise_threshold=1e6)
    with torch.no_grad():
        busy(x)
        quiet(x)
    assert busy.last_stats["writes"] == 2 * 40 and busy.last_stats["chunks_skipped"] == 0
    assert quiet.last_stats["writes"] == 0 and quiet.last_stats["chunks_skipped"] == 10


def test_an_uncalibrated_entropy_model_patches_with_the_fixed_stride():
    net = network(use_blt_processor=True, patch_size=5.0)
    starts = net.patch_starts(ids())
    assert starts[0].nonzero().flatten().tolist() == list(range(0, 40, 5))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(attention_window=100, use_titans_memory=True),
     r"attention_window \(100\) is larger than the context"),
    (dict(patching="words"), "patching must be one of entropy, monotonic, space, fixed"),
    (dict(patch_size=0.5), "patch_size .* must be >= 1"),
    (dict(titans_mode="mac"), "titans_mode must be one of mal, mag"),
    (dict(n_embd=15), r"n_embd \(15\) must be a multiple"),
    (dict(ngram_min=9), r"ngram_min \(9\) must be <= ngram_max"),
    (dict(vocab_size=200), "NEAT reads bytes"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NEATConfig(**{**TINY, **kwargs})


def test_wrong_types_and_long_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="use_blt_processor must be a bool"):
        NEATConfig(use_blt_processor="yes")
    with pytest.raises(TypeError, match="n_layer must be an integer"):
        NEATConfig(n_layer=2.5)
    with pytest.raises(ValueError, match="sequence length 49 exceeds"):
        network()(ids(T=49))


def test_the_memory_forget_bias_setting_reaches_the_memory():
    memory = NEATNetwork(NEATConfig(**{**TINY, "use_titans_memory": True,
                                       "memory_forget_bias": -6.0})).backbone.memory
    assert memory.to_gates.bias[2].item() == -6.0
    default = NEATNetwork(NEATConfig(**{**TINY, "use_titans_memory": True})).backbone.memory
    assert default.to_gates.bias[2].item() == -8.0
    with pytest.raises(TypeError, match="memory_forget_bias"):
        NEATConfig(memory_forget_bias=float("nan"))
