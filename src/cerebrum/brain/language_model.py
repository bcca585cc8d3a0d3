"""The seam every language-model family plugs into.

`LanguageModel` is an `nn.Module` that owns what a language model needs around its network:
the tokenizer (saved with the model), `fit(corpus, ...)` through the shared engine
(`cerebrum.train`, phases included), `generate(prompt, ...)`, the yardsticks (`bits_per_byte`
where the family has token likelihoods, `brier_lm` for every family), checkpoints and
`from_checkpoint(run)` for any registered family. A family is a subclass that supplies only:

    config_class        its config dataclass (architecture; keyword-only, validates itself),
                        with a `tokenizer` field ("bytes" or "bpe") and `vocab_size`
    build()             create its network(s) from `self.config`
    forward(...)        what its loss calls (the engine may wrap the model in DDP / compile,
                        so a loss calls the model, never its submodules)
    loss(model, batch, context) -> (loss, metrics)
                        or phases(config) -> [Phase, ...], each with its own loss and trainable
                        parameters
    context_length      how many tokens it conditions on
    generate_ids(ids, max_new_tokens, ...) -> new ids
    token_logits(ids)   (B, T) ids -> (B, T, V) next-token logits, only if it has likelihoods;
                        families without them set `has_likelihoods = False` and give
                        `brier_predictor()` (a sampler) instead
and registers itself with `register_language_model(cls, description=...)`. Nothing in the
CLI, the engine, the managers or the file format changes for a new family
(docs/language-models.md walks through the GPT as the example).

Records: a model file (`brain/persistence.py`) and a checkpoint hold the same model record,
{"family", "config", "summary", "tensors"}; a checkpoint keeps it under its header's
"extra" -> "record" with the tensors under "model.", so `persistence.model_from_record`
rebuilds either. Checkpoints written before this seam (the GPT alone; "extra" held
{"family", "model", "tokenizer"} and the GPT's tensors directly under "model.") are read by
`upgrade_checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from cerebrum._util.validation import check_device, check_positive_int, check_seed
from cerebrum.brain import persistence, registry
from cerebrum.data.corpus import Corpus, default_corpus
from cerebrum.data.tokenizers import BPETokenizer, ByteTokenizer, tokenizer_from_dict
from cerebrum.exceptions import CerebrumFileError
from cerebrum.train.batches import TokenBatches
from cerebrum.train.brier import LogitsPredictor, brier_scores
from cerebrum.train.engine import (
    Phase,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    read_checkpoint,
)
from cerebrum.train.metrics import bits_per_byte

TOKENIZERS = ("bytes", "bpe")
#: Documents read to train a BPE tokenizer.
BPE_TRAINING_DOCUMENTS = 2000
#: Tokens of context every BrierLM position is scored with (the score moves with it, so it is
#: fixed: the same for every family and every run).
BRIER_CONTEXT = 64
#: Arguments of `fit` that are not LMTrainConfig fields.
FIT_ARGUMENTS = ("random_state", "out_dir", "resume", "verbose")


@dataclasses.dataclass(kw_only=True)
class LMTrainConfig(TrainConfig):
    """TrainConfig plus what a language model's fit reads around the engine.

    Attributes:
        shuffle_rows: rows of the shuffle buffer token batches are drawn through
            (`cerebrum.train.batches`); 0 streams rows in corpus order.
        eval_documents: held-out documents scored at each evaluation (the first ones of the
            corpus's validation split, in file order).
    """

    shuffle_rows: int = 8192
    eval_documents: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.shuffle_rows, name="shuffle_rows", minimum=0)
        check_positive_int(self.eval_documents, name="eval_documents")


def as_corpus(data) -> Corpus:
    """A Corpus from a Corpus, None (the default corpus), a path or a list of paths."""
    if data is None:
        return default_corpus()
    if isinstance(data, Corpus):
        return data
    return Corpus(data)


def check_tokenizer_fields(config) -> None:
    """The checks every family's config makes of its `tokenizer` and `vocab_size`."""
    if config.tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got "
                         f"{config.tokenizer!r}")
    if config.tokenizer == "bytes" and config.vocab_size != 259:
        raise ValueError(f"the byte tokenizer has 259 tokens; got vocab_size={config.vocab_size}")


