"""The "mgm" family: the mixture of geometric experts (`cerebrum.models.mgm`, seed 004) on
the language-model seam, trained in the seed's five stages.

Stages (engine phases, each with its own trainable parameters, optimiser, warm-up and decay,
and a checkpoint at its end):
    1. curvature_calibration  the experts' learnable curvatures only
    2. reasoning_warmup       everything, briefly
    3. branch_pretrain        the experts (their linear maps, translations, curvatures)
    4. gate_training          the routers only (experts fixed); the gate's softmax temperature
                              is annealed from `gate_temperature` to 1 over the stage
    5. joint_finetune         everything
`stage_steps` gives the steps of every stage (one number, or five); without it `steps` is
split 5% / 15% / 20% / 10% / 50%. `skip_setup` drops stage 1 (a run resumed with it must
have been started with it: the stages fix the step numbering). `staged=False` is the
single-stage ablation: one "joint" phase of `steps` steps training everything. `amp_off`
trains in float32 (precision "fp32") whatever the device.

The loss is next-token cross-entropy plus `aux_loss_weight` x load balancing plus
`z_loss_weight` x router z-loss; the metrics (metrics.jsonl, `history_`) are "nll",
"balance", "z_loss", per-expert load "load_e{j}" (fraction of assignments, averaged over
layers), "load_min", "load_max", and curvatures "curv_e{j}" (and "curv_e{j}_sphere" for
product experts), averaged over layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from cerebrum.brain.language_model import (
    LanguageModel,
    LMTrainConfig,
    check_tokenizer_fields,
    register_language_model,
)
from cerebrum.models.mgm import MGM, MGMConfig
from cerebrum.nn.manifolds import MANIFOLDS, ProductManifold
from cerebrum.train.engine import Phase

STAGES = ("curvature_calibration", "reasoning_warmup", "branch_pretrain", "gate_training",
          "joint_finetune")
#: How `steps` is split over the five stages when stage_steps is not given.
STAGE_FRACTIONS = (0.05, 0.15, 0.2, 0.1, 0.5)


@dataclass(frozen=True, kw_only=True)
class MGMLMConfig:
    """The network's architecture (`cerebrum.models.mgm.MGMConfig`, with the seed's name
    `seq_len` for the context length) plus the tokenizer kind (vocab_size 259 for bytes)."""

    tokenizer: str = "bytes"
    vocab_size: int = 259
    seq_len: int = 256
    n_layer: int = 4
    hidden_dim: int = 128
    num_heads: int = 4
    experts_num: int = 16
    k_experts: int = 2
    expert_dim: int = 0
    manifolds: tuple[str, ...] = MANIFOLDS
    curvature_range: tuple[float, float] = (0.5, 2.0)
    memory_slots: int = 16
    memory_width: int = 128
    nuanced_routing: bool = False
    flash_attention_off: bool = False
    qk_norm: bool = False
    zero_init_residual: bool = False
    aux_loss_weight: float = 0.1
    z_loss_weight: float = 0.001
    complex_parameters: str = "pairs"
    tangent_radius: float = 0.0

    def __post_init__(self):
        check_tokenizer_fields(self)
        if isinstance(self.manifolds, list):
            object.__setattr__(self, "manifolds", tuple(self.manifolds))
        if isinstance(self.curvature_range, list):
            object.__setattr__(self, "curvature_range", tuple(self.curvature_range))
        self.mgm_config()  # validates the rest

    def mgm_config(self) -> MGMConfig:
        """The network's config."""
        names = {f.name for f in fields(MGMConfig)}
        settings = {k: v for k, v in vars(self).items() if k in names}
        return MGMConfig(block_size=self.seq_len, **settings)


