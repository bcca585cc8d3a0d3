"""The "neat" family (seed 003, part 1): NEAT's byte model (`cerebrum.models.neat`) on the
language-model seam.

Switches: `use_blt_processor` (entropy patching, local encoder / latent transformer / local
decoder), `use_titans_memory` (neural long-term memory + sliding-window attention +
persistent tokens), `mixed_precision`, `gradient_checkpointing`,
`dynamic_component_activation` (selective, surprise-gated memory writes). Every combination
trains and generates; with all of them off it is a plain byte transformer.
`use_transformer2_adaptation` and `use_mvot_processor` are accepted only as False: those
components arrive with NEAT part 2.

Phases: with entropy-based patching ("entropy" or "monotonic"), "entropy" trains the small
entropy model alone for `entropy_phase_fraction` of the steps; then "main" trains everything
else with the entropy model frozen. At the first step of "main" the entropy threshold is
calibrated to the target mean patch size (`patch_size`), and recalibrated on each of the
first CALIBRATION_BATCHES batches of "main" (the threshold is the mean of their thresholds;
one batch of one or two documents is a noisy sample), unless `patch_threshold` fixes it; the
threshold is a buffer, saved with the weights. Other
configurations train in one phase, "main".

Bits per byte are exact: `token_logits` scores every byte of a window from the bytes before
it (the seam's sliding window scores each byte once). Generation is byte by byte: each new
byte re-runs the model on the last `block_size` bytes; patching is incremental, so the
prefix keeps its patches as bytes are appended.
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
from cerebrum.models.gpt import sample_next
from cerebrum.models.neat import NEATConfig, NEATNetwork
from cerebrum.train.engine import Phase

#: Batches of the "main" phase whose calibrated thresholds are averaged.
CALIBRATION_BATCHES = 16
PART_2 = ("use_transformer2_adaptation", "use_mvot_processor")


def check_part_two(**switches) -> None:
    """ValueError for a NEAT part-2 switch set to True."""
    for name, value in switches.items():
        if value:
            raise ValueError(f"{name}: this component arrives with NEAT part 2 (Transformer² "
                             "adaptation and MVoT); it is not available yet")


@dataclass(frozen=True, kw_only=True)
class NEATLMConfig(NEATConfig):
    """NEATConfig plus the tokenizer (bytes only), the part-2 switches (False until part 2)
    and the share of the steps the entropy model trains for."""

    tokenizer: str = "bytes"
    use_transformer2_adaptation: bool = False
    use_mvot_processor: bool = False
    entropy_phase_fraction: float = 0.2

    def __post_init__(self):
        check_tokenizer_fields(self)
        if self.tokenizer != "bytes":
            raise ValueError(f"the neat family reads bytes: tokenizer must be 'bytes', got "
                             f"{self.tokenizer!r}")
        check_part_two(**{name: getattr(self, name) for name in PART_2})
        super().__post_init__()
        fraction = self.entropy_phase_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction < 1):
            raise ValueError(f"entropy_phase_fraction must be in (0, 1), got {fraction!r}")

    def network_config(self) -> NEATConfig:
        """The network's part of the config."""
        names = {f.name for f in fields(NEATConfig)}
        return NEATConfig(**{k: v for k, v in vars(self).items() if k in names})


class NEATLanguageModel(LanguageModel):
    """The "neat" family's model: `self.net` is the network (`NEATNetwork`)."""

    family = "neat"
    config_class = NEATLMConfig
    hf_export_note = "its BLT patching and Titans memory have no Transformers counterpart"
    #: A config that trains on a 2-core CPU within a 15-minute leaderboard run (BLT with
    #: entropy patching at mean patch size 4; the Titans memory off: it slows a CPU step).
    leaderboard_settings: ClassVar[dict] = {
        "model": dict(block_size=256, n_layer=4, n_head=4, n_embd=128, use_blt_processor=True,
                      patching="entropy", patch_size=4.0, max_patch_length=12, local_dim=64,
                      local_heads=2, n_local_encoder_layers=1, n_local_decoder_layers=1,
                      ngram_buckets=8192, entropy_layers=2, entropy_dim=64,
                      entropy_phase_fraction=0.15),
        "fit": dict(batch_size=8, seq_len=256, lr=3e-3, optimizer="muon", schedule="wsd",
                    min_lr_ratio=0.0, decay_fraction=0.4, shuffle_rows=8192),
    }

    def build(self) -> None:
        """Create the network from the config."""
        self.net = NEATNetwork(self.config.network_config())

    @property
    def context_length(self) -> int:
        """Bytes the model conditions on (block_size)."""
        return self.config.block_size

    def forward(self, ids, targets=None, *, entropy_model: bool = False):
        """The network's forward, (logits, mean loss or None); `entropy_model=True`: the
        entropy model's loss alone (its phase)."""
        if entropy_model:
            return None, self.net.entropy_loss(ids, targets)
        return self.net(ids, targets)

    # ------------------------------------------------------------------ training

    def phases(self, config) -> list[Phase]:
        """"entropy" (the entropy model) then "main" (the rest), or "main" alone."""
        if self.net.entropy_model is None:
            return [Phase("main", config.steps, loss_fn=self.loss)]
        if config.steps < 2:
            raise ValueError(f"entropy patching trains in two phases: steps must be >= 2, "
                             f"got {config.steps}")
        first = min(config.steps - 1, max(1, round(self.config.entropy_phase_fraction
                                                   * config.steps)))
        main = (*(f"net.{name}" for name, _ in self.net.named_children()
                  if name != "entropy_model"), "net.null_patch")
        return [Phase("entropy", first, loss_fn=self.entropy_loss,
                      trainable=("net.entropy_model.",)),
                Phase("main", config.steps - first, loss_fn=self.loss, trainable=main)]

    def entropy_loss(self, model, batch, context):
        """The entropy model's next-byte cross-entropy (nats per byte)."""
        _, loss = model(batch[:, :-1], batch[:, 1:], entropy_model=True)
        return loss, {}

    def loss(self, model, batch, context):
        """Mean next-byte cross-entropy (nats per byte), with the mean patch size (BLT) and the
        share of memory positions that wrote (Titans) as metrics. Calibrates the entropy
        threshold on the first CALIBRATION_BATCHES batches."""
        net = self.net
        if net.entropy_model is not None and self.config.patch_threshold is None and (
                int(net.calibrations) < CALIBRATION_BATCHES):
            net.calibrate(batch[:, :-1], accumulate=True)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        metrics = {}
        stats = net.last_stats
        if "mean_patch_size" in stats:
            metrics["patch_size"] = stats["mean_patch_size"]
        if stats.get("chunks"):
            metrics["memory_writes"] = stats["writes"] / max(1, stats["chunks"]
                                                             * net.config.memory_chunk)
        return loss, metrics

    # ------------------------------------------------------------------ scoring, generation

    def token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, 259) next-byte logits (the memory starts fresh)."""
        return self.net(ids)[0]

    def generate_ids(self, ids, max_new_tokens, *, temperature, top_k, top_p, generator):
        """New byte ids after `ids`, one at a time, each from the last block_size bytes."""
        device = self._device()
        out = list(ids)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                window = torch.tensor([out[-self.config.block_size:]], device=device)
                logits = self.net(window)[0][:, -1]
                out.append(int(sample_next(logits, temperature, top_k, top_p, generator)))
        return out[len(ids):]


NEAT_FAMILY = register_language_model(
    NEATLanguageModel, description="NEAT byte model: BLT patching and Titans memory as switches "
    "(bits per byte)")
