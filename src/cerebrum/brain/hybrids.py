"""The deep hybrid families: "mmm" (seed 000's MultiMixtureTransformer) and "vrmgt" (seed
001's VariationalRecurrentMarkovGaussianTransformer), and their fit through the shared engine.

Their configs are the models' own config dataclasses; fit settings are the keywords of
`fit_sequences` (epochs, lr, batch_size, clip_norm, weight_decay, kl_anneal_epochs,
validation_split, patience, random_state, verbose, out_dir, resume, warmup_steps,
checkpoint_every, optimizer, schedule, min_lr_ratio, time_major), which the models' own `fit`
methods pass on. Log-likelihoods are
importance-weighted lower bounds in nats per sequence (see the model's docstring).

`fit_sequences` trains any sequence model that offers
    model.training_batch(X, lengths, tgt) -> SequenceBatch   the training data, checked
    model.training_loss(x, lengths, kl_weight, generator) -> scalar (per frame)
    model.validation_loss(x, lengths, generator) -> scalar (the full-KL loss, per frame)
    model.after_fit(batch) -> None                             optional: post-fit steps
(x a padded (B, T, D) batch) with `cerebrum.train.engine.Trainer`: seeds 000 / 001's regime,
AdamW at a constant learning rate (optionally after a linear warm-up; the optimizer and a
cosine or warmup-stable-decay schedule are settable as for every neural family), KL annealing
w_KL = min(1, epoch / kl_anneal_epochs), gradient clipping, mini-batches, and a validation
split with early stopping on the validation loss (counted once the KL weight is full; the
best weights are kept), plus what the engine gives every family: checkpoints and exact
resume, a progress bar, a metrics log.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from cerebrum._util.validation import check_positive_int, check_seed
from cerebrum.brain.classical import n_features_of
from cerebrum.brain.registry import Family, register
from cerebrum.models._sequence_helpers import is_one_array, padded, swap_batch_and_time
from cerebrum.models.multi_mixture_transformer import MMTConfig, MultiMixtureTransformer
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig
from cerebrum.train.engine import TrainConfig, Trainer, latest_checkpoint, read_checkpoint
from cerebrum.train.sequences import SequenceBatches, derived_seed, split_sequences

#: the stream of the validation loss's latent samples (see train.sequences.derived_seed)
_VALIDATION_STREAM = 0
#: the learning-rate schedules of a hybrid fit: constant (seeds 000 / 001) or the engine's
SCHEDULES = ("constant", "cosine", "wsd")
#: the learning rate when neither the call nor the model (its `default_lr`) names one
DEFAULT_LR = 1e-3


def kl_weight(epoch: int, kl_anneal_epochs: int) -> float:
    """The KL term's weight in epoch `epoch` (0-based): min(1, epoch / kl_anneal_epochs)."""
    return 1.0 if kl_anneal_epochs <= 0 else min(1.0, epoch / kl_anneal_epochs)


def check_fit_settings(epochs, lr, batch_size, clip_norm, weight_decay, validation_split,
                       patience, kl_anneal_epochs, warmup_steps, checkpoint_every,
                       schedule="constant") -> None:
    """ValueError / TypeError naming the first bad fit setting."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    check_positive_int(epochs, name="epochs")
    check_positive_int(batch_size, name="batch_size")
    check_positive_int(kl_anneal_epochs, name="kl_anneal_epochs", minimum=0)
    check_positive_int(warmup_steps, name="warmup_steps", minimum=0)
    check_positive_int(checkpoint_every, name="checkpoint_every")
    if patience is not None:
        check_positive_int(patience, name="patience")
    for name, value in (("lr", lr), ("clip_norm", clip_norm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")


def _run_seed(random_state, out_dir, resume: bool) -> int:
    """The run's seed: random_state; when None, the seed of the run being resumed, or fresh
    entropy from torch's global generator."""
    if random_state is not None:
        return check_seed(random_state)
    if resume and out_dir is not None:
        header, _ = read_checkpoint(latest_checkpoint(out_dir))
        return int(header["config"]["seed"])
    return int(torch.randint(2**62, ()).item())


