"""Byte patching for the Byte Latent Transformer (BLT, Pagnoni et al., 2024).

A patch is a run of consecutive bytes that the latent transformer sees as one position.
Everything here works on (B, T) tensors of token ids or next-byte entropies and returns a
boolean mask `starts` (B, T): True where a position opens a new patch. Position 0 always
opens one.

Entropy convention: `entropies[:, i]` is H(x_i) = -sum_v p(v | x_<i) log p(v | x_<i) in nats,
the entropy of the prediction *of* token i, made from the tokens before it (the entropy
model's logits at position i - 1; see `next_token_entropies`). So `entropies[:, i]` depends on
x_<i only, and every scheme below decides position i from entropies[:, <= i] and ids[:, <= i]:

- "entropy" (global threshold): i starts a patch when H(x_i) > theta.
- "monotonic" (approximately monotonic): i starts a patch when H(x_i) - H(x_{i-1}) > theta,
  i.e. where the entropy rises by more than theta (i >= 1).
- "space": i starts a patch when the token before it is space-like (space, tab, newline,
  carriage return, or <bos>) and token i is not (a run of spaces stays in one patch).
- "fixed": i starts a patch when i % stride == 0.

Then `max_patch_length` L caps every patch: a position whose distance from the last start
is a multiple of L starts one too (a left-to-right rule, computed without a loop).

Incremental: because position i depends on positions <= i only, the boundaries of a prefix
never change when more bytes arrive (tested on random prefixes), which byte-by-byte
generation relies on.

Calibration (`calibrate_threshold`): the mean patch size (positions / patches) is a
non-decreasing function of theta for both threshold schemes (a higher theta removes starts,
and with the length cap merging two patches never adds forced starts), so theta for a target
mean patch size is found by bisection between min(H) - 1 and max(H) + 1 (60 halvings, then
the side whose mean patch size is closer to the target).
"""

from __future__ import annotations

import math
import numbers

import torch

SCHEMES = ("entropy", "monotonic", "space", "fixed")
#: Token ids that count as space for "space" patching: tab, newline, carriage return, space,
#: and the byte tokenizer's <bos> (257), so a document's first word is one patch.
SPACE_IDS = (9, 10, 13, 32, 257)


