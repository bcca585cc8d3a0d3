"""A language-model family in one module, as a user would add one: config, network, loss
(two phases, an auxiliary loss with its own metrics), generation and registration. Nothing
else in Cerebrum is edited for it. `tests/brain/test_language_model.py` trains it through the
API, the managers, the file format and the CLI.

The network is a bigram model: an embedding table (trained in phase "embed", with an
auxiliary penalty on the embeddings' squared norm) and an output layer (trained in phase
"head"). `SamplerLM` is the same network seen as a family without token likelihoods: it
only samples, so it has BrierLM but no bits per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cerebrum.brain.language_model import (
    LanguageModel,
    check_tokenizer_fields,
    register_language_model,
)
from cerebrum.train.engine import Phase


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    tokenizer: str = "bytes"
    vocab_size: int = 259
    width: int = 8
    context: int = 32

    def __post_init__(self):
        check_tokenizer_fields(self)
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


class ToyLM(LanguageModel):
    family = "toy"
    config_class = ToyConfig
    hf_export_note = "a test family, with nothing for Transformers to run"

    def build(self) -> None:
        self.embed = nn.Embedding(self.config.vocab_size, self.config.width)
        self.head = nn.Linear(self.config.width, self.config.vocab_size)

    @property
    def context_length(self) -> int:
        return self.config.context

    def forward(self, ids):
        hidden = self.embed(ids)
        return self.head(hidden), hidden

    def phases(self, config):
        first = max(1, config.steps // 2)
        return [Phase("embed", first, loss_fn=self.embed_loss, trainable=("embed.",)),
                Phase("head", config.steps - first, loss_fn=self.loss, trainable=("head.",))]

    def embed_loss(self, model, batch, context):
        logits, hidden = model(batch[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        aux = hidden.pow(2).sum(-1).mean()
        return nll + 1e-3 * aux, {"aux": aux, "nll": nll}  # tensors: the engine detaches

    def loss(self, model, batch, context):
        logits, _ = model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), {}

    def token_logits(self, ids):
        return self(ids)[0]

    def generate_ids(self, ids, max_new_tokens, *, temperature, top_k, top_p, generator):
        out = []
        last = torch.tensor([ids[-1]], device=self._device())
        for _ in range(max_new_tokens):
            logits = self.token_logits(last)[-1]
            if temperature == 0:
                last = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, -1)
                last = torch.multinomial(probs, 1, generator=generator)
            out.append(int(last))
        return out


class _Sampler:
    def __init__(self, model):
        self.model = model

    def sample(self, contexts, n, generator):
        last, out = contexts[:, -1], []
        for _ in range(n):
            probs = torch.softmax(self.model.token_logits(last), -1)
            last = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out.append(last)
        return torch.stack(out, 1)


class SamplerLM(ToyLM):
    family = "toy-sampler"
    has_likelihoods = False

    def brier_predictor(self):
        return _Sampler(self)


def register() -> None:
    register_language_model(ToyLM, description="a two-phase bigram model (tests)")
    register_language_model(SamplerLM, description="a bigram sampler (tests)")
