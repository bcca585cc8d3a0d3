"""Bits per byte against hand-computed cases and a brute-force sliding window."""

import math

import pytest
import torch
from torch import nn

from cerebrum.data import BPETokenizer, ByteTokenizer
from cerebrum.models.gpt import GPT
from cerebrum.train import bits_per_byte, document_nll


class Uniform(nn.Module):
    """Every token equally likely: -log2 p = log2(V) per token."""

    def __init__(self, vocab_size, block_size=8):
        super().__init__()
        self.config = type("C", (), {"block_size": block_size})()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size), None


def test_uniform_model_gives_the_hand_computed_value():
    texts = ["hello", "wörld ☃", "x" * 30]  # multi-byte characters, and longer than the context
    n_bytes = sum(len(t.encode()) for t in texts)
    byte = ByteTokenizer()
    assert bits_per_byte(Uniform(byte.vocab_size), byte, texts) == pytest.approx(
        math.log2(259))
    bpe = BPETokenizer.train(["hello world " * 10, "xxxx" * 10], vocab_size=270,
                             min_frequency=1)
    n_tokens = sum(len(bpe.encode(t)) for t in texts)
    assert bits_per_byte(Uniform(bpe.vocab_size), bpe, texts) == pytest.approx(
        n_tokens * math.log2(bpe.vocab_size) / n_bytes)


def test_sliding_window_equals_brute_force():
    torch.manual_seed(0)
    model = GPT(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16).eval()
    ids = torch.randint(0, 30, (21,)).tolist()
    expected = 0.0
    for i in range(1, len(ids)):
        context = ids[max(0, i - 7):i]  # at most block_size - 1 = 7 previous tokens
        with torch.no_grad():
            logits, _ = model(torch.tensor([context]))
        expected -= float(torch.log_softmax(logits[0, -1], -1)[ids[i]])
    assert document_nll(model, ids, stride=1) == pytest.approx(expected, rel=1e-5)
    # a coarser stride sees less context for some tokens, never more
    assert document_nll(model, ids) != pytest.approx(expected, rel=1e-9)


def test_empty_texts_are_an_error():
    with pytest.raises(ValueError, match="no bytes to evaluate"):
        bits_per_byte(Uniform(259), ByteTokenizer(), ["", ""])
