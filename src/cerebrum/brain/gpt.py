"""The "gpt" family: the GPT baseline (`cerebrum.models.gpt`) on the language-model seam.

Everything around the network (tokenizer, fit through the engine, generate, bits per byte,
BrierLM, checkpoints) is `LanguageModel`'s; this module is what a family supplies, and the
worked example of docs/language-models.md: the config, the network, the loss, how it
generates, and the registration.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from cerebrum.brain.language_model import (
    LanguageModel,
    check_tokenizer_fields,
    register_language_model,
)
from cerebrum.models.gpt import GPT, GPTConfig
from cerebrum.train.lm import next_token_loss


@dataclass(frozen=True, kw_only=True)
class GPTLMConfig:
    """The network's architecture plus the tokenizer kind (vocab_size 259 for bytes)."""

    tokenizer: str = "bytes"
    vocab_size: int = 259
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    mlp: str = "swiglu"
    zero_init_residual: bool = False
    qk_norm: bool = False
    bigram_buckets: int = 0

    def __post_init__(self):
        check_tokenizer_fields(self)
        self.gpt_config()  # validates the rest

    def gpt_config(self) -> GPTConfig:
        names = {f.name for f in fields(GPTConfig)}
        return GPTConfig(**{k: v for k, v in vars(self).items() if k in names})


class GPTLanguageModel(LanguageModel):
    """The "gpt" family's model: `self.gpt` is the network."""

    family = "gpt"
    config_class = GPTLMConfig
    #: The small config docs/benchmarks.md's GPT rows were chosen from (three screens there).
    leaderboard_settings: ClassVar[dict] = {
        "model": dict(tokenizer="bpe", vocab_size=4096, block_size=256, n_layer=4, n_head=4,
                      n_embd=128, mlp="relu2", zero_init_residual=True, qk_norm=True,
                      bigram_buckets=32768),
        "fit": dict(batch_size=8, seq_len=256, lr=3e-3, optimizer="muon", schedule="wsd",
                    min_lr_ratio=0.0, decay_fraction=0.4, shuffle_rows=32768),
    }

    def build(self) -> None:
        self.gpt = GPT(self.config.gpt_config())

    @property
    def context_length(self) -> int:
        return self.config.block_size

    def forward(self, idx, targets=None):
        """GPT's forward: (logits, mean next-token loss or None)."""
        return self.gpt(idx, targets)

    def loss(self, model, batch, context):
        """Mean cross-entropy of batch[:, 1:] given batch[:, :-1], nats per token."""
        return next_token_loss(model, batch, context)

    def token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gpt(ids)[0]

    def generate_ids(self, ids, max_new_tokens, *, temperature, top_k, top_p, generator):
        prompt = torch.tensor([ids], device=self._device())
        out = self.gpt.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generator)
        return out[0, len(ids):].tolist()


GPT_FAMILY = register_language_model(
    GPTLanguageModel, description="decoder-only Transformer language model (bits per byte)")
