"""The language-modelling objective shared by the LM families."""

from __future__ import annotations


def next_token_loss(model, batch, context=None):
    """Mean cross-entropy of batch[:, 1:] given batch[:, :-1] (nats per token) for a model
    whose forward(idx, targets) returns (logits, loss), as GPT's does. `context` (the engine's
    StepContext) is not needed: the objective is the same at every step."""
    _, loss = model(batch[:, :-1], batch[:, 1:])
    return loss, {}