class LanguageModel(nn.Module):
    """The base of the language-model families (see the module docstring).

    Fitted attributes: `history_` (the engine's curves: {"train": ..., "eval": ...}),
    `corpus_` (the specification of the corpus it was last trained on, or None), and the
    tokenizer (`tokenizer_state_` as JSON).
    """

    #: The registry name; set by register_language_model.
    family: ClassVar[str] = ""
    config_class: ClassVar[type]
    fit_config_class: ClassVar[type[LMTrainConfig]] = LMTrainConfig
    #: Whether the family gives token probabilities (bits per byte, exact Brier accuracy).
    has_likelihoods: ClassVar[bool] = True
    #: Why `cerebrum.hf.export_hf` cannot export this family (one line), for families it
    #: has no exporter for.
    hf_export_note: ClassVar[str] = "no Transformers wrapper has been written for it yet"
    #: What `bench/lm.py` trains for the leaderboard: {"model": config fields, "fit": fit
    #: settings}, a small config that learns on a 2-core CPU in minutes.
    leaderboard_settings: ClassVar[dict] = {}

    def __init__(self, config=None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        self.config = self.config_class(**kwargs) if config is None else config
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got "
                            f"{type(self.config).__name__}")
        self.tokenizer = ByteTokenizer() if self.config.tokenizer == "bytes" else None
        self.history_: dict = {}
        self.corpus_: dict | None = None
        self.build()

    # ------------------------------------------------------------------ what a family supplies

    def build(self) -> None:
        """Create the family's network(s) from self.config."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        """How many tokens the model conditions on."""
        raise NotImplementedError

    def loss(self, model, batch, context):
        """(scalar loss, {name: float}) of one batch of (B, seq_len + 1) token ids; `model`
        is this module, possibly wrapped by the engine: call it."""
        raise NotImplementedError

    def phases(self, config: LMTrainConfig) -> list[Phase]:
        """The training phases; by default one, "train", of config.steps steps with `loss`."""
        return [Phase("train", config.steps, loss_fn=self.loss)]

    def generate_ids(self, ids: list[int], max_new_tokens: int, *, temperature: float,
                     top_k: int | None, top_p: float | None,
                     generator: torch.Generator | None) -> list[int]:
        """The new token ids that continue `ids` (which start with <bos>)."""
        raise NotImplementedError

    def token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits of the next token (families with likelihoods)."""
        raise TypeError(f"the {self.family!r} family has no token likelihoods")

    def brier_predictor(self):
        """What BrierLM samples from (and, with likelihoods, scores with): a
        `cerebrum.train.brier.Predictor`."""
        return LogitsPredictor(self.token_logits)

    def evaluation_rows(self, texts: list[str]) -> list[tuple[str, str]]:
        """(label, value) rows a family adds to `cerebrum eval`'s report on held-out `texts`
        (the CALM autoencoder's reconstruction accuracy, say); none by default."""
        return []

    def parameter_counts(self) -> tuple[int, int]:
        """(total, active per token) parameters, shared tensors counted once; a family that
        routes tokens (mixtures of experts) overrides it to report what one token uses."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields each once
        return total, total

    def make_batches(self, corpus: Corpus, config: LMTrainConfig):
        """The training batches: (B, seq_len + 1) token ids streamed from the corpus."""
        return TokenBatches(corpus, self.tokenizer, batch_size=config.batch_size,
                            seq_len=config.seq_len, seed=config.seed,
                            shuffle_rows=config.shuffle_rows)

    # ------------------------------------------------------------------ the tokenizer

    @property
    def tokenizer_state_(self) -> dict | None:
        """The tokenizer as JSON (saved with the model; setting it rebuilds the tokenizer)."""
        return None if self.tokenizer is None else self.tokenizer.to_dict()

    @tokenizer_state_.setter
    def tokenizer_state_(self, state: dict | None) -> None:
        self.tokenizer = None if state is None else tokenizer_from_dict(state)

    @property
    def adaptation_(self) -> dict | None:
        """The Transformer² experts, mixtures and dispatchers as JSON (saved with the model;
        `cerebrum.brain.transformer2`), or None."""
        t2 = self.__dict__.get("_transformer2")
        return None if t2 is None else t2.to_dict()

    @adaptation_.setter
    def adaptation_(self, state: dict | None) -> None:
        from cerebrum.brain.transformer2 import Transformer2  # it reads the model's modules

        self.__dict__["_transformer2"] = (None if state is None
                                          else Transformer2.from_dict(self, state))

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer yet: fit it first (the BPE "
                             "tokenizer is trained on the corpus)")
        return self.tokenizer

    def _train_tokenizer(self, corpus: Corpus, seed: int) -> None:
        docs = (d.text for _, d in zip(range(BPE_TRAINING_DOCUMENTS),
                                       corpus.documents("train", seed=seed), strict=False))
        self.tokenizer = BPETokenizer.train(docs, self.config.vocab_size)

    # ------------------------------------------------------------------ fit

    def fit_config(self, config: LMTrainConfig | None = None, **settings) -> LMTrainConfig:
        """The run's settings: `config` (or the defaults) with `settings` replacing fields;
        `random_state` is another name for `seed`; `seq_len` defaults to min(context, 128)."""
        if "random_state" in settings:
            random_state = settings.pop("random_state")
            settings["seed"] = 0 if random_state is None else random_state
        known = {f.name for f in dataclasses.fields(self.fit_config_class)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown fit setting(s) {', '.join(unknown)} for the "
                            f"{self.family!r} family; settings: {', '.join(sorted(known))}, "
                            f"{', '.join(FIT_ARGUMENTS)}")
        if config is None:
            settings.setdefault("seq_len", min(self.context_length, 128))
            config = self.fit_config_class(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        if not isinstance(config, self.fit_config_class):
            raise TypeError(f"config must be a {self.fit_config_class.__name__}, got "
                            f"{type(config).__name__}")
        if config.seq_len > self.context_length:
            raise ValueError(f"seq_len {config.seq_len} exceeds the model's context "
                             f"({self.context_length} tokens)")
        return config

    def fit(self, corpus=None, config: LMTrainConfig | None = None, *, out_dir=None,
            resume: bool = False, verbose: bool = False, **settings):
        """Train on a corpus (a Corpus, a path or paths, or None for the default corpus) with
        the shared engine; returns self.

        `settings` are LMTrainConfig fields (steps, batch_size, seq_len, lr, optimizer,
        schedule, eval_every, shuffle_rows, ...; see `cerebrum.train.TrainConfig`) and
        `random_state` (the seed); `eval_every=None` turns evaluation off. With `out_dir`,
        checkpoints, metrics.jsonl and curves.npz go there; `resume` continues from its
        newest checkpoint. `history_` gets the curves; every `eval_every` steps and at the
        end, bits per byte (families with likelihoods) on `eval_documents` documents of the
        corpus's validation split. A failed fit, or one interrupted by SIGINT / SIGTERM,
        raises (KeyboardInterrupt for an interruption) and leaves the model as it was; the
        run directory keeps the checkpoint written at the interruption."""
        evaluation = settings.get("eval_every", 0) is not None
        if not evaluation:
            del settings["eval_every"]
        config = self.fit_config(config, **settings)
        corpus = as_corpus(corpus)
        saved = self._snapshot()
        try:
            self._fit(corpus, config, evaluation=evaluation, out_dir=out_dir, resume=resume,
                      verbose=verbose)
            if self.history_.get("interrupted"):
                where = (f"fit again with resume=True and out_dir={str(out_dir)!r} to continue"
                         if out_dir is not None else "nothing was saved (no out_dir)")
                raise KeyboardInterrupt(
                    f"training was interrupted at step {self.history_['train']['step'][-1]}; "
                    f"the model is as it was before fit; {where}")
        except BaseException:
            self._restore(saved)  # a failed or interrupted fit leaves the model as it was
            raise
        return self

    def _fit(self, corpus: Corpus, config: LMTrainConfig, *, evaluation: bool, out_dir,
             resume: bool, verbose: bool) -> None:
        if self.tokenizer is None:
            self._train_tokenizer(corpus, config.seed)
        held_out = list(texts_of(corpus, "validation", max_documents=config.eval_documents))

        def evaluate() -> dict:
            if not held_out or not self.has_likelihoods:
                return {}
            return {"bits_per_byte": self.bits_per_byte(held_out)}

        self.corpus_ = corpus.to_dict()  # a run remembers what it was trained on
        trainer = Trainer(self, self.loss, self.make_batches(corpus, config), config,
                          out_dir=out_dir, phases=self.phases(config), verbose=verbose,
                          evaluate=evaluate if evaluation else None,
                          extra_state=self.checkpoint_record,
                          upgrade_checkpoint=upgrade_checkpoint)
        self.history_ = trainer.run(resume=resume)

    def _snapshot(self) -> dict:
        """What fit changes: weights (copied off the device, to spare its memory), tokenizer,
        fitted attributes."""
        return {"state": {k: v.detach().to("cpu", copy=True)
                          for k, v in self.state_dict().items()},
                "tokenizer": self.tokenizer, "history_": self.history_,
                "corpus_": self.corpus_}

    def _restore(self, saved: dict) -> None:
        self.load_state_dict(saved["state"])
        self.tokenizer, self.history_ = saved["tokenizer"], saved["history_"]
        self.corpus_ = saved["corpus_"]

    def checkpoint_record(self) -> dict:
        """What a checkpoint keeps of the model: its record (the one a model file holds, with
        its tensors under "model."), without `history_` (the checkpoint has the curves)."""
        record = persistence.model_header(self, "model")
        record["summary"].pop("history_", None)
        return {"record": record}

    # ------------------------------------------------------------------ generate and score

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def generate(self, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 random_state=None, adapt: str | None = None) -> str:
        """Continue `prompt`; returns the generated text (without the prompt).
        `temperature=0` is greedy decoding; `random_state` seeds the sampling. `adapt`:
        Transformer² two-pass generation ("auto": pass one dispatches to an expert; an expert
        or mixture name; None: the base weights; `cerebrum.brain.transformer2`)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        check_positive_int(max_new_tokens, name="max_new_tokens", minimum=0)
        check_sampling(temperature, top_k, top_p)
        tokenizer = self._require_tokenizer()
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        generator = None
        if random_state is not None:
            generator = torch.Generator(device=self._device()).manual_seed(
                check_seed(random_state))
        adapted = contextlib.nullcontext()
        if adapt is not None:
            from cerebrum.brain.transformer2 import adapted_generation

            adapted = adapted_generation(self, adapt, prompt)
        was_training = self.training
        self.eval()
        try:
            with adapted:
                new = self.generate_ids(ids, max_new_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, generator=generator)
        finally:
            self.train(was_training)
        return tokenizer.decode(new)

    def bits_per_byte(self, texts) -> float:
        """Bits per byte of a list of texts, a text, or a corpus's validation split (lower is
        better; `cerebrum.train.metrics` has the exact definition)."""
        if not self.has_likelihoods:
            raise TypeError(f"the {self.family!r} family has no token likelihoods, so no bits "
                            "per byte: use brier_lm")
        return bits_per_byte(_LogitsNetwork(self), self._require_tokenizer(),
                             as_texts(texts))

    def brier_scores(self, texts, *, max_positions: int = 512, random_state: int = 0,
                     n_max: int = 4, **kwargs) -> dict:
        """Brier-1..n_max and BrierLM (higher is better) on texts, a text, or a corpus's
        validation split (`cerebrum.train.brier` has the definition and the estimators).
        Every position is scored with BRIER_CONTEXT tokens of context, or, for a model whose
        context is shorter than BRIER_CONTEXT + n_max, with as many as it holds; the result's
        "context_length" says which."""
        context = min(BRIER_CONTEXT, self.context_length - n_max)
        if context < 1:
            raise ValueError(f"BrierLM needs a context of at least n_max + 1 = {n_max + 1} "
                             f"tokens; this model holds {self.context_length}")
        tokenizer = self._require_tokenizer()
        documents = [[tokenizer.bos_id, *tokenizer.encode(t)] for t in as_texts(texts)]
        was_training = self.training
        self.eval()
        try:
            scores = brier_scores(self.brier_predictor(), documents, context_length=context,
                                  n_max=n_max, max_positions=max_positions,
                                  random_state=random_state, **kwargs)
        finally:
            self.train(was_training)
        return {**scores, "context_length": context}

    def brier_lm(self, texts, **kwargs) -> float:
        """BrierLM of texts (see `brier_scores`): 100 x the geometric mean of Brier-1..4."""
        return self.brier_scores(texts, **kwargs)["brier_lm"]

    def score(self, X, lengths=None, **kwargs) -> float:
        """Bits per byte of X (texts or a Corpus's validation split), lower is better; BrierLM
        (higher is better) for a family without likelihoods."""
        if lengths is not None:
            raise ValueError("lengths does not apply to a language model's texts")
        if self.has_likelihoods:
            return self.bits_per_byte(X)
        return self.brier_lm(X, **kwargs)


