"""Small helpers the sequence hybrids share (the VRMGT, the MultiMixtureTransformer, MMModel):
seeded generators, config checks, the padded layout and the importance-weighted bound.

Their training is not here: it runs through the shared engine (`cerebrum.train`), set up by
the family glue in `cerebrum.brain.hybrids`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cerebrum._util.sequences import SequenceBatch
from cerebrum._util.validation import check_positive_int


def is_one_array(value, ndim: int) -> bool:
    """Whether `value` is a single array or tensor of `ndim` axes (not a list of sequences)."""
    if isinstance(value, (list, tuple)):
        return False
    return (value.dim() if isinstance(value, torch.Tensor) else np.ndim(value)) == ndim


def swap_batch_and_time(value):
    """A 3-D array or tensor with its first two axes swapped: (T, B, F) <-> (B, T, F)."""
    return value.transpose(0, 1) if isinstance(value, torch.Tensor) else np.swapaxes(value, 0, 1)


class SequenceFit:
    """The seeds' `model.fit(X, ...)` for the sequence hybrids: a convenience entry to the
    shared fit, `cerebrum.brain.hybrids.fit_sequences`, whose docstring documents every
    setting (tgt, epochs, lr, batch_size, clip_norm, weight_decay, kl_anneal_epochs,
    validation_split, patience, random_state, verbose, out_dir, resume, warmup_steps,
    checkpoint_every, optimizer, schedule, min_lr_ratio, time_major)."""

    def fit(self, X, lengths=None, **settings):
        """Train on sequences X (batch-first (B, T, D), a list of (T_i, D) arrays, or (N, D)
        with `lengths`) through the shared engine; returns self with `history_` per epoch.
        `settings` are the keywords of `cerebrum.brain.hybrids.fit_sequences`."""
        from cerebrum.brain.hybrids import fit_sequences  # the family glue imports models

        return fit_sequences(self, X, lengths, **settings)


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


def padded(batch: SequenceBatch) -> torch.Tensor:
    """Frames (N, D) as (B, T, D), zeros past each end."""
    return batch.pad(batch.X.T).permute(1, 2, 0)


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
