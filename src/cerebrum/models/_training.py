"""The training loop of the sequence hybrids (seeds 000 and 001's regime).

AdamW with weight decay, KL annealing (w_KL = min(1, epoch / kl_anneal_epochs), seed 000),
gradient clipping at `clip_norm`, mini-batches, a validation split with early stopping on the
validation loss (the best weights are kept), a progress bar and a loss history. Everything
random (the split, the batch order, the latent samples) draws from one generator seeded by
`random_state`, so a run is reproducible. The language-model engine of `cerebrum.train` will
take this over when it lands; the hybrids then keep only their `loss`.

A model plugs in with two methods:
    model.training_loss(x, lengths, kl_weight, generator) -> scalar loss
    model.validation_loss(x, lengths, generator) -> scalar (the full-KL loss, per frame)
where x is a padded (B, T, D) batch.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from cerebrum._util.sequences import SequenceBatch
from cerebrum._util.validation import check_positive_int


def seeded_generator(random_state, device) -> torch.Generator:
    """A generator on `device` seeded by random_state (fresh entropy when None)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(2**62, ()).item()) if random_state is None
                          else int(random_state))
    return generator


def normalise_positive_ints(config, names) -> None:
    """Check that each named field of a frozen config is an integer >= 1 and store it as a
    plain int (so the config is JSON as it stands)."""
    for name in names:
        object.__setattr__(config, name, check_positive_int(getattr(config, name), name=name))


def importance_weighted_bound(log_weights, batch: SequenceBatch, *, n_samples: int,
                              random_state, batch_size: int) -> torch.Tensor:
    """log (1/K) sum_k w_k per sequence (B,), computed in chunks of batch_size sequences.

    log_weights(x (b, T, D) padded and trimmed, lengths (b,), K, generator) must return the
    log importance weights log p(x, z_k) - log q(z_k | x) as (K, b)."""
    check_positive_int(n_samples, name="n_samples")
    check_positive_int(batch_size, name="batch_size")
    x_all = padded(batch)
    generator = seeded_generator(random_state, x_all.device)
    results = []
    with torch.no_grad():
        for start in range(0, x_all.shape[0], batch_size):
            lengths = batch.lengths[start:start + batch_size]
            x = x_all[start:start + batch_size, : int(lengths.max())]
            log_w = log_weights(x, lengths, n_samples, generator)
            results.append(torch.logsumexp(log_w, 0) - math.log(n_samples))
    return torch.cat(results)


def kl_weight(epoch: int, kl_anneal_epochs: int) -> float:
    """The KL term's weight in epoch `epoch` (0-based): min(1, epoch / kl_anneal_epochs)."""
    return 1.0 if kl_anneal_epochs <= 0 else min(1.0, epoch / kl_anneal_epochs)


def padded(batch: SequenceBatch) -> torch.Tensor:
    """Frames (N, D) as (B, T, D), zeros past each end."""
    return batch.pad(batch.X.T).permute(1, 2, 0)


def check_training_settings(epochs, lr, batch_size, clip_norm, weight_decay,
                            validation_split, patience, kl_anneal_epochs) -> None:
    check_positive_int(epochs, name="epochs")
    check_positive_int(batch_size, name="batch_size")
    check_positive_int(kl_anneal_epochs, name="kl_anneal_epochs", minimum=0)
    if patience is not None:
        check_positive_int(patience, name="patience")
    for name, value in (("lr", lr), ("clip_norm", clip_norm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")


def train_sequences(model: nn.Module, batch: SequenceBatch, *, epochs: int, lr: float,
                    batch_size: int, clip_norm: float, weight_decay: float,
                    kl_anneal_epochs: int, validation_split: float, patience: int | None,
                    random_state, verbose: bool) -> dict:
    """Train `model` on the sequences of `batch`; returns the history (lists per epoch:
    train_loss, val_loss (when there is a validation split), kl_weight, grad_norm)."""
    check_training_settings(epochs, lr, batch_size, clip_norm, weight_decay,
                            validation_split, patience, kl_anneal_epochs)
    device = next(model.parameters()).device
    generator = seeded_generator(random_state, device)
    x_all = padded(batch)
    lengths = batch.lengths
    B = x_all.shape[0]
    order = torch.randperm(B, generator=generator, device=device)
    n_val = round(validation_split * B) if B > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"train_loss": [], "val_loss": [], "kl_weight": [], "grad_norm": []}
    best, best_state, since_best = math.inf, None, 0
    progress = tqdm(range(epochs), desc=f"{type(model).__name__}", disable=not verbose,
                    leave=False)
    for epoch in progress:
        weight = kl_weight(epoch, kl_anneal_epochs)
        model.train()
        shuffled = train_idx[torch.randperm(len(train_idx), generator=generator,
                                            device=device)]
        total, norms = 0.0, []
        for start in range(0, len(shuffled), batch_size):
            idx = shuffled[start:start + batch_size]
            top = int(lengths[idx].max())
            loss = model.training_loss(x_all[idx, :top], lengths[idx], weight, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {float(loss)} in epoch {epoch + 1}; lower lr or "
                    "clip_norm, or standardise the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip_norm)))
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history["train_loss"].append(total / max(len(shuffled), 1))
        history["kl_weight"].append(weight)
        history["grad_norm"].append(max(norms) if norms else 0.0)
        postfix = {"loss": f"{history['train_loss'][-1]:.4g}"}
        if n_val:
            model.eval()
            with torch.no_grad():
                top = int(lengths[val_idx].max())
                val = float(model.validation_loss(x_all[val_idx, :top], lengths[val_idx],
                                                  generator))
            history["val_loss"].append(val)
            postfix["val"] = f"{val:.4g}"
            # early stopping counts only once the KL weight is full: before, losses differ
            if weight >= 1.0:
                if val < best:
                    best, best_state, since_best = val, copy.deepcopy(model.state_dict()), 0
                else:
                    since_best += 1
                    if patience is not None and since_best >= patience:
                        progress.set_postfix(postfix)
                        break
        progress.set_postfix(postfix)
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history["best_val_loss"] = best if best_state is not None else None
    return history
