"""k-means++ seeding and Lloyd iterations over a `SampleSource`, for initialising mixtures.

Both work chunk by chunk, so they initialise out-of-core fits exactly as in-memory ones: a draw
"proportional to mass" takes one uniform number, sums the mass of every chunk in one pass and
finds the row in a second, so the rows chosen do not depend on how the data are chunked.

Seeding is the greedy k-means++ of Arthur and Vassilvitskii (2007), as scikit-learn also uses:
each new centre is the best of 2 + floor(log K) candidates drawn proportionally to the weighted
squared distance to the nearest centre chosen so far.

Shapes: N samples in a chunk, K centres, D features.
"""

from __future__ import annotations

import math

import torch

from cerebrum.mixtures._data import Chunk, SampleSource


def squared_distances(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """|x_n - c_k|^2 as (N, K), in GEMM form, clamped at 0 against rounding."""
    distances = torch.addmm(centers.square().sum(1), X, centers.T, alpha=-2.0)
    return (distances + X.square().sum(1, keepdim=True)).clamp_min_(0)


def nearest_center(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest centre for each sample."""
    return squared_distances(X, centers).argmin(1)


def _chunk_mass(chunk: Chunk, centers: torch.Tensor | None) -> torch.Tensor:
    """Weighted squared distance to the nearest centre (or the weight alone if none yet), (N,)."""
    if centers is None:
        return chunk.weights_or_ones()
    mass = squared_distances(chunk.X, centers).amin(1)
    return mass if chunk.weight is None else mass * chunk.weight


def draw_rows(
    source: SampleSource,
    n_draws: int,
    generator: torch.Generator,
    centers: torch.Tensor | None = None,
) -> torch.Tensor:
    """`n_draws` samples (n_draws, D), each drawn with probability proportional to its mass.

    The mass is the sample weight times the squared distance to the nearest of `centers`; with
    no centres, or when every sample sits on a centre, it is the sample weight alone.
    """
    totals = [float(_chunk_mass(chunk, centers).double().sum()) for chunk in source]
    if sum(totals) <= 0 and centers is not None:
        return draw_rows(source, n_draws, generator, centers=None)
    dtype, device = source.dtype, source.device
    targets = torch.rand(n_draws, generator=generator, device=device, dtype=torch.float64)
    targets = targets * sum(totals)
    rows = torch.empty(n_draws, source.n_features, dtype=dtype, device=device)
    offset = 0.0
    for index, (chunk, total) in enumerate(zip(source, totals, strict=True)):
        upper = offset + total
        if index == len(totals) - 1:  # a target at the grand total (rounding) belongs here
            upper = math.inf
        inside = (targets >= offset) & (targets < upper)
        if bool(inside.any()):
            cumulative = torch.cumsum(_chunk_mass(chunk, centers).double(), 0)
            found = torch.searchsorted(cumulative, targets[inside] - offset, right=True)
            rows[inside] = chunk.X[found.clamp_max(chunk.n_samples - 1)]
        offset += total
    return rows


def kmeans_plusplus(
    source: SampleSource, n_clusters: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeds (n_clusters, D), in the source's (centred) coordinates."""
    n_trials = 2 + int(math.log(n_clusters))
    centers = draw_rows(source, 1, generator)
    for _ in range(1, n_clusters):
        candidates = draw_rows(source, n_trials, generator, centers=centers)
        potential = torch.zeros(n_trials, dtype=torch.float64, device=source.device)
        for chunk in source:
            nearest = squared_distances(chunk.X, centers).amin(1, keepdim=True)
            mass = torch.minimum(nearest, squared_distances(chunk.X, candidates))
            weight = chunk.weights_or_ones().unsqueeze(1)
            potential += (mass * weight).sum(0).double()
        centers = torch.cat([centers, candidates[potential.argmin()].unsqueeze(0)])
    return centers


def lloyd(
    source: SampleSource, centers: torch.Tensor, max_iter: int, tol: float = 1e-4,
    reduce=None,
) -> torch.Tensor:
    """Weighted Lloyd iterations from `centers`; stops when the centres move by less than
    `tol` times the mean per-feature variance of the data (scikit-learn's criterion).

    A centre that loses all its samples stays where it was. `reduce(list of tensors)` sums
    each pass's totals over the processes of a distributed fit.
    """
    n_clusters = centers.shape[0]
    threshold = None
    for _ in range(max_iter):
        sums = torch.zeros_like(centers)
        counts = torch.zeros(n_clusters, dtype=centers.dtype, device=centers.device)
        spread = torch.zeros((), dtype=torch.float64, device=centers.device)
        for chunk in source:
            one_hot = torch.nn.functional.one_hot(nearest_center(chunk.X, centers), n_clusters)
            one_hot = one_hot.to(chunk.X.dtype)
            if chunk.weight is not None:
                one_hot = one_hot * chunk.weight.unsqueeze(1)
            sums += one_hot.T @ chunk.X
            counts += one_hot.sum(0)
            if threshold is None:  # the data are centred, so this is the total variance
                spread += (chunk.weights_or_ones() @ chunk.X.square()).sum().double()
        if reduce is not None:
            sums, counts, spread = reduce([sums, counts, spread])
        if threshold is None:
            threshold = tol * float(spread) / (source.total_weight * source.n_features)
        safe_counts = counts.clamp_min(torch.finfo(counts.dtype).tiny).unsqueeze(1)
        moved = torch.where(counts.unsqueeze(1) > 0, sums / safe_counts, centers)
        shift = float((moved - centers).square().sum())
        centers = moved
        if shift <= threshold:
            break
    return centers