def fit_sequences(model, X, lengths=None, *, tgt=None, epochs: int = 100,
                  lr: float | None = None, batch_size: int = 32, clip_norm: float = 5.0,
                  weight_decay: float = 0.0, kl_anneal_epochs: int = 0,
                  validation_split: float = 0.1, patience: int | None = 10, random_state=None,
                  verbose: bool = False, out_dir=None, resume: bool = False,
                  warmup_steps: int = 0, checkpoint_every: int = 10, optimizer: str = "adamw",
                  schedule: str = "constant", min_lr_ratio: float = 0.1,
                  time_major: bool = False):
    """Train a sequence hybrid on X with the shared engine (see the module docstring); returns
    the model, fitted in place.

    X takes the sequence forms HiddenMarkov takes (batch-first); `tgt` is passed to the model's
    `training_batch` (the MultiMixtureTransformer trains toward targets, the others refuse
    them). One epoch is one pass over the training sequences in a seeded order, in batches of
    `batch_size`; `epochs` of them at most. `validation_split` of the sequences are held out:
    their loss is evaluated after every epoch, the weights of the best epoch (once the KL
    weight is full) are restored at the end, and training stops after `patience` epochs
    without improvement (None: never). `random_state` seeds the split, the order and the
    latent samples. `out_dir`: where the engine writes checkpoints (every `checkpoint_every`
    epochs, at the end and when interrupted), metrics.jsonl (per step: loss, kl_weight,
    epoch; per epoch: eval/val_loss) and curves.npz; `resume=True` continues the latest
    checkpoint there exactly (with random_state=None, under the seed of the run it
    continues). `warmup_steps`: linear warm-up of the learning rate over that many batches.
    `lr`: None takes the model's `default_lr` (the VRMGT's is seed 001's 1e-4), else 1e-3.
    `optimizer`: "adamw" or "muon" (the engine's); `schedule`: "constant" after the warm-up
    (seeds 000 / 001), "cosine" or "wsd" (warmup-stable-decay) down to `min_lr_ratio * lr`
    over the run. `time_major=True`: X (and tgt) are seed 000's time-major (T, B, D) arrays
    instead of the batch-first (B, T, D) every verb takes by default.

    `model.history_` gets, per epoch: train_loss (the mean training loss per frame, annealed),
    val_loss (the full-KL validation loss per frame; empty without a validation split),
    kl_weight; and best_val_loss (None when no epoch qualified), early_stopped, interrupted.
    """
    lr = getattr(model, "default_lr", DEFAULT_LR) if lr is None else lr
    check_fit_settings(epochs, lr, batch_size, clip_norm, weight_decay, validation_split,
                       patience, kl_anneal_epochs, warmup_steps, checkpoint_every, schedule)
    if time_major:
        X, tgt = _batch_first(X, "X"), None if tgt is None else _batch_first(tgt, "tgt")
    batch = model.training_batch(X, lengths, tgt)
    seed = _run_seed(random_state, out_dir, resume)
    x_all = padded(batch)
    train_idx, val_idx = split_sequences(batch.n_sequences, validation_split, seed)
    batches = SequenceBatches(x_all, batch.lengths, train_idx, batch_size=batch_size,
                              seed=seed)
    per_epoch = batches.batches_per_epoch
    validating = len(val_idx) > 0
    config = TrainConfig(
        steps=epochs * per_epoch, batch_size=batch_size, lr=lr, optimizer=optimizer,
        # "constant" is the engine's cosine that decays to 100% of lr
        schedule="cosine" if schedule == "constant" else schedule,
        min_lr_ratio=1.0 if schedule == "constant" else min_lr_ratio, warmup_steps=warmup_steps,
        weight_decay=weight_decay, beta1=0.9, beta2=0.999, clip_norm=clip_norm,
        precision="fp32", eval_every=per_epoch, monitor="val_loss" if validating else None,
        patience=patience if validating else None, checkpoint_every=checkpoint_every * per_epoch,
        log_every=1, seed=seed)

    def loss_fn(net, data, context):
        # the model's own training_loss, not its forward: the hybrids' fit runs unwrapped
        # (no torch.compile; one process), so `net` is `model`
        weight = kl_weight(data["epoch"], kl_anneal_epochs)
        loss = model.training_loss(data["x"], data["lengths"], weight, context.generator)
        if not torch.isfinite(loss):  # before the update: the weights stay as they were
            raise FloatingPointError(
                f"the training loss became {float(loss.detach())} in epoch {data['epoch'] + 1}; "
                "lower lr or clip_norm, or standardise the data")
        return loss, {"kl_weight": weight, "epoch": float(data["epoch"])}

    device = x_all.device
    if validating:  # the held-out sequences, as one batch trimmed to their longest
        val_lengths = batch.lengths[torch.as_tensor(val_idx, device=device)]
        longest = int(batch.lengths.cpu()[torch.as_tensor(val_idx)].max())
        val_x = x_all[torch.as_tensor(val_idx, device=device), :longest]

    def evaluate():
        # the same latent samples at every evaluation: epochs are compared on equal terms,
        # and a resumed run evaluates exactly as the straight one
        generator = torch.Generator(device=device).manual_seed(
            derived_seed(seed, _VALIDATION_STREAM))
        value = float(model.validation_loss(val_x, val_lengths, generator))
        epoch = (trainer.step - 1) // per_epoch
        # early stopping counts only once the KL weight is full: before, losses differ
        full = kl_weight(epoch, kl_anneal_epochs) >= 1.0
        return {"val_loss" if full else "val_loss_annealing": value}

    def extra_state():
        config_of = getattr(model, "config", None)
        return {"model": type(model).__name__,
                "config": dataclasses.asdict(config_of)
                if dataclasses.is_dataclass(config_of) else None}

    trainer = Trainer(model, loss_fn, batches, config, out_dir=out_dir,
                      evaluate=evaluate if validating else None, extra_state=extra_state,
                      verbose=verbose)
    saved = _snapshot(model)
    try:
        result = trainer.run(resume=resume)
        if result["interrupted"]:
            where = (f"fit again with resume=True and out_dir={str(out_dir)!r} to continue"
                     if out_dir is not None else "nothing was saved (no out_dir)")
            raise KeyboardInterrupt(
                f"training was interrupted after step {trainer.step} of {trainer.total_steps}; "
                f"the model is as it was before fit; {where}")
        model.eval()
        model.history_ = _epoch_history(result, batches.batch_sizes())
        after_fit = getattr(model, "after_fit", None)
        if after_fit is not None:
            after_fit(batch)
    except BaseException:
        _restore(model, saved)  # a failed or interrupted fit loses nothing
        raise
    return model