class _LogitsNetwork(nn.Module):
    """A language model seen as `cerebrum.train.metrics` wants it: (1, T) ids -> logits, with
    `context_length`."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model
        self.context_length = model.context_length

    def forward(self, ids):
        return self.model.token_logits(ids)


def check_sampling(temperature, top_k, top_p) -> None:
    """ValueError / TypeError naming the first impossible sampling setting."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got "
                         f"{temperature}")
    if top_k is not None:
        check_positive_int(top_k, name="top_k")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a number, got {type(top_p).__name__}")
        if not 0 < top_p <= 1:  # NaN fails this too
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def as_texts(texts) -> list[str]:
    """Held-out texts as a list of strings: a Corpus gives its validation documents, one
    string is one text; anything but strings is a TypeError."""
    if isinstance(texts, Corpus):
        texts = [d.text for d in texts.documents("validation", shuffle=False)]
    elif isinstance(texts, str):
        texts = [texts]
    texts = list(texts) if hasattr(texts, "__iter__") and not isinstance(texts, bytes) \
        else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a string, strings or a Corpus, got "
                        f"{type(texts).__name__} {texts!r:.60}")
    return texts


# --------------------------------------------------------------------------- registration


def _no_log_likelihoods(model, X, **kwargs):
    raise TypeError(f"{type(model).__name__} reports bits per byte or BrierLM on texts: use "
                    "score(model_id, texts)")