@dataclass(kw_only=True)
class MGMTrainConfig(LMTrainConfig):
    """LMTrainConfig plus the seed's training switches (see the module docstring).

    Attributes:
        stage_steps: steps of every stage (an int), or of each of the five (a list), or None
            (split `steps` by STAGE_FRACTIONS).
        skip_setup: leave out stage 1, curvature calibration.
        staged: False trains everything in one phase of `steps` steps (the ablation).
        amp_off: train in float32 (overrides `precision`).
        gate_temperature: the gate's softmax temperature at the start of gate training,
            annealed linearly to 1 (1: no annealing).
    """

    stage_steps: int | list[int] | None = None
    skip_setup: bool = False
    staged: bool = True
    amp_off: bool = False
    gate_temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("skip_setup", "staged", "amp_off"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.amp_off:
            self.precision = "fp32"
        value = self.stage_steps
        if value is not None:
            items = [value] if isinstance(value, int) else list(value) \
                if isinstance(value, (list, tuple)) else None
            if items is None or len(items) not in (1, len(STAGES)) or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
                raise ValueError(f"stage_steps must be a positive int or a list of "
                                 f"{len(STAGES)} positive ints, got {value!r}")
            self.stage_steps = items[0] if len(items) == 1 else items
        temperature = self.gate_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not temperature > 0:
            raise ValueError(f"gate_temperature must be a number > 0, got {temperature!r}")

    def stage_lengths(self) -> list[int]:
        """Steps of each of the five stages."""
        if isinstance(self.stage_steps, int):
            return [self.stage_steps] * len(STAGES)
        if self.stage_steps is not None:
            return list(self.stage_steps)
        if self.steps < len(STAGES):
            raise ValueError(f"five training stages need steps >= {len(STAGES)}, got "
                             f"steps={self.steps} (or set stage_steps, or staged=False)")
        lengths = [max(1, int(self.steps * f)) for f in STAGE_FRACTIONS[:-1]]
        return [*lengths, self.steps - sum(lengths)]


class MGMLanguageModel(LanguageModel):
    """The "mgm" family's model: `self.mgm` is the network."""

    family = "mgm"
    config_class = MGMLMConfig
    fit_config_class = MGMTrainConfig
    #: Comparable with the GPT's leaderboard row (BPE 4096, width 128, 4 layers, the same fit
    #: settings): 8 experts (one of each geometry), top-2, each of tangent width 256, so the
    #: two active experts hold the weights of the GPT's 4C feed-forward; with the GPT's
    #: leaderboard options qk_norm and zero_init_residual (worth 0.043 bits per byte at 256k
    #: tokens, docs/mgm.md). One joint stage (staged=False): at 256k training tokens the five
    #: stages cost 0.12 bits per byte (2.145 against 2.022, docs/mgm.md), since three of them
    #: train only part of the network and each warms up and decays its own learning rate.
    leaderboard_settings: ClassVar[dict] = {
        "model": dict(tokenizer="bpe", vocab_size=4096, seq_len=256, n_layer=4,
                      hidden_dim=128, num_heads=4, experts_num=8, k_experts=2, expert_dim=256,
                      memory_slots=16, memory_width=128, qk_norm=True, zero_init_residual=True),
        "fit": dict(batch_size=8, seq_len=256, lr=3e-3, optimizer="muon", schedule="wsd",
                    min_lr_ratio=0.0, decay_fraction=0.4, shuffle_rows=32768, staged=False),
    }

    def build(self) -> None:
        self.mgm = MGM(self.config.mgm_config())

    @property
    def context_length(self) -> int:
        return self.config.seq_len

    def forward(self, idx, targets=None, router_temperature: float = 1.0):
        """MGM's forward: (logits, loss or None, aux)."""
        return self.mgm(idx, targets, router_temperature=router_temperature)

    # ------------------------------------------------------------------ training

    def loss(self, model, batch, context, *, temperature: float = 1.0):
        """Cross-entropy of batch[:, 1:] given batch[:, :-1] plus the weighted routing losses;
        metrics: nll, balance, z_loss, per-expert load and curvatures."""
        _, loss, aux = model(batch[:, :-1], batch[:, 1:], router_temperature=temperature)
        return loss, {"nll": aux["nll"], "balance": aux["balance"], "z_loss": aux["z_loss"],
                      **self.expert_metrics(aux["load"])}

    def expert_metrics(self, load: torch.Tensor) -> dict:
        """load_e{j}, load_min, load_max and the curvatures curv_e{j} (layer means)."""
        metrics = {f"load_e{j}": value for j, value in enumerate(load)}
        metrics["load_min"], metrics["load_max"] = load.min(), load.max()
        per_expert: dict[str, list[torch.Tensor]] = {}
        for block in self.mgm.blocks:
            for j, expert in enumerate(block.moe.experts):
                m = expert.manifold
                if isinstance(m, ProductManifold):
                    per_expert.setdefault(f"curv_e{j}", []).append(m.curvatures[0])
                    per_expert.setdefault(f"curv_e{j}_sphere", []).append(m.curvatures[1])
                elif expert.curvatures():
                    per_expert.setdefault(f"curv_e{j}", []).append(m.curvature)
        for name, values in per_expert.items():
            metrics[name] = torch.stack([v.detach() for v in values]).mean()
        return metrics

    def _gate_loss(self, phase_steps: int, start_temperature: float):
        def gate_loss(model, batch, context):
            progress = context.phase_step / max(1, phase_steps - 1)
            temperature = start_temperature + (1.0 - start_temperature) * progress
            loss, metrics = self.loss(model, batch, context, temperature=temperature)
            return loss, {**metrics, "gate_temperature": temperature}
        return gate_loss

    def stage_prefixes(self) -> dict[str, tuple[str, ...] | None]:
        """The trainable parameter-name prefixes of each stage (None: everything)."""
        names = [n for n, _ in self.named_parameters()]
        blocks = range(len(self.mgm.blocks))
        return {
            "curvature_calibration": tuple(n for n in names if n.endswith("raw_curvature")),
            "reasoning_warmup": None,
            "branch_pretrain": tuple(f"mgm.blocks.{i}.moe.experts." for i in blocks),
            "gate_training": tuple(f"mgm.blocks.{i}.moe.router." for i in blocks),
            "joint_finetune": None,
        }

    def phases(self, config: LMTrainConfig) -> list[Phase]:
        """The five stages (module docstring), or one "joint" phase with staged=False."""
        if not isinstance(config, MGMTrainConfig):  # a plain LMTrainConfig: the defaults
            config = MGMTrainConfig(**dataclasses.asdict(config))
        if not config.staged:
            return [Phase("joint", config.steps, loss_fn=self.loss)]
        prefixes = self.stage_prefixes()
        phases = []
        for name, steps in zip(STAGES, config.stage_lengths(), strict=True):
            if name == "curvature_calibration" and (config.skip_setup or not prefixes[name]):
                continue  # skipped, or nothing to calibrate (no learnable curvature)
            loss_fn = (self._gate_loss(steps, float(config.gate_temperature))
                       if name == "gate_training" else self.loss)
            phases.append(Phase(name, steps, loss_fn=loss_fn, trainable=prefixes[name]))
        return phases

    # ------------------------------------------------------------------ verbs

    def token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mgm(ids)[0]

    def generate_ids(self, ids, max_new_tokens, *, temperature, top_k, top_p, generator):
        prompt = torch.tensor([ids], device=self._device())
        out = self.mgm.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generator)
        return out[0, len(ids):].tolist()

    def parameter_counts(self) -> tuple[int, int]:
        """(total, active per token), in real numbers (a complex weight counts twice): a
        token uses every parameter but the experts it is not routed to, i.e. of each layer's
        E experts it uses K (counted at the layer's mean expert size)."""
        def size(module):
            return sum(p.numel() * (2 if p.is_complex() else 1) for p in module.parameters())

        total = size(self)
        active = total
        k = self.mgm.config.k_experts
        for block in self.mgm.blocks:
            sizes = [size(e) for e in block.moe.experts]
            active -= sum(sizes) - round(k * sum(sizes) / len(sizes))
        return total, active

    def curvatures(self) -> list[list[list[float]]]:
        """Per layer, per expert, its signed curvatures (empty for flat geometries)."""
        return self.mgm.curvatures()


MGM_FAMILY = register_language_model(
    MGMLanguageModel,
    description="mixture of geometric experts language model (bits per byte; seed 004)")
