"""The training engine of the neural families.

AdamW with decay / no-decay parameter groups (matrices decay; biases and norm gains do not),
or Muon for the hidden matrices with AdamW for the rest (`cerebrum.train.optim`), linear
warm-up then cosine decay to `min_lr_ratio * lr` (or warm-up, stable, linear decay over the
last `decay_fraction` of the steps), gradient clipping, gradient accumulation,
mixed precision (bf16 autocast on CUDA where supported, fp16 with a gradient scaler on older
CUDA, full precision on CPU unless asked), optional `torch.compile`, evaluation every N steps,
checkpoints every N steps with exact resume, a clean checkpoint on SIGINT / SIGTERM, a
progress bar with loss and tokens/s, a JSONL metrics log and an `.npz` of the curves at the
end. Under torchrun (WORLD_SIZE > 1) it runs data-parallel (DDP; gloo on CPU, nccl on CUDA):
every process draws the same global batch and keeps its share, so the loss
curve follows the single-process one.

A family hooks in with a loss function `loss_fn(model, batch, context) -> (loss, metrics)`:
`batch` is whatever its batches iterator yields (a tensor, or a dict / tuple of tensors: token
chunks, images), moved to the training device; `context` is a `StepContext` (the step, the
phase, and a generator seeded from `TrainConfig.seed` whose state checkpoints keep, for losses
that sample); `metrics` ({name: float}) reach the progress bar, the curves and the JSONL log.
Training may be split into `Phase`s (seed 002's autoencoder then language model, seed 004's
stages), run in order: each has its own loss, its own trainable parameters (the rest are
frozen while it runs), its own optimiser and its own warm-up and decay over its own steps, and
ends with a checkpoint.

Evaluation (`evaluate() -> {name: float}`) runs every `eval_every` steps and at the end. With
`TrainConfig.monitor` naming one of its metrics (lower is better), the weights with the best
value are kept and restored at the end, and `patience` stops training after that many
evaluations without improvement (early stopping; an evaluation that does not report the metric
does not count, so a family can hold it back, e.g. while a KL weight is still annealing).

Which `TrainConfig` fields the engine reads: everything but `batch_size` and `seq_len`, which
the family's fit reads to build its batches (one config describes a run).

Checkpoints are single safetensors files (no pickle): model and optimiser tensors, RNG states,
and a JSON header with the step, the phase, the data position, the scheduler and the curves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from cerebrum._util.files import write_bytes_atomically
from cerebrum.exceptions import CerebrumFileError
from cerebrum.train.optim import OPTIMIZERS, build_optimizer

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "wsd")
CHECKPOINT_FORMAT = "cerebrum-checkpoint"
#: 2: one optimiser state per optimiser (Muon + AdamW); version 1 files are refused.
CHECKPOINT_VERSION = 2


@dataclass(kw_only=True)
class TrainConfig:
    """How to train (shared by every family; the model's own config is separate)."""

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    optimizer: str = "adamw"
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip_norm: float = 1.0
    precision: str = "auto"
    compile: bool = False
    eval_every: int = 250
    monitor: str | None = None
    patience: int | None = None
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every",
                     "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.patience is not None:
            if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                    or self.patience < 1:
                raise ValueError(f"patience must be a positive integer or None, got "
                                 f"{self.patience!r}")
            if self.monitor is None:
                raise ValueError("patience needs monitor: the evaluation metric to watch")
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise ValueError(f"monitor must be the name of an evaluation metric, got "
                             f"{self.monitor!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        for name in ("lr", "clip_norm", "min_lr_ratio", "decay_fraction", "weight_decay",
                     "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"weight_decay must be >= 0 and beta1, beta2 in [0, 1), got "
                             f"{self.weight_decay}, {self.beta1}, {self.beta2}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")


@dataclass
class Phase:
    """A stretch of training with its own loss and its own trainable part.

    Attributes:
        name: shown in the progress bar and recorded in checkpoints.
        steps: optimiser steps in this phase.
        loss_fn: (model, batch, context) -> (loss, metrics); None: the Trainer's loss_fn.
        trainable: prefixes of the parameter names (as in `model.named_parameters()`) this
            phase trains, e.g. ("autoencoder.",); the other parameters are frozen while it
            runs. None: every parameter.
        lr_scale: this phase's learning rate as a multiple of TrainConfig.lr (its schedule
            is the config's, over the phase's steps): a part that learns best at another rate
            (an autoencoder, a router) gets its own without a second config.
    """

    name: str
    steps: int
    loss_fn: Callable | None = None
    trainable: tuple[str, ...] | None = None
    lr_scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a phase needs a non-empty name, got {self.name!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"phase {self.name!r}: steps must be a positive integer, got "
                             f"{self.steps!r}")
        if (isinstance(self.lr_scale, bool) or not isinstance(self.lr_scale, (int, float))
                or not math.isfinite(self.lr_scale) or self.lr_scale <= 0):
            raise ValueError(f"phase {self.name!r}: lr_scale must be a positive finite number, "
                             f"got {self.lr_scale!r}")
        if isinstance(self.trainable, str):
            self.trainable = (self.trainable,)
        if self.trainable is not None:
            self.trainable = tuple(self.trainable)
            if not self.trainable or not all(isinstance(p, str) for p in self.trainable):
                raise ValueError(f"phase {self.name!r}: trainable must be parameter-name "
                                 f"prefixes, got {self.trainable!r}")

    def trains(self, parameter_name: str) -> bool:
        """Whether this phase trains the parameter of that name."""
        return self.trainable is None or parameter_name.startswith(self.trainable)


@dataclass
class StepContext:
    """What a loss function may want to know about the step it computes.

    Attributes:
        step: the 0-based index of the optimiser step (counted over all phases).
        phase: the Phase running.
        phase_step: the 0-based index of the step within its phase.
        generator: a torch.Generator on the training device, seeded from TrainConfig.seed,
            saved in checkpoints and restored on resume: draw from it, not from the global
            RNG, for noise a loss needs (latent samples, masks).
    """

    step: int
    phase: Phase
    phase_step: int
    generator: torch.Generator


def lr_at(step: int, config: TrainConfig, total: int) -> float:
    """Linear warm-up over warmup_steps, then either cosine from lr to min_lr_ratio * lr
    ("cosine"), or lr held until the last decay_fraction of the total steps and from there
    linear to min_lr_ratio * lr ("wsd": warm-up, stable, decay)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "wsd":
        decay_steps = config.decay_fraction * total
        level = min(1.0, max(0.0, (total - step) / decay_steps))
    else:
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        level = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * level)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA where supported, else fp16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (its gradient scaler); use bf16 or fp32")
    return precision


class Trainer:
    """Runs training (see the module docstring).

    Args:
        model: the nn.Module (its parameters' device is the training device).
        loss_fn: (model, batch, context) -> (scalar loss, {name: float}) for one micro-batch;
            `model` may be wrapped (DDP, torch.compile): call it, do not reach into it.
        batches: an iterator of batches with state_dict / load_state_dict (TokenBatches);
            a batch is a tensor or a dict / list / tuple of them. If it has a
            `count_tokens(batch)` method, that is what tokens/s counts (else `count_tokens`).
        config: TrainConfig.
        out_dir: where checkpoints, metrics.jsonl and curves.npz go (None: nowhere).
        evaluate: optional () -> {name: float}, run every eval_every steps and at the end.
        phases: optional list of Phase; their steps replace config.steps.
        extra_state: optional () -> dict of JSON-able values saved in checkpoints (the
            family's record of the model), for whoever loads them.
        upgrade_checkpoint: optional (header, tensors) -> (header, tensors), applied to a
            checkpoint before resuming from it (a family's way to read its older files).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, batches, config: TrainConfig, *,
                 out_dir=None, evaluate: Callable | None = None,
                 phases: list[Phase] | None = None, extra_state: Callable | None = None,
                 upgrade_checkpoint: Callable | None = None, verbose: bool = True):
        self.model, self.loss_fn, self.batches, self.config = model, loss_fn, batches, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.evaluate, self.extra_state, self.verbose = evaluate, extra_state, verbose
        self.upgrade_checkpoint = upgrade_checkpoint
        self.phases = list(phases) if phases else [Phase("train", config.steps)]
        self._check_phases()
        self.total_steps = sum(p.steps for p in self.phases)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, self.device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.curves: dict[str, list] = {"step": [], "loss": [], "lr": [], "tokens_per_s": []}
        self.eval_curves: dict[str, list] = {"step": []}
        self.best: dict | None = None  # {"value", "step", "stale", "state"} with a monitor
        self.net: nn.Module = model
        self.optimizer = None
        self._phase_of_optimizer: Phase | None = None
        self._stop_requested = False
        self._early_stopped = False
        self._count_tokens = getattr(batches, "count_tokens", count_tokens)

    def _check_phases(self) -> None:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        parameter_names = [n for n, _ in self.model.named_parameters()]
        for phase in self.phases:
            if not any(phase.trains(n) for n in parameter_names):
                raise ValueError(f"phase {phase.name!r} trains no parameter: no parameter name "
                                 f"starts with {', '.join(phase.trainable)}")

    # ------------------------------------------------------------------ phases

    def _phase_at(self, step: int) -> tuple[Phase, int]:
        """The phase of a 0-based step and the step's index within it."""
        for phase in self.phases:
            if step < phase.steps:
                return phase, step
            step -= phase.steps
        return self.phases[-1], self.phases[-1].steps

    def _enter_phase(self, phase: Phase) -> None:
        """Freeze what the phase does not train, then wrap the model (DDP, compile) and build
        the phase's optimiser over what it does."""
        if self._phase_of_optimizer is phase:
            return
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(phase.trains(name))
        self.net = self.model
        if self.distributed:  # DDP registers the parameters that require grad: once per phase
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            self.net = torch.compile(self.net)
        self.optimizer = build_optimizer(
            self.model, name=self.config.optimizer, lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=(self.config.beta1, self.config.beta2), fused=self.device.type == "cuda")
        self._phase_of_optimizer = phase

    def _restore_trainable(self, saved: dict[str, bool]) -> None:
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(saved[name])

    # ------------------------------------------------------------------ the loop

    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def _train_step(self, phase: Phase, phase_step: int) -> tuple[float, dict, int]:
        loss_fn = phase.loss_fn or self.loss_fn
        lr = lr_at(phase_step, self.config, phase.steps) * phase.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        context = StepContext(step=self.step, phase=phase, phase_step=phase_step,
                              generator=self.generator)
        accum = self.config.grad_accum
        total, tokens, metrics = 0.0, 0, {}
        for micro in range(accum):
            batch = move_to(next(self.batches), self.device)
            tokens += self._count_tokens(batch)
            sync = (contextlib.nullcontext() if not self.distributed
                    or micro == accum - 1 else self.net.no_sync())
            with sync, self._autocast():
                loss, micro_metrics = loss_fn(self.net, batch, context)
            self.scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
            for name, value in (micro_metrics or {}).items():
                if isinstance(value, torch.Tensor):
                    value = value.detach()
                metrics[name] = metrics.get(name, 0.0) + float(value) / accum
        for optimizer in self.optimizer.optimizers:
            self.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                 self.config.clip_norm)
        for optimizer in self.optimizer.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.distributed:  # report the global batch's loss and metrics
            names = sorted(metrics)
            values = torch.tensor([total, *(metrics[n] for n in names)], device=self.device)
            dist.all_reduce(values)
            values = (values / self.world_size).tolist()
            total, metrics = values[0], dict(zip(names, values[1:], strict=True))
        return total, metrics, tokens * self.world_size

    def run(self, *, resume: bool = False) -> dict:
        """Train to the end (or until SIGINT / SIGTERM, or early stopping); returns the curves:
        {"train": {...}, "eval": {...}, "interrupted": bool, "early_stopped": bool,
        "best": {"step", "value"} or None}."""
        trainable = {n: p.requires_grad for n, p in self.model.named_parameters()}
        if resume:
            self.load_checkpoint(self.latest_checkpoint())
        handlers = self._install_signal_handlers()
        progress = tqdm(total=self.total_steps, initial=self.step, disable=not (
            self.verbose and self.rank == 0), desc="train", dynamic_ncols=True)
        # Adam's moments of embedding rows that no batch touches decay geometrically into
        # denormal floats after ~1,000 steps, and x86 CPUs handle those up to 5x slower (a
        # 32,768-row table's AdamW step: 10 -> 53 ms); flushing them to zero changes nothing
        # a model can notice. A process-wide setting, so it is switched off again afterwards.
        flush_denormals = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            self.model.train()
            start = time.perf_counter()
            # a run that stopped early (and was then resumed) has nothing left to do
            while self.step < self.total_steps and not self._early_stopped:
                phase, phase_step = self._phase_at(self.step)
                self._enter_phase(phase)
                loss, metrics, tokens = self._train_step(phase, phase_step)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss} at step {self.step + 1}; "
                                             "lower lr or check the data")
                self.step += 1
                elapsed, start = time.perf_counter() - start, time.perf_counter()
                self._record(loss, metrics, tokens / max(elapsed, 1e-9))
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / elapsed:,.0f}",
                                     phase=phase.name)
                if self.evaluate is not None and self.step % self.config.eval_every == 0:
                    self._run_evaluation()
                end_of_phase = self._phase_at(self.step)[0] is not phase
                if (self.step % self.config.checkpoint_every == 0 or end_of_phase
                        or self._stop_requested or self._early_stopped):
                    self.save_checkpoint()
                if self._stop_requested or self._early_stopped:
                    break
            else:
                if self.evaluate is not None and self.step % self.config.eval_every:
                    self._run_evaluation()
                self.save_checkpoint()
        finally:
            progress.close()
            self._restore_signal_handlers(handlers)
            self._restore_trainable(trainable)
            if flush_denormals:
                torch.set_flush_denormal(False)
        finished = not self._stop_requested
        if finished and self.best is not None:  # the run's result is its best weights
            self.model.load_state_dict(self.best["state"])
        self._write_curves()
        return {"train": self.curves, "eval": self.eval_curves,
                "interrupted": self._stop_requested, "early_stopped": self._early_stopped,
                "best": None if self.best is None else
                {"step": self.best["step"], "value": self.best["value"]}}

    def _record(self, loss: float, metrics: dict, tokens_per_s: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"step": self.step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s,
               **metrics}
        _append_row(self.curves, row)
        if self.step % self.config.log_every == 0:
            self._log(row)

    def _run_evaluation(self) -> None:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = {k: float(v) for k, v in self.evaluate().items()}
        self.model.train(was_training)
        _append_row(self.eval_curves, {"step": self.step, **metrics})
        self._log({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        self._track_best(metrics)

    def _track_best(self, metrics: dict) -> None:
        """Keep the best weights by `monitor`; request early stopping after `patience`
        evaluations without improvement."""
        monitor = self.config.monitor
        if monitor is None or monitor not in metrics:
            return
        value = metrics[monitor]
        if self.best is None or value < self.best["value"]:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"value": value, "step": self.step, "stale": 0, "state": state}
            return
        self.best["stale"] += 1
        if self.config.patience is not None and self.best["stale"] >= self.config.patience:
            self._early_stopped = True

    def _log(self, record: dict) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "metrics.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")

    def _forget_logged_steps_after(self, step: int) -> None:
        """Drop the metrics.jsonl records past `step`: a run killed after its last checkpoint
        logged steps that the resumed run does again (rewritten atomically)."""
        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        if path is None or self.rank != 0 or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) != len(lines):
            write_bytes_atomically(path, "".join(kept).encode())

    def _write_curves(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"train_{k}": np.asarray(v) for k, v in self.curves.items()}
        arrays.update({f"eval_{k}": np.asarray(v) for k, v in self.eval_curves.items()})
        np.savez(self.out_dir / "curves.npz", **arrays)

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            self._stop_requested = True

        saved = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                saved[sig] = signal.signal(sig, request_stop)
        return saved

    @staticmethod
    def _restore_signal_handlers(saved) -> None:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    # ------------------------------------------------------------------ checkpoints

    def latest_checkpoint(self) -> Path:
        if self.out_dir is None:
            raise ValueError("resume needs an out_dir")
        return latest_checkpoint(self.out_dir)

    def save_checkpoint(self) -> Path | None:
        """Write out_dir/checkpoint-<step>.safetensors (rank 0 only) and return its path."""
        if self.out_dir is None or self.rank != 0:
            return None
        if self.optimizer is None:  # saved before the first step
            self._enter_phase(self._phase_at(self.step)[0])
        tensors = {f"model.{k}": v.detach().cpu().clone()  # tied weights: one copy each
                   for k, v in self.model.state_dict().items()}
        param_groups = []
        for i, optim in enumerate(self.optimizer.state_dict()):
            for pid, state in optim["state"].items():
                for key, value in state.items():
                    tensors[f"optim.{i}.{pid}.{key}"] = \
                        torch.as_tensor(value).detach().cpu().clone()
            param_groups.append(optim["param_groups"])
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.engine"] = self.generator.get_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        best = None
        if self.best is not None:
            best = {k: self.best[k] for k in ("value", "step", "stale")}
            tensors.update({f"best.{k}": v.detach().cpu().clone()
                            for k, v in self.best["state"].items()})
        header = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
            "phase": self._phase_at(min(self.step, self.total_steps - 1))[0].name,
            "optimizer_phase": self._phase_of_optimizer.name,
            "param_groups": param_groups,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "data": self.batches.state_dict(), "config": dataclasses.asdict(self.config),
            "curves": self.curves, "eval_curves": self.eval_curves, "best": best,
            "early_stopped": self._early_stopped,
            "extra": self.extra_state() if self.extra_state else None,
        }
        path = self.out_dir / f"checkpoint-{self.step:08d}.safetensors"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, save_safetensors(
            tensors, metadata={CHECKPOINT_FORMAT: json.dumps(header)}))
        return path

    def load_checkpoint(self, path) -> None:
        """Restore everything a checkpoint holds (see save_checkpoint)."""
        header, tensors = read_checkpoint(path)
        if self.upgrade_checkpoint is not None:
            header, tensors = self.upgrade_checkpoint(header, tensors)
        try:
            self.model.load_state_dict(_with_prefix(tensors, "model."))
        except RuntimeError as err:
            raise CerebrumFileError(f"{path} does not fit this model: {err}") from None
        self.step = int(header["step"])
        phase = self._phase_at(self.step)[0]
        self._enter_phase(phase)
        # a checkpoint at the end of a phase holds the optimiser of the phase that ended; the
        # next phase starts its own
        if header.get("optimizer_phase", header.get("phase")) == phase.name:
            self._load_optimizer_state(path, header, tensors)
        if header.get("scaler"):
            self.scaler.load_state_dict(header["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.engine" in tensors:
            self.generator.set_state(tensors["rng.engine"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        self.batches.load_state_dict(header["data"])
        self.curves, self.eval_curves = header["curves"], header["eval_curves"]
        self._forget_logged_steps_after(self.step)
        self._early_stopped = bool(header.get("early_stopped", False))
        if header.get("best") is not None:
            state = {k: v.to(self.device) for k, v in _with_prefix(tensors, "best.").items()}
            self.best = {**header["best"], "state": state}

    def _load_optimizer_state(self, path, header: dict, tensors: dict) -> None:
        states: list[dict] = [{} for _ in header["param_groups"]]
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, pid, name = key.split(".", 3)
                states[int(i)].setdefault(int(pid), {})[name] = value.to(self.device)
        try:
            self.optimizer.load_state_dict([
                {"state": state, "param_groups": groups}
                for state, groups in zip(states, header["param_groups"], strict=True)])
        except ValueError as err:
            raise CerebrumFileError(f"{path}: the optimiser state does not fit this run: "
                                    f"{err}") from None


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl record (a line that is not one, e.g. cut short by a
    kill, counts as past every step)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _with_prefix(tensors: dict, prefix: str) -> dict:
    """The tensors whose names start with prefix, without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _append_row(curves: dict[str, list], row: dict) -> None:
    """Append one row of values to column lists; a column missing from the row gets NaN and
    a new column is NaN-padded for the earlier rows, so every column stays aligned with
    "step" (a phase's metrics appear when it starts)."""
    length = len(curves["step"])
    for name in row:
        if name not in curves:
            curves[name] = [math.nan] * length
    for name, column in curves.items():
        column.append(row.get(name, math.nan))


def move_to(batch, device: torch.device):
    """A batch (a tensor, or a dict / list / tuple of them, nested) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def count_tokens(batch) -> int:
    """What the progress bar's tokens/s counts: the elements of the batch's integer tensors
    (token ids), or, with none, the rows of its floating-point tensors' last dimension
    (frames of a (B, T, D) batch, pixels' channel vectors of an image)."""
    tensors = list(_tensors_in(batch))
    integers = [t for t in tensors if not t.is_floating_point()]
    if integers:
        return sum(t.numel() for t in integers)
    return sum(t.numel() // max(1, t.shape[-1]) for t in tensors if t.dim() > 0)


def _tensors_in(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors_in(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            yield from _tensors_in(value)


def read_checkpoint(path) -> tuple[dict, dict]:
    """(header, tensors) of a checkpoint file, with clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(json.loads(data[8:8 + size])["__metadata__"][CHECKPOINT_FORMAT])
    except (SafetensorError, ValueError, KeyError, TypeError, struct.error) as err:
        raise CerebrumFileError(f"{path} is not a readable checkpoint (truncated, corrupted "
                                f"or not a Cerebrum checkpoint): {err}") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CerebrumFileError(f"{path} is not a Cerebrum checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CerebrumFileError(f"{path} is a version {header.get('version')} checkpoint; this "
                                f"Cerebrum reads version {CHECKPOINT_VERSION}")
    return header, tensors


def latest_checkpoint(run_dir) -> Path:
    """The newest checkpoint file of a run directory."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob("checkpoint-*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    return found[-1]


def setup_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), world) if world > 1 else (0, 1)