def register_language_model(cls: type[LanguageModel], *, description: str,
                            replace: bool = False) -> registry.Family:
    """Register a LanguageModel subclass as a family named `cls.family`."""
    if not (isinstance(cls, type) and issubclass(cls, LanguageModel)):
        raise TypeError(f"expected a LanguageModel subclass, got {cls!r}")
    if not cls.family:
        raise ValueError(f"{cls.__name__}.family must name the family")

    def build(config, device=None):
        model = cls(config)
        return model.to(device) if device is not None else model

    fit_fields = tuple(f.name for f in dataclasses.fields(cls.fit_config_class))
    return registry.register(registry.Family(
        name=cls.family,
        model_class=cls,
        config_class=cls.config_class,
        build=build,
        config_of=lambda model: model.config,
        fit=cls.fit,
        fit_parameters=fit_fields + FIT_ARGUMENTS,
        sequence_log_likelihoods=None,  # scores of text: nothing to classify with
        log_likelihoods=_no_log_likelihoods,
        infer_config=lambda data, fields: dict(fields),
        summary_attributes=("tokenizer_state_", "history_", "corpus_", "adaptation_"),
        feature_field="vocab_size",
        description=description,
        trains_on="text",
    ), replace=replace)


def language_families() -> list[str]:
    """The registered families that train on text."""
    return [n for n in registry.names() if registry.get(n).trains_on == "text"]


