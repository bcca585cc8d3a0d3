"""The "neat" family (seed 003, part 1): NEAT's byte model (`cerebrum.models.neat`) on the
language-model seam.

Switches: `use_blt_processor` (entropy patching, local encoder / latent transformer / local
decoder), `use_titans_memory` (neural long-term memory + sliding-window attention +
persistent tokens), `mixed_precision`, `gradient_checkpointing`,
`dynamic_component_activation` (selective, surprise-gated memory writes). Every combination
trains and generates; with all of them off it is a plain byte transformer.
`use_transformer2_adaptation` (Transformer², `cerebrum.brain.transformer2`): after the
network trains, one SVF expert per task of `adaptation_tasks` and the classifier dispatcher
train with the network frozen (on the feed-forward matrices, ADAPTATION_TARGETS), and are
saved with the model; `generate(..., adapt="auto")` runs the two passes.
`use_mvot_processor` (MVoT, `cerebrum.models.mvot`): the family trains on interleaved
grid-world puzzles (text and image tokens in one vocabulary) instead of the corpus: phase
"vqvae" trains the visual codebook (`vqvae_steps`), which is frozen afterwards; then (after
"entropy" with entropy patching) "main" trains the network on L_C + lambda L_D.
`mvot_report` solves held-out puzzles (task and visualisation accuracy).

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
from cerebrum.data.gridworld import GridWorldBatches
from cerebrum.data.tasks import parse_task_list
from cerebrum.models.gpt import sample_next
from cerebrum.models.mvot import VQVAE_LR_SCALE, MVoTConfig, MVoTProcessor, SpanConstraint
from cerebrum.models.neat import NEATConfig, NEATNetwork
from cerebrum.train.engine import Phase

#: Batches of the "main" phase whose calibrated thresholds are averaged.
CALIBRATION_BATCHES = 16
#: What `use_transformer2_adaptation` adapts: the feed-forward matrices of the byte, local
#: and latent transformers, not the entropy model's (patch boundaries stay the base's).
ADAPTATION_TARGETS = ("net.backbone.*mlp.*", "net.latent.*mlp.*", "net.encoder.*mlp.*",
                      "net.decoder.*mlp.*")


@dataclass(frozen=True, kw_only=True)
class NEATLMConfig(NEATConfig, MVoTConfig):
    """NEATConfig plus the tokenizer (bytes only), the part-2 switches, MVoT's settings
    (`MVoTConfig`, read when `use_mvot_processor` is on) and the share of the steps the
    entropy model trains for."""

    tokenizer: str = "bytes"
    use_transformer2_adaptation: bool = False
    use_mvot_processor: bool = False
    entropy_phase_fraction: float = 0.2
    #: Transformer² (read when `use_transformer2_adaptation` is on): the experts' tasks
    #: ("SPEC;NAME=SPEC;...", `cerebrum.data.tasks.parse_task_list`) and steps per expert.
    adaptation_tasks: str = "add;reverse;sort;max"
    adaptation_steps: int = 100

    def __post_init__(self):
        check_tokenizer_fields(self)
        if self.tokenizer != "bytes":
            raise ValueError(f"the neat family reads bytes: tokenizer must be 'bytes', got "
                             f"{self.tokenizer!r}")
        super().__post_init__()
        mvot = self.mvot_config()  # validates MVoT's settings
        if not isinstance(self.use_mvot_processor, bool):
            raise TypeError(f"use_mvot_processor must be a bool, got "
                            f"{self.use_mvot_processor!r}")
        if self.use_mvot_processor and mvot.sequence_length - 1 > self.block_size:
            raise ValueError(f"an MVoT puzzle is {mvot.sequence_length} tokens (grid_size, "
                             f"grid_moves, vq_patch); block_size ({self.block_size}) must be "
                             f">= {mvot.sequence_length - 1}")
        fraction = self.entropy_phase_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction < 1):
            raise ValueError(f"entropy_phase_fraction must be in (0, 1), got {fraction!r}")
        if not isinstance(self.use_transformer2_adaptation, bool):
            raise TypeError(f"use_transformer2_adaptation must be a bool, got "
                            f"{self.use_transformer2_adaptation!r}")
        parse_task_list(self.adaptation_tasks)  # ValueError naming a bad item
        if isinstance(self.adaptation_steps, bool) or not isinstance(
                self.adaptation_steps, int) or self.adaptation_steps < 1:
            raise ValueError(f"adaptation_steps must be an integer >= 1, got "
                             f"{self.adaptation_steps!r}")

    def network_config(self) -> NEATConfig:
        """The network's part of the config."""
        names = {f.name for f in fields(NEATConfig)}
        values = {k: v for k, v in vars(self).items() if k in names}
        if self.use_mvot_processor:  # bytes, then the image markers and codes
            values["vocab_size"] = self.mvot_config().vocab_size
        return NEATConfig(**values)

    def mvot_config(self) -> MVoTConfig:
        """MVoT's part of the config."""
        return MVoTConfig(**{f.name: getattr(self, f.name) for f in fields(MVoTConfig)})


