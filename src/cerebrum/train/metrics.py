"""Bits per byte: the yardstick shared by every language model, whatever its tokenizer.

For held-out documents d with UTF-8 byte counts |d|, each encoded as <bos> followed by its
tokens t_1..t_n,
    bits per byte = sum_d sum_i -log2 p(t_i | <bos>, t_1..t_{i-1}) / sum_d |d|.
The <eos> token is not scored and <bos> is only context, so a byte tokenizer and a BPE
tokenizer are measured on the same quantity: the code length of the bytes. Documents longer
than the model's context are scored with a sliding window: each token is predicted from at
least `block_size - stride` previous tokens (all of them while the document fits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.nn import functional as F


@torch.no_grad()
def document_nll(model, ids: list[int], *, stride: int | None = None) -> float:
    """Summed negative log-likelihood in nats of ids[1:] given the preceding ids, under a
    model that maps (1, T) ids to (1, T, V) logits (or to a tuple that starts with them, as
    GPT's forward does) and conditions on `context_length` tokens (or `config.block_size`)."""
    block = getattr(model, "context_length", None) or model.config.block_size
    stride = max(1, block // 2) if stride is None else stride
    device = next(model.parameters()).device
    tokens = torch.as_tensor(ids, dtype=torch.long, device=device)
    total, scored = 0.0, 1  # position of the first token not yet scored
    while scored < len(tokens):
        end = min(len(tokens), scored + (block - 1 if scored == 1 else stride))
        begin = max(0, end - block)
        window = tokens[begin:end].unsqueeze(0)
        logits = model(window[:, :-1] if end - begin > 1 else window)
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = logits[0].float()
        # logits[j] predicts window[j + 1]; score positions scored..end-1
        first = scored - begin - 1
        targets = tokens[scored:end]
        total += float(F.cross_entropy(logits[first:first + len(targets)], targets,
                                       reduction="sum"))
        scored = end
    return total


def bits_per_byte(model, tokenizer, texts: Iterable[str], *, stride: int | None = None
                  ) -> float:
    """Bits per byte of `texts` (see the module docstring)."""
    nats, n_bytes = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for text in texts:
            data = text.encode("utf-8")
            if not data:
                continue
            ids = [tokenizer.bos_id, *tokenizer.encode_bytes(data)]
            nats += document_nll(model, ids, stride=stride)
            n_bytes += len(data)
    finally:
        model.train(was_training)
    if n_bytes == 0:
        raise ValueError("no bytes to evaluate: the texts are empty")
    return nats / math.log(2) / n_bytes
