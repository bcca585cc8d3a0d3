"""The "calm" family: Hybrid CALM-on-Z (seed 002) on the language-model seam.

The network is `cerebrum.models.calm`: a token autoencoder (`self.autoencoder`) and a latent
language model with a likelihood-free head (`self.latent_model`). Training runs two engine
phases: "autoencoder" (`ae_steps`, only parameters under "autoencoder." train) and "latent"
(`lm_steps`, only "latent_model."; the autoencoder is frozen). The family has no token
likelihoods: `score` is BrierLM, estimated from two samples per position by
`CALMSampler`. Generation encodes the context's chunks, samples z, decodes K tokens and
continues; a temperature below 1 uses CALM's likelihood-free approximation (see
`CALMLanguageModel.next_chunks`). docs/calm.md has the model, its shapes and options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

# registered first, so that the classical families keep the first places of the registry
# (`registry.names()` lists families in registration order, and this module sorts first in
# cerebrum.brain's imports)
from cerebrum.brain import classical as _classical  # noqa: F401
from cerebrum.brain.language_model import (
    LanguageModel,
    LMTrainConfig,
    as_texts,
    check_tokenizer_fields,
    register_language_model,
)
from cerebrum.models.calm import (
    CALMConfig,
    LatentLM,
    TokenAutoencoder,
    autoencoder_loss,
    latent_loss,
    per_position_fidelity,
)
from cerebrum.train.batches import TokenBatches
from cerebrum.train.engine import Phase

#: The seed's phase lengths (its Cfg: ae_steps 2000, lm_steps 4000).
SEED_AE_STEPS, SEED_LM_STEPS = 2000, 4000
#: Noise scales added to z in the autoencoder-accuracy report.
NOISE_SCALES = (0.0, 0.1, 0.3, 0.5, 1.0)


@dataclass(frozen=True, kw_only=True)
class CALMLMConfig(CALMConfig):
    """`cerebrum.models.calm.CALMConfig` plus the tokenizer kind (vocab_size 259 for bytes)."""

    tokenizer: str = "bytes"

    def __post_init__(self):
        check_tokenizer_fields(self)
        super().__post_init__()

    def network_config(self) -> CALMConfig:
        """The network's config (every field but the tokenizer)."""
        names = {f.name for f in fields(CALMConfig)}
        return CALMConfig(**{k: v for k, v in vars(self).items() if k in names})