# --------------------------------------------------------------------------- checkpoints


def upgrade_checkpoint(header: dict, tensors: dict) -> tuple[dict, dict]:
    """A checkpoint in today's layout: one written before the seam (the GPT family's
    {"family", "model", "tokenizer"} record, its network's tensors directly under "model.")
    is rewritten in memory; others pass through."""
    extra = header.get("extra") or {}
    if "record" in extra or extra.get("family") != "gpt" or "model" not in extra:
        return header, tensors
    record = {"family": "gpt", "config": extra["model"],
              "summary": {"tokenizer_state_": extra.get("tokenizer")}, "tensors": "model"}
    tensors = {(f"model.gpt.{k[len('model.'):]}" if k.startswith("model.") else k): v
               for k, v in tensors.items()}
    return {**header, "extra": {"record": record}}, tensors


def checkpoint_path(run) -> Path:
    """The checkpoint file of `run`: a run directory (its newest checkpoint) or a file."""
    run = Path(run)
    return latest_checkpoint(run) if run.is_dir() else run


def from_checkpoint(run, device=None) -> LanguageModel:
    """The model of a training run of any registered language-model family: `run` is a run
    directory (its newest checkpoint) or a checkpoint file written by `fit(out_dir=...)`.
    `history_` gets the run's curves."""
    device = check_device(device)
    path = checkpoint_path(run)
    header, tensors = upgrade_checkpoint(*read_checkpoint(path))
    record = (header.get("extra") or {}).get("record")
    if not isinstance(record, dict):
        raise CerebrumFileError(f"{path} is a checkpoint without a model record (not written "
                                "by a language model's fit)")
    family = record.get("family")
    if family not in language_families():
        raise CerebrumFileError(f"{path} is a checkpoint of family {family!r}, which is not a "
                                f"registered language-model family "
                                f"({', '.join(language_families())})")
    model = persistence.model_from_record(record, tensors, source=str(path), device=device)
    model.history_ = {"train": header.get("curves"), "eval": header.get("eval_curves")}
    return model


def texts_of(corpus: Corpus, split: str = "validation", *,
             max_documents: int | None = None) -> Iterable[str]:
    """The texts of one split of a corpus, in file order, at most max_documents of them."""
    for n, doc in enumerate(corpus.documents(split, shuffle=False)):
        if max_documents is not None and n >= max_documents:
            return
        yield doc.text
