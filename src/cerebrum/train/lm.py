"""The language-modelling objective shared by the LM families."""

from __future__ import annotations


def next_token_loss(model, batch):
    """Mean cross-entropy of batch[:, 1:] given batch[:, :-1] (nats per token) for a model
    whose forward(idx, targets) returns (logits, loss), as GPT's does."""
    _, loss = model(batch[:, :-1], batch[:, 1:])
    return loss, {}