@dataclasses.dataclass(kw_only=True)
class CALMTrainConfig(LMTrainConfig):
    """LMTrainConfig with the seed's phase lengths and batch size (8).

    The two phases' lengths: `ae_steps` and `lm_steps` (the seed's names). With `steps` left
    None, missing ones take the seed's values (2000 and 4000); with `steps` given, missing
    ones split it (`ae_fraction` of it, at least 1 step each, to the autoencoder, the seed's
    one third by default), and when both are given their sum must equal `steps`. After
    construction all three are integers and steps = ae_steps + lm_steps. A phase given 0
    steps is skipped: `ae_steps=0` trains the latent model on the autoencoder the model
    already has (bench/calm_ablation.py shares one autoencoder between its variants this
    way), `lm_steps=0` trains the autoencoder alone.

    `ae_lr` is the autoencoder phase's peak learning rate (None: `lr`, which the latent phase
    always uses); each phase runs the config's warm-up and schedule (`schedule`,
    `min_lr_ratio`) over its own steps.
    """

    steps: int | None = None
    batch_size: int = 8
    ae_steps: int | None = None
    lm_steps: int | None = None
    ae_fraction: float = 1 / 3
    ae_lr: float | None = None

    def __post_init__(self):
        if self.ae_lr is not None and (
                isinstance(self.ae_lr, bool) or not isinstance(self.ae_lr, (int, float))
                or not math.isfinite(self.ae_lr) or self.ae_lr <= 0):
            raise ValueError(f"ae_lr must be a positive finite number or None (None: lr), "
                             f"got {self.ae_lr!r}")
        for name, minimum in (("steps", 1), ("ae_steps", 0), ("lm_steps", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < minimum):
                raise ValueError(f"{name} must be an integer >= {minimum} or None, got "
                                 f"{value!r}")
        if isinstance(self.ae_fraction, bool) or not isinstance(self.ae_fraction, (int, float)) \
                or not 0 < self.ae_fraction < 1:
            raise ValueError(f"ae_fraction must be in (0, 1), got {self.ae_fraction!r}")
        ae, lm = self.ae_steps, self.lm_steps
        if self.steps is None:
            ae = SEED_AE_STEPS if ae is None else ae
            lm = SEED_LM_STEPS if lm is None else lm
        elif ae is None and lm is None:
            if self.steps < 2:
                raise ValueError(f"steps must be >= 2 (one per phase), got {self.steps}")
            ae = min(self.steps - 1, max(1, round(self.steps * self.ae_fraction)))
            lm = self.steps - ae
        elif ae is None or lm is None:
            given, name = (ae, "ae_steps") if lm is None else (lm, "lm_steps")
            if self.steps - given < 1:
                raise ValueError(f"steps ({self.steps}) leaves no step for the other phase "
                                 f"after {name}={given}")
            ae, lm = (given, self.steps - given) if lm is None else (self.steps - given, given)
        elif ae + lm != self.steps:
            raise ValueError(f"ae_steps + lm_steps must equal steps, got {ae} + {lm} != "
                             f"{self.steps}")
        if ae + lm == 0:
            raise ValueError("ae_steps and lm_steps cannot both be 0")
        self.ae_steps, self.lm_steps, self.steps = ae, lm, ae + lm
        super().__post_init__()


def _check_temperature(temperature) -> None:
    if not 0 <= temperature <= 1:
        raise ValueError(f"temperature must be in [0, 1] for the calm family (its "
                         f"likelihood-free sampler sharpens by agreement between samples and "
                         f"cannot flatten), got {temperature}")


class CALMSampler:
    """A `cerebrum.train.brier.Predictor` for the calm family: `sample(contexts (B, L), n,
    generator) -> (B, n)` token ids, each row an independent draw (fresh head noise per row)
    at temperature 1, chunk by chunk (`CALMLanguageModel.next_chunks`). No `log_prob`:
    BrierLM uses its two-sample estimator."""

    def __init__(self, model: CALMLanguageModel):
        self.model = model

    @property
    def device(self) -> torch.device:
        """The model's device (where contexts and the generator live)."""
        return self.model._device()

    @torch.no_grad()
    def sample(self, contexts: torch.Tensor, n: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """contexts (B, L) -> (B, n) sampled continuations."""
        ids = contexts
        while ids.shape[1] - contexts.shape[1] < n:
            ids = torch.cat([ids, self.model.next_chunks(ids, generator=generator)], 1)
        return ids[:, contexts.shape[1]:contexts.shape[1] + n]


class CALMLanguageModel(LanguageModel):
    """The "calm" family's model: `self.autoencoder` (phase 1) and `self.latent_model`
    (phase 2); see the module docstring."""

    family = "calm"
    config_class = CALMLMConfig
    fit_config_class = CALMTrainConfig
    has_likelihoods = False
    hf_export_note = ("a continuous-latent model sampled through its autoencoder; "
                      "Transformers' generation needs token logits")
    #: Head samples drawn per step when sampling at temperature < 1 (see `next_chunks`).
    temperature_samples: ClassVar[int] = 16
    #: A small config that trains on the 2-core CPU in 15 minutes, with the GPT's tokenizer
    #: (BPE 4096) so BrierLM compares. lr 6e-3: 300 autoencoder steps reach 97.5% held-out
    #: token accuracy against 89.5% at 2e-3, and 150 latent steps did no worse; CALM's head:
    #: slightly ahead of the gated one in a 150-step comparison. latent_dim 128 (CALM's) and
    #: token / z dropout 0.05: each alone took 400 autoencoder steps from 98.5% held-out token
    #: accuracy (latent 64, dropouts 0.15) to 99.1-99.2%, and latent 128 tolerates more noise
    #: on z (docs/calm.md, "Reaching 99.9%").
    leaderboard_settings: ClassVar[dict] = {
        "model": dict(tokenizer="bpe", vocab_size=4096, K=4, seq_z_steps=64, latent_dim=128,
                      ae_width=128, ae_depth=1, token_dropout=0.05, z_dropout=0.05,
                      d_model=192, n_layer=3, ssm="conv",
                      ssm_kernel=7, hop_mem_slots=64, head="calm", head_width=192,
                      head_depth=2, lm_input="tokens", loss_type="calm", n_samples=8,
                      n_targets=16),
        "fit": dict(batch_size=8, lr=6e-3, optimizer="adamw", schedule="cosine",
                    shuffle_rows=32768, ae_steps=None, lm_steps=None),
    }

    def build(self) -> None:
        network = self.config.network_config()
        self.autoencoder = TokenAutoencoder(network)
        self.latent_model = LatentLM(network)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def K(self) -> int:
        """Tokens per chunk."""
        return self.config.K

    # ------------------------------------------------------------------ training

    def fit_config(self, config: LMTrainConfig | None = None, **settings) -> LMTrainConfig:
        """As `LanguageModel.fit_config`, but seq_len defaults to the whole context
        (seq_z_steps * K tokens) and must be a multiple of K of at least 2 K."""
        if config is None:
            settings.setdefault("seq_len", self.context_length)
        config = super().fit_config(config, **settings)
        K = self.config.K
        if config.seq_len % K or config.seq_len < 2 * K:
            raise ValueError(f"seq_len must be a multiple of K={K} and at least 2 K = {2 * K} "
                             f"(two latent steps), got {config.seq_len}")
        return config

    def make_batches(self, corpus, config: LMTrainConfig):
        """Rows of exactly seq_len tokens ((B, seq_len): seq_len / K chunks)."""
        return TokenBatches(corpus, self.tokenizer, batch_size=config.batch_size,
                            seq_len=config.seq_len - 1, seed=config.seed,
                            shuffle_rows=config.shuffle_rows)

    def phases(self, config: CALMTrainConfig) -> list[Phase]:
        """"autoencoder" (ae_steps, trains "autoencoder.", at peak learning rate ae_lr or lr)
        then "latent" (lm_steps, trains "latent_model.", the autoencoder frozen, at lr); a
        phase of 0 steps is left out."""
        phases = []
        if config.ae_steps:
            scale = 1.0 if config.ae_lr is None else config.ae_lr / config.lr
            phases.append(Phase("autoencoder", config.ae_steps, loss_fn=self.autoencoder_step,
                                trainable=("autoencoder.",), lr_scale=scale))
        if config.lm_steps:
            phases.append(Phase("latent", config.lm_steps, loss_fn=self.latent_step,
                                trainable=("latent_model.",)))
        return phases

    def forward(self, tokens: torch.Tensor, *, phase: str,
                generator: torch.Generator | None = None):
        """tokens (B, N K) -> (loss, metrics) of phase "autoencoder" or "latent"."""
        if tokens.dim() != 2 or tokens.shape[1] % self.K:
            raise ValueError(f"tokens must be (B, N * K) with K={self.K}, got shape "
                             f"{tuple(tokens.shape)}")
        chunks = tokens.long().unflatten(1, (-1, self.K))
        network = self.config.network_config()
        if phase == "autoencoder":
            return autoencoder_loss(self.autoencoder, chunks, network, generator)
        if phase == "latent":
            return latent_loss(self.autoencoder, self.latent_model, chunks, network, generator)
        raise ValueError(f"phase must be 'autoencoder' or 'latent', got {phase!r}")

    def autoencoder_step(self, model, batch, context):
        """Phase 1's loss (see `cerebrum.models.calm.autoencoder_loss`)."""
        return model(batch, phase="autoencoder", generator=context.generator)

    def latent_step(self, model, batch, context):
        """Phase 2's loss (see `cerebrum.models.calm.latent_loss`)."""
        return model(batch, phase="latent", generator=context.generator)

    def loss(self, model, batch, context):
        """The latent phase's loss (the engine uses each phase's own)."""
        return self.latent_step(model, batch, context)

    # ------------------------------------------------------------------ sampling

    def _window(self, ids: torch.Tensor) -> torch.Tensor:
        """The last whole chunks of ids (B, L) that fit the conditioning window of training
        (seq_z_steps - 1 chunks): (B, n, K)."""
        K = self.K
        n = min(ids.shape[1] // K, self.config.seq_z_steps - 1)
        return ids[:, ids.shape[1] - n * K:].reshape(ids.shape[0], n, K)

    @torch.no_grad()
    def next_chunks(self, ids: torch.Tensor, *, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """ids (B, L) -> the next K tokens (B, K) of every row.

        The whole chunks at the end of ids (at most seq_z_steps - 1, the window the latent
        model was trained with; a partial chunk at the front is dropped) are encoded, the
        latent model gives h, the head samples z and the decoder's argmax gives K tokens.
        temperature 1: one head sample. temperature T in [0, 1): CALM's likelihood-free
        approximation of sampling from p^(1/T): draw S = `temperature_samples` head samples,
        decode each, count c(x) of every distinct chunk x among them, and pick x with
        probability proportional to binom(c(x), 1/T) (the number of (1/T)-subsets of the S
        samples that agree on x, which estimates p(x)^(1/T) up to a constant; binom is
        extended to real 1/T by Gamma functions and is 0 where c(x) < 1/T). Where no chunk
        reaches 1/T agreeing samples, 1/T is lowered to the largest count. T = 0 takes the
        most frequent chunk (the first drawn on ties). T > 1 cannot be approximated this way
        and is refused.
        """
        _check_temperature(temperature)
        chunks = self._window(ids)
        mu = self.autoencoder.encode(chunks)[0] if self.config.lm_input == "z" else None
        inputs = self.latent_model.inputs(chunks, mu)                           # (B, n+1, D)
        field = self.latent_model.receptive_field  # the last h depends on no more inputs
        if field is not None:
            inputs = inputs[:, -field:]
        h = self.latent_model(inputs)[:, -1]                                    # (B, D)
        return self._choose(h, temperature, generator)

    def _choose(self, h: torch.Tensor, temperature: float,
                generator: torch.Generator | None) -> torch.Tensor:
        """h (B, D) -> the next chunk (B, K) at `temperature` (see `next_chunks`)."""
        if temperature == 1:
            z = self.latent_model.sample(h, 1, generator)[0][:, 0]              # (B, Dz)
            return self.autoencoder.decode(z).argmax(-1)
        S = self.temperature_samples
        z = self.latent_model.sample(h, S, generator)[0]                        # (B, S, Dz)
        drawn = self.autoencoder.decode(z).argmax(-1)                           # (B, S, K)
        same = (drawn.unsqueeze(2) == drawn.unsqueeze(1)).all(-1)               # (B, S, S)
        counts = same.sum(-1).float()                                           # (B, S)
        if temperature == 0:
            pick = counts.argmax(-1)  # the first of the most frequent
        else:
            n = torch.clamp(torch.full_like(counts[:, :1], 1 / temperature),
                            max=counts.max(-1, keepdim=True).values)
            log_binom = (torch.lgamma(counts + 1) - torch.lgamma((counts - n).clamp_min(0) + 1)
                         - torch.lgamma(n + 1))
            # a chunk drawn c times sits c times in the list: weight each copy by binom / c
            weights = torch.where(counts >= n, (log_binom - counts.log()).exp(),
                                  torch.zeros_like(counts))
            pick = torch.multinomial(weights, 1, generator=generator)[:, 0]
        return drawn[torch.arange(drawn.shape[0], device=drawn.device), pick]

    def _chunk_inputs(self, chunks: torch.Tensor) -> torch.Tensor:
        """chunks (B, n, K) -> the latent model's inputs for them (B, n, D), no start."""
        mu = self.autoencoder.encode(chunks)[0] if self.config.lm_input == "z" else None
        return self.latent_model.inputs(chunks, mu)[:, 1:]

    @torch.no_grad()
    def generate_ids(self, ids, max_new_tokens, *, temperature, top_k, top_p, generator):
        """Continue ids chunk by chunk. The latent model runs recurrently (`LatentLM.step`):
        the prompt's window (as in `next_chunks`) is stepped through once, then each new
        chunk is one step, so a new chunk costs the same at any length. With the conv SSM
        this equals calling `next_chunks` on the growing text (tested); with the diagonal SSM
        the state keeps everything generated, where `next_chunks` sees its window only.
        top_k / top_p do not apply (there is no token distribution to truncate) and must be
        None."""
        if top_k is not None or top_p is not None:
            raise ValueError(f"the calm family samples chunks through a continuous latent, so "
                             f"top_k and top_p do not apply; got top_k={top_k}, top_p={top_p}")
        _check_temperature(temperature)
        device = self._device()
        chunks = self._window(torch.tensor([ids], device=device))              # (1, n, K)
        mu = self.autoencoder.encode(chunks)[0] if self.config.lm_input == "z" else None
        inputs = self.latent_model.inputs(chunks, mu)                           # (1, n+1, D)
        state = self.latent_model.initial_state(1, device=device, dtype=inputs.dtype)
        for t in range(inputs.shape[1]):
            h, state = self.latent_model.step(inputs[:, t], state)
        new: list[int] = []
        while True:
            chunk = self._choose(h, temperature, generator)                     # (1, K)
            new.extend(chunk[0].tolist())
            if len(new) >= max_new_tokens:
                return new[:max_new_tokens]
            h, state = self.latent_model.step(self._chunk_inputs(chunk[:, None])[:, 0], state)

    def brier_predictor(self) -> CALMSampler:
        """The sampler BrierLM draws two continuations per position from."""
        return CALMSampler(self)

    # ------------------------------------------------------------------ reports

    def _chunks_of(self, texts) -> torch.Tensor:
        """Every whole chunk of the texts, each as <bos> tokens <eos> cut from its start:
        (C, K)."""
        tokenizer = self._require_tokenizer()
        rows = []
        for text in as_texts(texts):
            ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
            n = len(ids) // self.K * self.K
            if n:
                rows.append(torch.tensor(ids[:n]).reshape(-1, self.K))
        if not rows:
            raise ValueError(f"the texts hold no whole chunk of K={self.K} tokens")
        return torch.cat(rows).to(self._device())

    def _rows_of(self, texts) -> torch.Tensor:
        """Rows of seq_z_steps chunks cut from the texts' chunks: (R, N, K)."""
        chunks = self._chunks_of(texts)
        N = self.config.seq_z_steps
        if chunks.shape[0] < N:
            raise ValueError(f"the texts hold {chunks.shape[0]} chunks; scoring the latent "
                             f"model needs at least seq_z_steps={N}")
        return chunks[: chunks.shape[0] // N * N].reshape(-1, N, self.K)

    @torch.no_grad()
    def autoencoder_accuracy(self, texts, *, noise_scales=NOISE_SCALES, random_state: int = 0,
                             batch_size: int = 4096) -> dict:
        """Reconstruction accuracy of the autoencoder on texts (a list, a text, or a Corpus's
        validation split): every chunk is encoded to its posterior mean, `noise_scale` x
        N(0, I) is added, and the decoder's argmax is compared with the chunk.

        Returns {noise_scale: {"token_accuracy": float, "chunk_accuracy": float}} (chunk
        accuracy: all K tokens right) and "chunks": how many chunks were scored."""
        chunks = self._chunks_of(texts)
        generator = torch.Generator(device=self._device()).manual_seed(int(random_state))
        was_training = self.training
        self.eval()
        try:
            result: dict = {"chunks": int(chunks.shape[0])}
            for scale in noise_scales:
                if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                        or not (math.isfinite(scale) and scale >= 0):
                    raise ValueError(f"noise_scales must be finite numbers >= 0, got {scale!r}")
                right_tokens = right_chunks = 0
                for part in chunks.split(batch_size):
                    hit = self.autoencoder.reconstruct(part, float(scale), generator) == part
                    right_tokens += int(hit.sum())
                    right_chunks += int(hit.all(-1).sum())
                result[float(scale)] = {
                    "token_accuracy": right_tokens / chunks.numel(),
                    "chunk_accuracy": right_chunks / chunks.shape[0]}
        finally:
            self.train(was_training)
        return result

    @torch.no_grad()
    def per_position_fidelity(self, texts, *, random_state: int = 0) -> torch.Tensor:
        """(N,) mean d_fid at each latent position of rows of seq_z_steps chunks cut from the
        texts (where in the sequence the model struggles); needs a text of at least one
        context (seq_z_steps * K tokens)."""
        rows = self._rows_of(texts)
        generator = torch.Generator(device=self._device()).manual_seed(int(random_state))
        was_training = self.training
        self.eval()
        try:
            return per_position_fidelity(self.autoencoder, self.latent_model, rows,
                                         self.config.network_config(), generator)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def latent_report(self, texts, *, random_state: int = 0, max_rows: int = 64) -> dict:
        """The latent phase's metrics on held-out text: the first `max_rows` rows of
        seq_z_steps chunks cut from the texts, scored as in training
        (`cerebrum.models.calm.latent_loss`: d_fid, d_div, energy, rf, gate_mean for the gated
        head, loss) plus "fidelity_by_position", the (N,) mean d_fid at each latent
        position."""
        rows = self._rows_of(texts)[:max_rows]
        generator = torch.Generator(device=self._device()).manual_seed(int(random_state))
        network = self.config.network_config()
        was_training = self.training
        self.eval()
        try:
            loss, metrics = latent_loss(self.autoencoder, self.latent_model, rows, network,
                                        generator)
            report = {k: float(v) for k, v in metrics.items() if not k.startswith("fid_q")}
            report["loss"] = float(loss)
            generator.manual_seed(int(random_state))
            report["fidelity_by_position"] = per_position_fidelity(
                self.autoencoder, self.latent_model, rows, network, generator).tolist()
        finally:
            self.train(was_training)
        return report

    def evaluation_rows(self, texts) -> list[tuple[str, str]]:
        """(label, value) rows of the autoencoder's accuracy, for `cerebrum eval` to print."""
        report = self.autoencoder_accuracy(texts)
        return [(f"AE accuracy (noise {scale:g})",
                 f"{100 * v['token_accuracy']:.2f}% tokens, {100 * v['chunk_accuracy']:.2f}% "
                 f"chunks") for scale, v in report.items() if scale != "chunks"]


CALM_FAMILY = register_language_model(
    CALMLanguageModel, description="continuous-latent model: token autoencoder + SSM/Hopfield "
    "latent model with an energy head (BrierLM)")