def _batch_first(data, name: str):
    """A time-major (T, B, D) array or tensor as (B, T, D); anything else is refused."""
    if not is_one_array(data, 3):
        shape = "" if isinstance(data, (list, tuple)) else f" of shape {np.shape(data)}"
        raise ValueError(f"time_major=True needs {name} as one (T, B, D) array or tensor, got "
                         f"{type(data).__name__}{shape}")
    return swap_batch_and_time(data)


def _snapshot(model) -> dict:
    """What a fit changes: every parameter and buffer, the fitted history, the mode."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history_": getattr(model, "history_", None), "training": model.training}


def _restore(model, saved: dict) -> None:
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved["state"][key])
    if saved["history_"] is None:
        model.__dict__.pop("history_", None)
    else:
        model.history_ = saved["history_"]
    model.train(saved["training"])


def _epoch_history(result: dict, batch_sizes: list[int]) -> dict:
    """Per-epoch lists from the engine's per-step curves: the training loss averaged over the
    sequences of the epoch (its batches weighted by their sizes), the KL weight, and the
    validation loss of each evaluation."""
    train = result["train"]
    sums: dict[int, list[float]] = {}
    weights: dict[int, float] = {}
    for i, (loss, epoch, weight) in enumerate(zip(train["loss"], train.get("epoch", []),
                                                  train.get("kl_weight", []), strict=False)):
        size = batch_sizes[i % len(batch_sizes)]
        total = sums.setdefault(int(epoch), [0.0, 0.0])
        total[0] += loss * size
        total[1] += size
        weights.setdefault(int(epoch), float(weight))
    history = {"train_loss": [total / count for total, count in sums.values()],
               "val_loss": [], "kl_weight": list(weights.values())}
    evaluations = result["eval"]
    full = evaluations.get("val_loss", [])
    annealing = evaluations.get("val_loss_annealing", [math.nan] * len(full))
    for i in range(len(evaluations["step"])):
        value = full[i] if i < len(full) and not np.isnan(full[i]) else annealing[i]
        history["val_loss"].append(float(value))
    best = result["best"]
    history["best_val_loss"] = None if best is None else float(best["value"])
    history["early_stopped"] = bool(result["early_stopped"])
    history["interrupted"] = bool(result["interrupted"])
    return history


def _infer_input_dim(data, fields: dict) -> dict:
    fields = dict(fields)
    if "input_dim" not in fields:
        fields["input_dim"] = n_features_of(data)
    return fields


def _hybrid_family(name, model_class, config_class, description, saved=("history_",)):
    def build(config, device=None):
        model = model_class(config)
        return model.to(device) if device is not None else model

    return register(Family(
        name=name,
        model_class=model_class,
        config_class=config_class,
        build=build,
        config_of=lambda model: model.config,
        fit=fit_sequences,
        sequence_log_likelihoods=lambda model, X, lengths: model.log_likelihoods(X, lengths),
        log_likelihoods=lambda model, X, lengths=None, **kw: model.log_likelihoods(
            X, lengths, **kw),
        infer_config=_infer_input_dim,
        takes_sequences=True,
        summary_attributes=saved,
        feature_field="input_dim",
        description=description,
    ))


MMM = _hybrid_family(
    "mmm", MultiMixtureTransformer, MMTConfig,
    "multi-mixture transformer: VAE + RNN-HMM + Transformer (importance-weighted bound)",
    saved=("history_", "rules"))
VRMGT = _hybrid_family(
    "vrmgt", VariationalRecurrentMarkovGaussianTransformer, VRMGTConfig,
    "variational recurrent Markov Gaussian transformer (importance-weighted bound)")
