"""GPTLanguageModel: the GPT baseline with its tokenizer, trained by the shared engine.

This is what the "gpt" family stores: the network (`gpt`), the tokenizer that goes with it
(saved inside the model's file as JSON), `fit` on a corpus through `cerebrum.train`,
`generate` from a text prompt, and `score` as bits per byte on held-out text (lower is better;
see `cerebrum.train.metrics` for the exact definition).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from cerebrum.data.corpus import Corpus, default_corpus
from cerebrum.data.tokenizers import BPETokenizer, ByteTokenizer, tokenizer_from_dict
from cerebrum.exceptions import CerebrumFileError
from cerebrum.models.gpt import GPT, GPTConfig
from cerebrum.train.batches import TokenBatches
from cerebrum.train.engine import TrainConfig, Trainer, latest_checkpoint, read_checkpoint
from cerebrum.train.lm import next_token_loss
from cerebrum.train.metrics import bits_per_byte

TOKENIZERS = ("bytes", "bpe")
#: Documents read to train a BPE tokenizer.
BPE_TRAINING_DOCUMENTS = 2000


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
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got "
                             f"{self.tokenizer!r}")
        if self.tokenizer == "bytes" and self.vocab_size != 259:
            raise ValueError(f"the byte tokenizer has 259 tokens; got vocab_size="
                             f"{self.vocab_size}")
        self.gpt_config()  # validates the rest

    def gpt_config(self) -> GPTConfig:
        names = {f.name for f in fields(GPTConfig)}
        return GPTConfig(**{k: v for k, v in vars(self).items() if k in names})


def as_corpus(data) -> Corpus:
    """A Corpus from a Corpus, None (the default corpus), a path or a list of paths."""
    if data is None:
        return default_corpus()
    if isinstance(data, Corpus):
        return data
    return Corpus(data)


class GPTLanguageModel(nn.Module):
    """The "gpt" family's model (see the module docstring)."""

    def __init__(self, config: GPTLMConfig | None = None, **kwargs):
        super().__init__()
        self.config = GPTLMConfig(**kwargs) if config is None else config
        self.gpt = GPT(self.config.gpt_config())
        self.tokenizer = ByteTokenizer() if self.config.tokenizer == "bytes" else None
        self.history_: dict = {}

    @property
    def tokenizer_state_(self) -> dict | None:
        """The tokenizer as JSON (saved with the model; setting it rebuilds the tokenizer)."""
        return None if self.tokenizer is None else self.tokenizer.to_dict()

    @tokenizer_state_.setter
    def tokenizer_state_(self, state: dict | None) -> None:
        self.tokenizer = None if state is None else tokenizer_from_dict(state)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer yet: fit it first (the BPE "
                             "tokenizer is trained on the corpus)")
        return self.tokenizer

    def fit(self, corpus=None, *, steps: int = 1000, batch_size: int = 16,
            seq_len: int | None = None, lr: float = 3e-3, optimizer: str = "adamw",
            warmup_steps: int = 100, schedule: str = "cosine", min_lr_ratio: float = 0.1,
            decay_fraction: float = 0.4, weight_decay: float = 0.1, shuffle_rows: int = 8192,
            clip_norm: float = 1.0, grad_accum: int = 1, precision: str = "auto",
            compile: bool = False, eval_every: int | None = 250,
            checkpoint_every: int = 500,
            out_dir=None, resume: bool = False, random_state: int = 0,
            verbose: bool = False):
        """Train on a corpus (a Corpus, paths, or None for the default corpus) with the shared
        engine (`cerebrum.train.TrainConfig` documents the settings; `optimizer` is "adamw" or
        "muon", `schedule` "cosine" or "wsd"; batches are drawn through a shuffle buffer of
        `shuffle_rows` rows, `cerebrum.train.batches`); `history_` gets the curves and, every
        `eval_every` steps and at the end (None: never), bits per byte on up to 8 documents of
        the corpus's validation split."""
        corpus = as_corpus(corpus)
        if self.tokenizer is None:
            docs = (d.text for _, d in zip(range(BPE_TRAINING_DOCUMENTS),
                                           corpus.documents("train", seed=random_state),
                                           strict=False))
            self.tokenizer = BPETokenizer.train(docs, self.config.vocab_size)
        seq_len = min(self.config.block_size, 128) if seq_len is None else seq_len
        if seq_len > self.config.block_size:
            raise ValueError(f"seq_len {seq_len} exceeds the model's context (block_size="
                             f"{self.config.block_size})")
        config = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                             optimizer=optimizer, warmup_steps=warmup_steps,
                             schedule=schedule, min_lr_ratio=min_lr_ratio,
                             decay_fraction=decay_fraction, weight_decay=weight_decay,
                             clip_norm=clip_norm, grad_accum=grad_accum, precision=precision,
                             compile=compile, eval_every=eval_every or steps,
                             checkpoint_every=checkpoint_every, seed=random_state)
        batches = TokenBatches(corpus, self.tokenizer, batch_size=batch_size, seq_len=seq_len,
                               seed=random_state, shuffle_rows=shuffle_rows)

        def evaluate():
            texts = [d.text for _, d in zip(range(8), corpus.documents("validation",
                                                                        shuffle=False),
                                            strict=False)]
            return {"bits_per_byte": bits_per_byte(self.gpt, self.tokenizer, texts)} if texts \
                else {}

        trainer = Trainer(self.gpt, next_token_loss, batches, config, out_dir=out_dir,
                          evaluate=evaluate if eval_every else None, verbose=verbose,
                          extra_state=lambda: {"family": "gpt", "model": vars(self.config),
                                               "tokenizer": self.tokenizer_state_})
        self.history_ = trainer.run(resume=resume)
        return self

    def generate(self, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 random_state=None) -> str:
        """Continue `prompt`; returns the generated text (without the prompt)."""
        tokenizer = self._require_tokenizer()
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        device = next(self.parameters()).device
        generator = None
        if random_state is not None:
            generator = torch.Generator(device=device).manual_seed(int(random_state))
        out = self.gpt.generate(torch.tensor([ids], device=device), max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p,
                                generator=generator)
        return tokenizer.decode(out[0, len(ids):].tolist())

    def bits_per_byte(self, texts) -> float:
        """Bits per byte of a list of texts, or of a corpus's validation split."""
        if isinstance(texts, Corpus):
            texts = [d.text for d in texts.documents("validation", shuffle=False)]
        elif isinstance(texts, str):
            texts = [texts]
        return bits_per_byte(self.gpt, self._require_tokenizer(), texts)

    def score(self, X, lengths=None, **kwargs) -> float:
        """Bits per byte of X (texts or a Corpus's validation split): lower is better."""
        if lengths is not None:
            raise ValueError("lengths does not apply to a language model's texts")
        return self.bits_per_byte(X)


def from_checkpoint(run, device=None) -> GPTLanguageModel:
    """The model of a training run: `run` is a run directory (its newest checkpoint) or a
    checkpoint file written by `fit(out_dir=...)`."""
    from pathlib import Path

    path = latest_checkpoint(run) if Path(run).is_dir() else Path(run)
    header, tensors = read_checkpoint(path)
    extra = header.get("extra") or {}
    if extra.get("family") != "gpt":
        raise CerebrumFileError(f"{path} is a checkpoint of family {extra.get('family')!r}, "
                                "not 'gpt'")
    model = GPTLanguageModel(GPTLMConfig(**extra["model"]))
    model.tokenizer_state_ = extra["tokenizer"]
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.gpt.load_state_dict(state)
    except RuntimeError as err:
        raise CerebrumFileError(f"{path}: the weights do not fit the saved config: {err}") from None
    model.history_ = {"train": header.get("curves"), "eval": header.get("eval_curves")}
    return model.to(device) if device is not None else model