def check_scheme(scheme) -> str:
    """`scheme` when it is one of SCHEMES (ValueError naming it otherwise)."""
    if scheme not in SCHEMES:
        raise ValueError(f"patching scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    return scheme


def _check_length(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis: (..., V) -> (...).
    Half-precision logits are computed in float32; float32 / float64 stay as they are."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {type(logits).__name__}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def next_token_entropies(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) next-token logits (logits[:, i] predicts token i + 1) -> (B, T) entropies
    H(x_i) of each position's own prediction (module docstring). Position 0 has no
    prediction in the window: it gets +inf (it starts a patch under every scheme anyway)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    h = entropy_from_logits(logits[:, :-1])
    first = torch.full_like(h[:, :1], math.inf) if h.shape[1] else torch.full(
        (logits.shape[0], 1), math.inf, dtype=h.dtype, device=h.device)
    return torch.cat([first, h], 1)


def cap_patch_lengths(starts: torch.Tensor, max_patch_length: int | None) -> torch.Tensor:
    """Add starts so that no patch is longer than max_patch_length (None: no cap)."""
    starts = starts.clone()
    starts[:, :1] = True
    if max_patch_length is None:
        return starts
    length = _check_length(max_patch_length, "max_patch_length")
    index = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    last = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    return starts | ((index - last) % length == 0)


def patch_starts(*, scheme: str, ids: torch.Tensor | None = None,
                 entropies: torch.Tensor | None = None, threshold: float | None = None,
                 stride: int | None = None, max_patch_length: int | None = None
                 ) -> torch.Tensor:
    """(B, T) bool: where patches start under `scheme` (module docstring). "entropy" and
    "monotonic" need `entropies` (B, T) and `threshold`; "space" needs `ids` (B, T);
    "fixed" needs `stride` and the shape of ids or entropies."""
    check_scheme(scheme)
    reference = entropies if entropies is not None else ids
    if reference is None:
        raise ValueError("patch_starts needs ids or entropies")
    if reference.dim() != 2:
        raise ValueError(f"ids / entropies must be (B, T), got shape {tuple(reference.shape)}")
    if scheme in ("entropy", "monotonic"):
        if entropies is None:
            raise ValueError(f"{scheme!r} patching needs entropies")
        if threshold is None or isinstance(threshold, bool) or not isinstance(
                threshold, numbers.Real) or math.isnan(threshold):
            raise ValueError(f"{scheme!r} patching needs a numeric threshold, got {threshold!r}")
        if scheme == "entropy":
            starts = entropies > threshold
        else:
            rise = entropies[:, 1:] - entropies[:, :-1]
            starts = torch.cat([torch.ones_like(entropies[:, :1], dtype=torch.bool),
                                rise > threshold], 1)
    elif scheme == "space":
        if ids is None:
            raise ValueError("'space' patching needs ids")
        space = torch.zeros_like(ids, dtype=torch.bool)
        for s in SPACE_IDS:
            space |= ids == s
        starts = torch.zeros_like(space)
        starts[:, 1:] = space[:, :-1] & ~space[:, 1:]
    else:
        stride = _check_length(stride, "stride")
        index = torch.arange(reference.shape[1], device=reference.device)
        starts = (index % stride == 0).expand(reference.shape).clone()
    return cap_patch_lengths(starts, max_patch_length)


def patch_ids(starts: torch.Tensor) -> torch.Tensor:
    """(B, T) bool starts -> (B, T) int64 index of each position's patch (0-based)."""
    return starts.long().cumsum(1) - 1


def patch_lengths(starts: torch.Tensor) -> torch.Tensor:
    """(B, T) starts -> (B, P) patch lengths, P the largest patch count of a row, rows
    padded with 0; each row sums to T."""
    ids = patch_ids(starts)
    n = int(ids.max()) + 1 if ids.numel() else 0
    lengths = torch.zeros(starts.shape[0], n, dtype=torch.long, device=starts.device)
    return lengths.scatter_add_(1, ids, torch.ones_like(ids))


def mean_patch_size(starts: torch.Tensor) -> float:
    """Positions per patch over the whole batch."""
    return starts.numel() / max(1, int(starts.sum()))


def calibrate_threshold(entropies: torch.Tensor, target_mean_patch_size: float, *,
                        scheme: str = "entropy", max_patch_length: int | None = None,
                        iterations: int = 60) -> float:
    """The threshold whose mean patch size on `entropies` (B, T) is closest to the target
    (bisection; see the module docstring). Non-finite entries (position 0's +inf) are
    ignored when bracketing."""
    if scheme not in ("entropy", "monotonic"):
        raise ValueError(f"only threshold schemes ('entropy', 'monotonic') are calibrated, "
                         f"got {scheme!r}")
    if isinstance(target_mean_patch_size, bool) or not isinstance(
            target_mean_patch_size, numbers.Real) or not target_mean_patch_size >= 1:
        raise ValueError(f"target mean patch size must be a number >= 1, got "
                         f"{target_mean_patch_size!r}")
    finite = entropies[torch.isfinite(entropies)]
    if finite.numel() == 0:
        return 0.0
    spread = float(finite.max() - finite.min())
    lo, hi = float(finite.min()) - spread - 1.0, float(finite.max()) + spread + 1.0

    def size(theta):
        return mean_patch_size(patch_starts(scheme=scheme, entropies=entropies,
                                            threshold=theta,
                                            max_patch_length=max_patch_length))

    for _ in range(iterations):
        mid = (lo + hi) / 2
        if size(mid) < target_mean_patch_size:
            lo = mid
        else:
            hi = mid
    return lo if abs(size(lo) - target_mean_patch_size) <= abs(
        size(hi) - target_mean_patch_size) else hi