class NEATLanguageModel(LanguageModel):
    """The "neat" family's model: `self.net` is the network (`NEATNetwork`)."""

    family = "neat"
    config_class = NEATLMConfig
    hf_export_note = "its BLT patching and Titans memory have no Transformers counterpart"
    adaptation_targets = ADAPTATION_TARGETS
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
        self.mvot = (MVoTProcessor(self.config.mvot_config())
                     if self.config.use_mvot_processor else None)

    @property
    def context_length(self) -> int:
        """Bytes the model conditions on (block_size)."""
        return self.config.block_size

    def fit(self, corpus=None, config=None, *, out_dir=None, resume: bool = False,
            verbose: bool = False, **settings):
        """`LanguageModel.fit`; then, with `use_transformer2_adaptation`, one SVF expert per
        task of `adaptation_tasks` (`adaptation_steps` steps each, the network frozen) and the
        classifier dispatcher, recorded in the run's final checkpoint
        (`cerebrum.brain.transformer2.adapt_after_fit`); `generate(..., adapt="auto")` is
        then the two-pass path."""
        super().fit(corpus, config, out_dir=out_dir, resume=resume, verbose=verbose,
                    **settings)
        if self.config.use_transformer2_adaptation:
            from cerebrum.brain.transformer2 import adapt_after_fit

            seed = settings.get("random_state", settings.get("seed", 0))
            adapt_after_fit(self, parse_task_list(self.config.adaptation_tasks),
                            steps=self.config.adaptation_steps, out_dir=out_dir,
                            seed=0 if seed is None else seed, verbose=verbose)
        return self

    def forward(self, ids, targets=None, *, entropy_model: bool = False,
                images: bool = False):
        """The network's forward, (logits, mean loss or None); `entropy_model=True`: the
        entropy model's loss alone (its phase); `images=True`: `ids` is a puzzle batch and the
        result the VQ-VAE's (loss, metrics) (its phase). With MVoT the loss is
        L_C + lambda L_D (`MVoTProcessor.loss`)."""
        if images:
            return self.mvot.vqvae_loss(ids)
        if entropy_model:
            return None, self.net.entropy_loss(ids, targets)
        if self.mvot is not None and targets is not None:
            logits = self.net(ids)[0]
            return logits, self.mvot.loss(logits, targets)
        return self.net(ids, targets)

    # ------------------------------------------------------------------ training

    def phases(self, config) -> list[Phase]:
        """"entropy" (the entropy model) then "main" (the rest), or "main" alone; with MVoT
        "vqvae" (the codebook, `vqvae_steps` of the steps) comes first."""
        phases, steps = [], config.steps
        if self.mvot is not None:
            if steps <= self.config.vqvae_steps:
                raise ValueError(f"steps ({steps}) must exceed vqvae_steps "
                                 f"({self.config.vqvae_steps}): the codebook trains first")
            phases.append(Phase("vqvae", self.config.vqvae_steps, loss_fn=self.vqvae_loss,
                                trainable=("mvot.vqvae.",), lr_scale=VQVAE_LR_SCALE))
            steps -= self.config.vqvae_steps
        if self.net.entropy_model is None:
            return [*phases, Phase("main", steps, loss_fn=self.loss,
                                   trainable=None if self.mvot is None else ("net.",))]
        if steps < 2:
            raise ValueError(f"entropy patching trains in two phases: steps must be >= 2, "
                             f"got {steps}")
        first = min(steps - 1, max(1, round(self.config.entropy_phase_fraction * steps)))
        main = (*(f"net.{name}" for name, _ in self.net.named_children()
                  if name != "entropy_model"), "net.null_patch")
        return [*phases, Phase("entropy", first, loss_fn=self.entropy_loss,
                               trainable=("net.entropy_model.",)),
                Phase("main", steps - first, loss_fn=self.loss, trainable=main)]

    def make_batches(self, corpus, config):
        """Token rows of the corpus; with MVoT, grid-world puzzle batches instead."""
        if self.mvot is None:
            return super().make_batches(corpus, config)
        return GridWorldBatches(self.config.mvot_config().spec(),
                                batch_size=config.batch_size, seed=config.seed)

    def _rows(self, batch):
        """(B, T + 1) token rows of a batch (MVoT: the puzzles laid out as tokens)."""
        return batch if self.mvot is None else self.mvot.sequences(batch)

    def vqvae_loss(self, model, batch, context):
        """The VQ-VAE's loss on the batch's images (MVoT's first phase)."""
        return model(batch, images=True)

    def entropy_loss(self, model, batch, context):
        """The entropy model's next-byte cross-entropy (nats per byte)."""
        rows = self._rows(batch)
        _, loss = model(rows[:, :-1], rows[:, 1:], entropy_model=True)
        return loss, {}

    def loss(self, model, batch, context):
        """Mean next-byte cross-entropy (nats per byte), with the mean patch size (BLT) and the
        share of memory positions that wrote (Titans) as metrics. Calibrates the entropy
        threshold on the first CALIBRATION_BATCHES batches."""
        net = self.net
        rows = self._rows(batch)
        if net.entropy_model is not None and self.config.patch_threshold is None and (
                int(net.calibrations) < CALIBRATION_BATCHES):
            net.calibrate(rows[:, :-1], accumulate=True)
        if self.mvot is None:
            _, loss = model(rows[:, :-1], rows[:, 1:])
            metrics = {}
        else:  # the prompt is context only: its targets are ignored
            _, loss = model(*self.mvot.training_pair(batch))
            metrics = dict(self.mvot.last_metrics)
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
        constraint = None
        if self.mvot is not None:  # image spans of exactly N codes
            constraint = SpanConstraint(torch.tensor([out], device=device),
                                        self.mvot.config.tokens_per_image, self.mvot.vocab_size)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                window = torch.tensor([out[-self.config.block_size:]], device=device)
                logits = self.net(window)[0][:, -1]
                if constraint is not None:
                    logits = constraint.mask(logits)
                token = sample_next(logits, temperature, top_k, top_p, generator)
                if constraint is not None:
                    constraint.update(token)
                out.append(int(token))
        return out[len(ids):]

    # ------------------------------------------------------------------ MVoT

    def mvot_report(self, n_puzzles: int = 120, *, seed: int = 12345,
                    batch_size: int = 60) -> dict:
        """Solve `n_puzzles` puzzles (drawn from `seed`, apart from the training stream's
        seeds) by constrained greedy decoding: {"task_accuracy", "visualization_accuracy"
        (None unless the task is "mvot"), "cell_accuracy" and codebook "used" / "perplexity"
        of the VQ-VAE on their images, "spans_ok", "results": per batch (`MVoTProcessor.solve`
        with its "batch")}."""
        if self.mvot is None:
            raise ValueError("mvot_report needs use_mvot_processor=True")
        if isinstance(n_puzzles, bool) or not isinstance(n_puzzles, int) or n_puzzles < 1:
            raise ValueError(f"n_puzzles must be a positive integer, got {n_puzzles!r}")
        was_training = self.training
        self.eval()
        try:
            results, task, visual, cells, usage = [], 0.0, 0.0, 0.0, None
            for start in range(0, n_puzzles, batch_size):
                size = min(batch_size, n_puzzles - start)
                batch = self.mvot.sample_batch(size, seed=seed + start, device=self._device())
                solved = self.mvot.solve(self.token_logits, batch,
                                         context=self.context_length)
                solved["batch"] = batch
                results.append(solved)
                task += solved["task_accuracy"] * size
                visual += (solved["visualization_accuracy"] or 0.0) * size
                recon = self.mvot.reconstruction_report(batch)
                cells += recon["cell_accuracy"] * size
                usage = recon
        finally:
            self.train(was_training)
        task_is_mvot = self.mvot.config.mvot_task == "mvot"
        return {"task_accuracy": task / n_puzzles,
                "visualization_accuracy": visual / n_puzzles if task_is_mvot else None,
                "cell_accuracy": cells / n_puzzles, "used": usage["used"],
                "perplexity": usage["perplexity"],
                "spans_ok": all(r["spans_ok"] for r in results), "results": results}

    def evaluation_rows(self, texts):
        """With MVoT: task and visualisation accuracy on 60 held-out puzzles and the
        codebook's cell accuracy (`mvot_report`). With Transformer²: each expert's task
        accuracy, base vs expert vs two-pass dispatch (`transformer2.adaptation_rows`)."""
        rows = []
        if self.config.use_transformer2_adaptation:
            from cerebrum.brain.transformer2 import adaptation_rows

            rows += adaptation_rows(self)
        if self.mvot is None:
            return rows
        report = self.mvot_report(60)
        rows += [("MVoT task accuracy", f"{report['task_accuracy']:.3f}")]
        if report["visualization_accuracy"] is not None:
            rows.append(("MVoT visualisation accuracy", f"{report['visualization_accuracy']:.3f}"))
        rows.append(("VQ-VAE cell accuracy", f"{report['cell_accuracy']:.4f}"))
        return rows


NEAT_FAMILY = register_language_model(
    NEATLanguageModel, description="NEAT byte model: BLT patching and Titans memory as switches "
    "(bits per byte)")
