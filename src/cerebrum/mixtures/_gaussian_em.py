"""Expectation-maximisation for Gaussian mixtures as "accumulate statistics, then update".

`chunk_statistics` runs the E step on one chunk and returns weighted sufficient statistics;
statistics add across chunks and across processes (`GaussianStats.map_sums`); `m_step` turns
their sum into new parameters. The EM loop (`_fit_loop.run_em`, driven by GaussianMixture's and
HiddenMarkov's hooks) is therefore the same for data in memory, data streamed from disk and data
spread over processes, and a chunked fit equals an in-memory fit up to floating-point summation
order.

How the statistics are formed, per covariance type:
- diag / spherical, well-conditioned (the usual case): raw moments of the (centred) data, from
  one GEMM of the responsibilities with the features [X**2, X] of each block. The E step is one
  GEMM too, the expanded square -x^2 p/2 + x mu p - mu^2 p/2. This is the fast path.
- full / tied, and diag / spherical when the expanded square would cancel: scatter about the
  *previous* means, accumulated in whitened coordinates y = (x - mu_old) U_old (already computed
  by the E step) and mapped back with U_old^-1. Near convergence the new means barely move, so
  there is no catastrophic cancellation even in float32.

When the expanded square cancels: its terms are about mu^2 p, the result about 1, so its rounding
error is about eps * sum_d mu_d^2 p_d per sample (and the variance update's, about eps * mu^2 p
relative). Data whose clusters sit far from the origin of the centred coordinates compared with
their spread (two clusters at +-100 with spread 0.1: mu^2 p = 1e6) lose every digit in float32.
`expanded_form_is_accurate` measures that bound once per iteration from the current parameters,
and past `EXPANDED_FORM_LIMIT` the diagonal types take the residual path; the benchmark data
(bench/gmm.py) stays on the GEMM path.

Dead components: a component whose responsibility mass falls below `10 * eps * total_weight` is
re-seeded at one of the samples the model explains worst, with the average covariance of the live
components and the weight of a single sample, instead of producing NaN. That iteration may lower
the likelihood; no other does (with `reg_covar=0`).

Shapes: N samples in a chunk, K components, D features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from cerebrum.mixtures._data import Chunk, SampleSource
from cerebrum.mixtures.gaussian_math import (
    LOG_2PI,
    log_det_precision_cholesky,
    safe_precision_cholesky,
    whitened_residuals,
)

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


class GaussianParams(NamedTuple):
    """Mixture parameters in the fitting coordinates (data centred on the source's centre)."""

    log_weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    prec_chol: torch.Tensor  # see gaussian_math for the shape by covariance type


@dataclass
class GaussianStats:
    """Weighted sufficient statistics of K components about reference points `ref` (K, D).

    resp_sum (K,): sum of w * r; first (K, D): sum of w * r * (x - ref); second: sum of
    w * r * (x - ref)**2 as (K, D) for diag/spherical, or the outer products (K, D, D) for
    full/tied; log_likelihood: sum of w * log p(x) (zero when the responsibilities were given).
    """

    ref: torch.Tensor
    resp_sum: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    log_likelihood: torch.Tensor

    def map_sums(self, fn) -> GaussianStats:
        """A copy whose additive tensors (all but `ref`) went through `fn(list) -> list`: the
        seam where a distributed fit all-reduces them."""
        resp_sum, first, second, log_likelihood = fn(
            [self.resp_sum, self.first, self.second, self.log_likelihood]
        )
        return GaussianStats(self.ref, resp_sum, first, second, log_likelihood)

    def __add__(self, other: GaussianStats) -> GaussianStats:
        return GaussianStats(
            ref=self.ref,
            resp_sum=self.resp_sum + other.resp_sum,
            first=self.first + other.first,
            second=self.second + other.second,
            log_likelihood=self.log_likelihood + other.log_likelihood,
        )


class Workspace:
    """Scratch tensors the E step reuses from block to block and from iteration to iteration.

    A fit's blocks are megabytes each. Allocated afresh, each block's features and scores are
    new memory (the diag benchmark fit took 6,000 minor page faults) and the features were
    assembled by a `cat` of a squared copy; one workspace per fit writes every block's features
    and scores into the same buffers instead (2,938 faults, one pass fewer over the features).
    Tensors it returns are overwritten by the next call: use them before.
    """

    def __init__(self):
        self._features: torch.Tensor | None = None
        self._scores: torch.Tensor | None = None

    def moment_features(self, X: torch.Tensor) -> torch.Tensor:
        """[X**2, X, 1] (N, 2D + 1) for one block.

        Rebuilt for every block on every pass rather than cached for the fit: squaring X in
        cache is cheaper than streaming a cached copy twice the size of X from memory
        (measured 0.21 s -> 0.16 s for the diag benchmark fit). The column of ones makes the
        responsibility sums part of the M step's GEMM and the E step's constants part of its.
        """
        n, d = X.shape
        buffer = self._features
        if (buffer is None or buffer.shape[0] < n or buffer.shape[1] != 2 * d + 1
                or buffer.dtype != X.dtype or buffer.device != X.device):
            buffer = torch.empty(n, 2 * d + 1, dtype=X.dtype, device=X.device)
            buffer[:, 2 * d] = 1
            self._features = buffer
        features = buffer[:n]
        torch.mul(X, X, out=features[:, :d])
        features[:, d : 2 * d].copy_(X)
        return features

    def scores(self, n_components: int, n: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous (K, N) tensor of `like`'s dtype and device."""
        size = n_components * n
        buffer = self._scores
        if (buffer is None or buffer.numel() < size or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = torch.empty(size, dtype=like.dtype, device=like.device)
            self._scores = buffer
        return buffer[:size].view(n_components, n)


def _diagonal_precisions(prec_chol: torch.Tensor, covariance_type: str, n_features: int):
    """The diagonal precisions U**2 as (K, D) for diag and spherical types."""
    precisions = prec_chol.square()
    if covariance_type == "spherical":
        precisions = precisions.unsqueeze(1).expand(-1, n_features)
    return precisions


#: Largest rounding-error bound eps * max_k sum_d mu_kd^2 p_kd (in nats per sample) at which the
#: diagonal types keep the expanded-square GEMM form. At 1e-5 the form's error stays far below
#: the 1e-4 relative accuracy float32 fits are held to (tests/mixtures/test_float32.py), and
#: ordinary data (bench/gmm.py's mixture: up to about 3e-5) keeps the fast path.
EXPANDED_FORM_LIMIT = 1e-4


def expanded_form_error(params: GaussianParams, covariance_type: str) -> float:
    """eps * max_k |mu_k U_k|^2 (for the diagonal types sum_d mu_kd^2 p_kd): the squared distance
    of the farthest mean from the origin in units of its spread, times eps. For the diagonal
    types it is the expanded square's rounding error per sample, in nats, up to a small
    factor; for every type it says whether r @ X - (sum r) mu keeps the shift (`SHIFT_LIMIT`)."""
    means = params.means.detach()
    if covariance_type in ("diag", "spherical"):
        precisions = _diagonal_precisions(params.prec_chol, covariance_type, means.shape[1])
        bound = (means.square() * precisions).sum(1).amax()
    elif covariance_type == "full":
        bound = (means.unsqueeze(1) @ params.prec_chol).square().sum((1, 2)).amax()
    else:
        bound = (means @ params.prec_chol).square().sum(1).amax()
    return float(bound) * torch.finfo(means.dtype).eps


def expanded_form_is_accurate(params: GaussianParams, covariance_type: str) -> bool:
    """Whether the diagonal types may use the expanded-square GEMM form for these parameters
    (see the module docstring); always False for full and tied, which never use it."""
    if covariance_type not in ("diag", "spherical"):
        return False
    return expanded_form_error(params, covariance_type) <= EXPANDED_FORM_LIMIT


#: Largest `expanded_form_error` at which the first moments are taken as r @ X - (sum r) mu (a
#: GEMM): the shift then loses about eps * |mu U| * (a summation factor) spreads, under 1e-3 of
#: a spread up to |mu U| of about 300.
SHIFT_LIMIT = 1e-2

#: Below this bound the expanded form's statistics are exact to float32 rounding (clusters within
#: a few spreads of the origin) and the final EM step needs no residual pass.
FINAL_STEP_LIMIT = 1e-6


def needs_accurate_final_step(params: GaussianParams, covariance_type: str) -> bool:
    """Whether an EM loop on the expanded path should take its last M step from residuals.

    The expanded raw moments lose about eps * mu^2 p times a summation factor of the variance
    (measured up to 2e-3 relative near EXPANDED_FORM_LIMIT), harmless for the responsibilities of
    intermediate iterations but not for the parameters a fit returns; one residual pass at the
    end costs a few iterations' worth of time less than running every iteration that way.
    """
    if covariance_type not in ("diag", "spherical"):
        return False
    return expanded_form_error(params, covariance_type) > FINAL_STEP_LIMIT


def expanded_coefficients(params: GaussianParams, covariance_type: str,
                          scale: float = 1.0) -> torch.Tensor:
    """(K, 2D + 1) coefficients with which `coefficients @ [x**2, x, 1]` is scale * (log(pi_k) +
    log N(x | k)) for the diagonal types: -(x - mu)^2 p / 2 = -x^2 p / 2 + x (mu p) - mu^2 p / 2,
    the constant per component riding on the features' column of ones."""
    n_features = params.means.shape[1]
    log_det = log_det_precision_cholesky(params.prec_chol, covariance_type, n_features)
    precisions = _diagonal_precisions(params.prec_chol, covariance_type, n_features)
    constant = (params.log_weights + log_det - 0.5 * n_features * LOG_2PI
                - 0.5 * (params.means.square() * precisions).sum(1))
    coefficients = torch.cat(
        [-0.5 * precisions, params.means * precisions, constant.unsqueeze(1)], dim=1
    )
    return coefficients.mul_(scale)


def weighted_log_prob_t(
    chunk: Chunk,
    params: GaussianParams,
    covariance_type: str,
    scale: float = 1.0,
    features: torch.Tensor | None = None,
    expanded: bool | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """scale * (log(pi_k) + log N(x_n | k)) transposed, (K, N), plus the whitened residuals
    (K, N, D) where they were formed (None on the expanded GEMM path), squared in place for the
    diagonal types, whose statistics need only their squares.

    `expanded` chooses the diagonal types' form (default: `expanded_form_is_accurate`; callers
    that visit many blocks decide once and pass it); full and tied always use residuals.

    Components lead because K is small: reductions over K then run as vectorised element-wise
    operations over N instead of short inner loops. `scale=LOG2E` gives base-2 logarithms for
    free (folded into the coefficients), which `normalize_log2_prob_t_` exponentiates with the
    cheaper exp2. `features` may pass in the block's `Workspace.moment_features` when the
    caller has them; with a `workspace`, the expanded path writes its result into the
    workspace's scores (overwritten by its next use).
    """
    if expanded is None:
        expanded = expanded_form_is_accurate(params, covariance_type)
    if expanded:
        coefficients = expanded_coefficients(params, covariance_type, scale)
        if features is None:
            features = (workspace or Workspace()).moment_features(chunk.X)
        if workspace is None:
            return coefficients @ features.T, None
        out = workspace.scores(len(coefficients), chunk.n_samples, chunk.X)
        return torch.mm(coefficients, features.T, out=out), None
    n_features = chunk.X.shape[1]
    log_det = log_det_precision_cholesky(params.prec_chol, covariance_type, n_features)
    offset = (params.log_weights + log_det - 0.5 * n_features * LOG_2PI).unsqueeze(1)
    residuals = whitened_residuals(chunk.X, params.means, params.prec_chol, covariance_type)
    if covariance_type in ("diag", "spherical"):
        squares = residuals.square_()  # all the diagonal types' statistics need
    else:
        squares = residuals.square()
    log_prob = squares.sum(-1).mul_(-0.5 * scale).add_(scale * offset)
    return log_prob, residuals


def normalize_log2_prob_t_(log2_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities (K, N) and log p(x_n) in nats (N,) from base-2 joint log-probabilities
    (K, N), working in place.

    Responsibilities are floored at sqrt(tiny) (about 1e-19 in float32, 1e-154 in float64),
    far below the working precision of the statistics they feed. Without the floor, exp of
    underflowing arguments and the M-step GEMM on subnormal products both take slow paths on
    CPUs (measured 2-15x per element). exp2 is used because it is about twice as fast as exp.
    """
    peak = log2_prob.amax(0)
    lowest = 0.5 * math.log2(torch.finfo(log2_prob.dtype).tiny)
    resp = log2_prob.sub_(peak).clamp_min_(lowest).exp2_()
    total = resp.sum(0)
    return resp.div_(total), (peak + total.log2()).mul_(LN2)


def chunk_statistics(
    chunk: Chunk,
    covariance_type: str,
    params: GaussianParams | None = None,
    resp: torch.Tensor | None = None,
    expanded: bool | None = None,
    workspace: Workspace | None = None,
) -> GaussianStats:
    """E step on one chunk (when only `params` is given) and its weighted sufficient statistics.

    Pass `resp` (K, N) to accumulate statistics for given responsibilities (hard k-means labels
    at initialisation, HMM state posteriors); the log-likelihood is then zero. With both, `params`
    only serves as the reference point of the scatter (for float32 accuracy). `expanded` as in
    `weighted_log_prob_t` (default: decided from `params`; raw moments when there are none).
    `workspace`: scratch memory to reuse across calls (see `Workspace`).
    """
    X = chunk.X
    n_features = X.shape[1]
    diagonal = covariance_type in ("diag", "spherical")
    if expanded is None:
        expanded = params is None or expanded_form_is_accurate(params, covariance_type)
    expanded = expanded and diagonal
    residuals = None
    features = (workspace or Workspace()).moment_features(X) if expanded else None
    if resp is not None and params is not None and not expanded:
        residuals = whitened_residuals(X, params.means, params.prec_chol, covariance_type)
        if diagonal:
            residuals.square_()  # as weighted_log_prob_t returns them
    given = resp is not None
    if not given:
        log2_prob, residuals = weighted_log_prob_t(
            chunk, params, covariance_type, LOG2E, features=features, expanded=expanded,
            workspace=workspace,
        )
        resp, log_norm = normalize_log2_prob_t_(log2_prob)
        log_likelihood = log_norm.sum() if chunk.weight is None else chunk.weight @ log_norm
    else:
        log_likelihood = torch.zeros((), dtype=X.dtype, device=X.device)
    n_components = resp.shape[0]
    if chunk.weight is None:
        weighted_resp = resp
    else:  # the caller's responsibilities are left as they were
        weighted_resp = resp * chunk.weight if given else resp.mul_(chunk.weight)

    if expanded:  # [sum r x^2, sum r x, sum r] in one GEMM
        moments = weighted_resp @ features
        ref = torch.zeros(n_components, n_features, dtype=X.dtype, device=X.device)
        second, first = moments[:, :n_features], moments[:, n_features : 2 * n_features]
        return GaussianStats(ref, moments[:, 2 * n_features], first, second, log_likelihood)
    resp_sum = weighted_resp.sum(1)
    if params is None:  # scatter about the centre: whitening by the identity
        ref = torch.zeros(n_components, n_features, dtype=X.dtype, device=X.device)
        residuals = X.unsqueeze(0).expand(n_components, -1, -1)
        unwhiten = None
    elif diagonal:  # y = (x - mu) u elementwise, u the square root of the precisions
        ref = params.means
        unwhiten = _diagonal_precisions(params.prec_chol, covariance_type, n_features).sqrt()
    else:
        ref = params.means
        unwhiten = torch.linalg.solve_triangular(
            params.prec_chol,
            torch.eye(n_features, dtype=X.dtype, device=X.device).expand_as(params.prec_chol),
            upper=True,
        )
    first = weighted_resp @ X - resp_sum.unsqueeze(1) * ref
    if params is not None and expanded_form_error(params, covariance_type) > SHIFT_LIMIT:
        # Data far from the origin (|mu U| in the hundreds of spreads): that difference of
        # two large sums keeps too few digits of the shift in float32, so sum r (x - ref)
        # directly (a block holds few enough rows for bmm's accumulation).
        first = torch.bmm(weighted_resp.unsqueeze(1),
                          X.unsqueeze(0) - ref.unsqueeze(1)).squeeze(1)
    if diagonal:  # sum r (x - mu)^2 = (sum r y^2) / u^2, `residuals` holding y^2
        second = torch.bmm(weighted_resp.unsqueeze(1), residuals).squeeze(1)
        if unwhiten is not None:
            second = second / unwhiten.square()
    else:
        second = (residuals * weighted_resp.unsqueeze(-1)).mT @ residuals
        if unwhiten is not None:  # sum r (x - mu)(x - mu)^T = U^-T (sum r y y^T) U^-1
            second = unwhiten.mT @ second @ unwhiten
    return GaussianStats(ref, resp_sum, first, second, log_likelihood)


#: Target number of elements in the largest per-block intermediate of the E step: small enough
#: to stay in a core's cache between the E and M steps, large enough to amortise op overhead.
BLOCK_ELEMENTS = 1 << 20


def block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    """Rows per block so that the E step's biggest intermediate holds ~BLOCK_ELEMENTS elements:
    (K, N, D) residuals for full/tied, the (N, 2D) moment features for diag/spherical."""
    width = n_components * n_features if covariance_type in ("full", "tied") else 2 * n_features
    return max(1024, BLOCK_ELEMENTS // max(width, 1))


def iter_blocks(chunk: Chunk, rows: int):
    """`chunk` itself, or its cached row blocks of about `rows` rows when it is larger.

    Processing a big in-memory chunk block by block keeps the E step's intermediates in cache
    for the M step (measured 1.5-2.7x faster on CPU than whole-array passes; bench/gmm.py).
    """
    if chunk.n_samples < 2 * rows:
        return [chunk]
    return chunk.blocks(-(-chunk.n_samples // rows))


def accumulate(
    source: SampleSource,
    covariance_type: str,
    n_components: int,
    params: GaussianParams | None = None,
    resp_fn=None,
    expanded: bool | None = None,
    workspace: Workspace | None = None,
) -> GaussianStats:
    """Sum `chunk_statistics` over every block of every chunk of `source`.

    With `params`, runs the E step; with `resp_fn(block) -> (K, N)`, uses fixed responsibilities
    (and `params`, if given, as the reference of the scatter: k-means centres at initialisation).
    `workspace`: scratch memory reused across blocks (a fit passes one for all its iterations).
    """
    workspace = workspace or Workspace()
    if expanded is None:
        expanded = params is None or expanded_form_is_accurate(params, covariance_type)
    if resp_fn is not None and params is not None:
        expanded = False  # one pass: the accurate form costs nothing worth saving
    # residuals (K, N, D) are the biggest intermediate off the expanded path: size blocks by them
    rows = block_rows(n_components, source.n_features, covariance_type if expanded else "full")
    total = None
    diagonal = covariance_type in ("diag", "spherical")
    for chunk in source:
        if expanded and diagonal and params is not None and resp_fn is None:
            stats = _expanded_statistics(iter_blocks(chunk, rows), params, covariance_type,
                                         workspace)
            total = stats if total is None else total + stats
            continue
        for block in iter_blocks(chunk, rows):
            resp = None if resp_fn is None else resp_fn(block)
            stats = chunk_statistics(
                block, covariance_type, params=params, resp=resp, expanded=expanded,
                workspace=workspace,
            )
            total = stats if total is None else total + stats
    return total


def _expanded_statistics(blocks, params: GaussianParams, covariance_type: str,
                         workspace: Workspace) -> GaussianStats:
    """E step and raw moments of the diagonal types on the expanded path, over row `blocks`.

    The same arithmetic as `chunk_statistics(..., expanded=True)` per block, with the work
    that depends on the parameters only (the GEMM's coefficients) done once, and the moments
    summed by the M step's GEMM itself (beta = 1): per block, two GEMMs and the normalisation,
    so that small blocks cost little beyond their arithmetic.
    """
    coefficients = expanded_coefficients(params, covariance_type, LOG2E)
    n_components, width = coefficients.shape
    n_features = (width - 1) // 2
    moments = coefficients.new_zeros(n_components, width)  # [sum r x^2, sum r x, sum r]
    log_likelihood = coefficients.new_zeros(())
    for block in blocks:
        features = workspace.moment_features(block.X)
        scores = workspace.scores(n_components, block.n_samples, block.X)
        resp, log_norm = normalize_log2_prob_t_(torch.mm(coefficients, features.T, out=scores))
        if block.weight is None:
            log_likelihood += log_norm.sum()
        else:
            log_likelihood += block.weight @ log_norm
            resp.mul_(block.weight)
        moments.addmm_(resp, features)
    ref = torch.zeros_like(params.means)
    return GaussianStats(ref, moments[:, 2 * n_features], moments[:, n_features : 2 * n_features],
                         moments[:, :n_features], log_likelihood)


def lowest_scoring_samples(source: SampleSource, score_fn, n_samples: int,
                           gather=None) -> torch.Tensor:
    """The `n_samples` samples (n, D) with the lowest `score_fn(chunk) -> (N,)` over the source;
    over all processes of a distributed fit with `gather(scores, rows, n) -> (scores, rows)`
    (`distributed.Communicator.gather_lowest`)."""
    best_scores, best_rows = None, None
    for chunk in source:
        scores = score_fn(chunk)
        keep = torch.topk(scores, min(n_samples, len(scores)), largest=False).indices
        scores, rows = scores[keep], chunk.X[keep]
        if best_scores is not None:
            scores, rows = torch.cat([best_scores, scores]), torch.cat([best_rows, rows])
            keep = torch.topk(scores, min(n_samples, len(scores)), largest=False).indices
            scores, rows = scores[keep], rows[keep]
        best_scores, best_rows = scores, rows
    if gather is not None:
        _, best_rows = gather(best_scores, best_rows, n_samples)
    return best_rows


def worst_explained(source, covariance_type, params, n_samples, gather=None):
    """The samples with the lowest log-likelihood under `params` (for re-seeding)."""
    def score(chunk):
        log_prob, _ = weighted_log_prob_t(chunk, params, covariance_type, expanded=False)
        return torch.logsumexp(log_prob, 0)

    return lowest_scoring_samples(source, score, n_samples, gather)


def m_step(
    stats: GaussianStats,
    covariance_type: str,
    reg_covar: float,
    total_weight: float,
    reseed_points=None,
) -> GaussianParams:
    """Maximum-likelihood parameters from summed statistics (scikit-learn's update, reg included).

    Dead components are re-seeded as described in the module docstring, at the points returned
    by `reseed_points(n) -> (n, D)` (only called when a component has died).
    """
    dtype = stats.resp_sum.dtype
    eps = torch.finfo(dtype).eps
    floor = max(reg_covar, eps)
    resp_sum = stats.resp_sum + 10 * eps
    shift = stats.first / resp_sum.unsqueeze(1)
    means = stats.ref + shift
    if covariance_type in ("diag", "spherical"):
        variances = (stats.second / resp_sum.unsqueeze(1) - shift.square()).clamp_min(0) + reg_covar
        covariances = variances if covariance_type == "diag" else variances.mean(1)
    else:
        scatter = stats.second - resp_sum.view(-1, 1, 1) * (shift.unsqueeze(2) * shift.unsqueeze(1))
        if covariance_type == "full":
            covariances = scatter / resp_sum.view(-1, 1, 1)
        else:
            covariances = scatter.sum(0) / resp_sum.sum()
        covariances = covariances + reg_covar * torch.eye(
            means.shape[1], dtype=dtype, device=means.device
        )
    weights = resp_sum / resp_sum.sum()

    dead = stats.resp_sum < 10 * eps * total_weight
    if bool(dead.any()):
        weights, means, covariances = _reseed_dead(
            dead, reseed_points, weights, means, covariances, covariance_type, total_weight
        )
    prec_chol, _ = safe_precision_cholesky(covariances, covariance_type, floor)
    return GaussianParams(weights.log(), means, prec_chol)


def _reseed_dead(dead, reseed_points, weights, means, covariances, covariance_type, total_weight):
    """Move each dead component onto a badly explained sample (see the module docstring)."""
    if reseed_points is None:
        raise ValueError("a component lost all its mass and no re-seeding points were given")
    dead_index = dead.nonzero().flatten()
    points = reseed_points(len(dead_index))
    means = means.clone()
    means[dead_index[: len(points)]] = points
    if len(points) < len(dead_index):  # fewer samples than dead components
        means[dead_index[len(points) :]] = points[0]
    if covariance_type != "tied":
        alive = ~dead
        covariances = covariances.clone()
        covariances[dead] = covariances[alive].mean(0)
    weights = weights.clone()
    weights[dead] = 1.0 / max(total_weight, 1.0)
    return weights / weights.sum(), means, covariances
