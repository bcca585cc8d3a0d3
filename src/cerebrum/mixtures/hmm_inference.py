"""Exact HMM inference in log space: forward, backward, posteriors and Viterbi, parallel in time.

The forward recursion is a product of matrices in a semiring: with the step matrix
    M_t[i, j] = log A[i, j] + log b_t(j)        (transition, then emission at t)
the forward variables are alpha_t = alpha_{t-1} (x) M_t, where (x) is the (logsumexp, +) product
for likelihoods and the (max, +) product for Viterbi. Products are associative, so time can be
cut into C chunks of L steps and processed as
    1. every chunk's product P_c = M_{cL} ... M_{cL+L-1}, all chunks at once (L batched steps);
    2. the chunk boundaries b_{c+1} = b_c (x) P_c (C small steps);
    3. the forward variables inside every chunk from its boundary, all chunks at once (L steps).
That is about 2 sqrt(T) Python steps instead of T, with memory linear in T. The same scheme runs
the backward recursion on reversed time, and the Viterbi back-tracking as a composition of
back-pointer maps.

Unequal lengths: positions past a sequence's end get the identity step matrix (0 on the
diagonal, -inf elsewhere), so the forward variables carry unchanged to the last column and padded
sequences cost no Python loop.

Expectation-maximisation needs only posteriors and transition counts, and for those a faster
form exists: `forward_backward` runs the same chunked scheme in probability space, where a step is
one matrix product with the fixed transition matrix followed by an element-wise product with the
emissions, every vector and chunk product rescaled as it goes (the classic scaling of Rabiner,
1989). That is plain GEMMs instead of logsumexp over an (S, S, S) product. Its one weakness is
float range: when a normaliser falls so low that the terms dropped by underflow could matter
(below S**2 * tiny / eps, about 4e-30 in float32), the affected sequences are recomputed exactly
in log space. The result equals the log-space one either way.

Shapes: B sequences, T time steps (padded), S states.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: Sequences up to this length run the plain step-by-step recursion (fewer, larger kernels).
SEQUENTIAL_MAX_STEPS = 64


def default_chunk_size(n_steps: int) -> int:
    """~sqrt(T) steps per chunk, or the whole sequence (plain recursion) when it is short."""
    return n_steps if n_steps <= SEQUENTIAL_MAX_STEPS else math.isqrt(n_steps) + 1


def valid_mask(lengths: torch.Tensor, n_steps: int) -> torch.Tensor:
    """(B, T) boolean, True where t < length."""
    return torch.arange(n_steps, device=lengths.device) < lengths.unsqueeze(1)


def _reduce(values: torch.Tensor, dim: int, semiring: str) -> torch.Tensor:
    if semiring == "log":
        return torch.logsumexp(values, dim=dim)
    return values.amax(dim=dim)


def _vector_times_matrix(vector, matrix, semiring):
    """(..., S) (x) (..., S, S) -> (..., S). The summed index is laid out last, so the
    reduction runs over contiguous memory (several times faster than over a middle axis)."""
    return _reduce(vector.unsqueeze(-2) + matrix.mT, -1, semiring)


def _matrix_times_matrix(left, right, semiring):
    """(..., S, S) (x) (..., S, S) -> (..., S, S), reducing over the last axis as above."""
    return _reduce(left.unsqueeze(-2) + right.mT.unsqueeze(-3), -1, semiring)


def _identity_like(matrix: torch.Tensor) -> torch.Tensor:
    n_states = matrix.shape[-1]
    eye = torch.eye(n_states, dtype=torch.bool, device=matrix.device)
    zero = torch.zeros((), dtype=matrix.dtype, device=matrix.device)
    return torch.where(eye, zero, torch.full_like(zero, -math.inf)).expand_as(matrix)


def semiring_scan(
    first: torch.Tensor,
    step_matrix,
    n_steps: int,
    semiring: str = "log",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """x_0 = first, x_t = x_{t-1} (x) step_matrix(t) for t = 1 .. n_steps - 1.

    Args:
        first: (B, S).
        step_matrix: maps a LongTensor of time indices (any shape I) to step matrices
            (B, *I, S, S). Index 0 and indices >= n_steps must map to the identity.
        semiring: "log" (logsumexp, +) or "max" (max, +).
        chunk_size: L; None picks ~sqrt(n_steps) (or the plain recursion for short sequences).

    Returns: (B, n_steps, S).
    """
    device = first.device
    if chunk_size is None:
        chunk_size = default_chunk_size(n_steps)
    if chunk_size >= n_steps:  # plain recursion
        out = [first]
        for t in range(1, n_steps):
            index = torch.tensor(t, device=device)
            out.append(_vector_times_matrix(out[-1], step_matrix(index), semiring))
        return torch.stack(out, dim=1)

    n_chunks = -(-n_steps // chunk_size)
    grid = torch.arange(n_chunks * chunk_size, device=device).view(n_chunks, chunk_size)
    # 1. the product of every chunk's step matrices, all chunks at once
    products = step_matrix(grid[:, 0])  # (B, C, S, S)
    for offset in range(1, chunk_size):
        products = _matrix_times_matrix(products, step_matrix(grid[:, offset]), semiring)
    # 2. the state just before each chunk: x_{-1} = first works because M_0 is the identity
    boundaries = [first]
    for chunk in range(n_chunks - 1):
        boundaries.append(_vector_times_matrix(boundaries[-1], products[:, chunk], semiring))
    current = torch.stack(boundaries, dim=1)  # (B, C, S)
    # 3. every step inside the chunks, all chunks at once
    columns = []
    for offset in range(chunk_size):
        current = _vector_times_matrix(current, step_matrix(grid[:, offset]), semiring)
        columns.append(current)
    out = torch.stack(columns, dim=2)  # (B, C, L, S)
    return out.reshape(first.shape[0], n_chunks * chunk_size, -1)[:, :n_steps]


def _transition_at(log_trans, index):
    """log A for the step into time `index`: (S, S) as is, or (B, *I, S, S) from (B, T, S, S)."""
    return log_trans if log_trans.dim() == 2 else log_trans[:, index]


def _forward_matrices(log_trans, log_emit, valid):
    """Step matrices of the forward pass: M_t = log A_t + log b_t (columns), identity where
    t == 0 or t is past the sequence's end."""
    n_steps = log_emit.shape[1]

    def step_matrix(index: torch.Tensor) -> torch.Tensor:
        inside = index.clamp_max(n_steps - 1)
        emit = log_emit[:, inside]  # (B, *I, S)
        matrix = _transition_at(log_trans, inside) + emit.unsqueeze(-2)
        use = valid[:, inside] & (index > 0) & (index < n_steps)
        return torch.where(use[..., None, None], matrix, _identity_like(matrix))

    return step_matrix


def _backward_matrices(log_trans, log_emit, valid):
    """Step matrices of the backward pass on reversed time s = T-1-t:
    beta_t[i] = op_j(beta_{t+1}[j] + log b_{t+1}(j) + log A[i, j]), i.e. N_s = (A + b_{t+1})^T."""
    n_steps = log_emit.shape[1]

    def step_matrix(index: torch.Tensor) -> torch.Tensor:
        following = (n_steps - index).clamp(0, n_steps - 1)  # t + 1 for s = index
        emit = log_emit[:, following]
        matrix = (_transition_at(log_trans, following) + emit.unsqueeze(-2)).mT
        use = valid[:, following] & (index > 0) & (index < n_steps)
        return torch.where(use[..., None, None], matrix, _identity_like(matrix))

    return step_matrix


def forward(log_start, log_trans, log_emit, lengths, semiring="log", chunk_size=None):
    """Forward variables (B, T, S) and per-sequence log-likelihood (or best path score) (B,).

    log_start (S,) or (B, S), log_emit (B, T, S), lengths (B,) int64 (each >= 1), log_trans
    (S, S), or (B, T, S, S) for transitions that change in time (log_trans[:, t] leads into
    step t; index 0 is never read). Differentiable, so hybrids train through it. Past a
    sequence's end the forward variables repeat the value at its last step.
    """
    valid = valid_mask(lengths, log_emit.shape[1])
    first = log_start + log_emit[:, 0]
    alpha = semiring_scan(
        first, _forward_matrices(log_trans, log_emit, valid), log_emit.shape[1], semiring,
        chunk_size,
    )
    return alpha, _reduce(alpha[:, -1], -1, semiring)


def backward(log_trans, log_emit, lengths, semiring="log", chunk_size=None):
    """Backward variables (B, T, S): log p(x_{t+1..end} | z_t); zero at and past the end."""
    batch, n_steps, n_states = log_emit.shape
    valid = valid_mask(lengths, n_steps)
    last = torch.zeros(batch, n_states, dtype=log_emit.dtype, device=log_emit.device)
    reversed_beta = semiring_scan(
        last, _backward_matrices(log_trans, log_emit, valid), n_steps, semiring, chunk_size
    )
    return reversed_beta.flip(1)


def posteriors(log_start, log_trans, log_emit, lengths, chunk_size=None):
    """State posteriors p(z_t | x) (B, T, S) (zero past each end) and log-likelihoods (B,)."""
    alpha, log_likelihood = forward(log_start, log_trans, log_emit, lengths, "log", chunk_size)
    beta = backward(log_trans, log_emit, lengths, "log", chunk_size)
    gamma = torch.exp(alpha + beta - log_likelihood[:, None, None])
    valid = valid_mask(lengths, log_emit.shape[1])
    return gamma * valid.unsqueeze(-1), log_likelihood


#: Viterbi runs step by step (T small kernels) rather than chunk-parallel (about 2 sqrt(T)
#: kernels, but S times more arithmetic per step) once B * S**3 reaches this: then the chunk
#: products cost more than the per-step overhead they save (measured on a 2-core CPU).
VITERBI_SEQUENTIAL_WORK = 8192
#: Back-pointers are computed over time blocks of about this many (B, S, S) elements.
_POINTER_BLOCK_ELEMENTS = 1 << 22


def viterbi(log_start, log_trans, log_emit, lengths, chunk_size=None):
    """Most probable state paths (B, T) (-1 past each end) and their log-probabilities (B,)."""
    batch, n_steps, n_states = log_emit.shape
    valid = valid_mask(lengths, n_steps)
    log_emit = log_emit.masked_fill(~valid.unsqueeze(-1), 0.0)  # padding: finite, never read
    sequential = batch * n_states**3 >= VITERBI_SEQUENTIAL_WORK
    if chunk_size is None and (sequential or n_steps <= SEQUENTIAL_MAX_STEPS):
        delta = _max_plus_sequential(log_start, log_trans, log_emit)
    else:
        delta = _max_plus_chunked(log_start, log_trans, log_emit, chunk_size)
    final = delta.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, n_states)).squeeze(1)
    best, last_state = final.max(-1)
    # Back-pointers psi_t[j] = argmax_i delta_{t-1}[i] + log A[i, j], for every t at once
    # (t = 0 and padded steps point to themselves, so paths carry through padding).
    pointers = torch.empty(batch, n_steps - 1, n_states, dtype=torch.long, device=delta.device)
    block = max(1, _POINTER_BLOCK_ELEMENTS // (batch * n_states * n_states))
    into = log_trans.T.contiguous()  # [j, i]: reduce over the last, contiguous axis (~20x faster)
    for start in range(0, n_steps - 1, block):
        stop = min(start + block, n_steps - 1)
        scores = delta[:, start:stop].unsqueeze(-2) + into  # (B, steps, S_j, S_i)
        pointers[:, start:stop] = scores.argmax(-1)
    own = torch.arange(n_states, device=log_emit.device).expand(batch, n_steps - 1, n_states)
    pointers = torch.where(valid[:, 1:, None], pointers, own)
    path = _follow_pointers(pointers, last_state, chunk_size)
    return torch.where(valid, path, torch.full_like(path, -1)), best


def _max_plus_sequential(log_start, log_trans, log_emit):
    """delta_t = max_i(delta_{t-1}[i] + log A[i, :]) + log b_t, step by step: (B, T, S).
    Values past a sequence's end are not meaningful (the caller reads each end)."""
    steps = log_emit.transpose(0, 1).contiguous()  # (T, B, S): contiguous per step
    into = log_trans.T.contiguous()  # [j, i]: reduce over the last, contiguous axis
    delta = log_start + steps[0]
    out = [delta]
    for t in range(1, steps.shape[0]):
        delta = (delta.unsqueeze(-2) + into).amax(-1) + steps[t]
        out.append(delta)
    return torch.stack(out, dim=1)


def _max_plus_chunked(log_start, log_trans, log_emit, chunk_size=None):
    """The same delta (B, T, S) chunk-parallel in time, for few sequences: the max-plus
    products of every chunk's steps, then the chunk boundaries, then the steps inside."""
    batch, n_steps, n_states = log_emit.shape
    if chunk_size is None:
        chunk_size = default_chunk_size(n_steps)
    chunk_size = max(1, min(chunk_size, n_steps - 1))
    into = log_trans.T.contiguous()  # [j, i]
    n_links = n_steps - 1
    n_chunks = -(-n_links // chunk_size)
    padded = log_emit.new_zeros(batch, n_chunks * chunk_size, n_states)
    padded[:, :n_links] = log_emit[:, 1:]
    grid = padded.view(batch, n_chunks, chunk_size, n_states).transpose(1, 2).contiguous()
    # 1. each chunk's product, P[i, j] = best score from state i before the chunk to j at its end
    products = log_trans + grid[:, 0].unsqueeze(-2)  # (B, C, S_i, S_j)
    for offset in range(1, chunk_size):
        products = (products.unsqueeze(-2) + into).amax(-1) + grid[:, offset].unsqueeze(-2)
    # 2. delta at each chunk's start (t = c L)
    boundary = log_start + log_emit[:, 0]
    boundaries = [boundary]
    for chunk in range(n_chunks - 1):
        boundary = (boundary.unsqueeze(-2) + products[:, chunk].mT).amax(-1)
        boundaries.append(boundary)
    state = torch.stack(boundaries, dim=1)  # (B, C, S)
    # 3. every step inside the chunks
    columns = []
    for offset in range(chunk_size):
        state = (state.unsqueeze(-2) + into).amax(-1) + grid[:, offset]
        columns.append(state)
    inside = torch.stack(columns, dim=2).view(batch, n_chunks * chunk_size, n_states)
    return torch.cat([boundaries[0].unsqueeze(1), inside[:, :n_links]], dim=1)


def _follow_pointers(pointers: torch.Tensor, last_state: torch.Tensor, chunk_size=None):
    """path_{T-1} = last_state, path_{t-1} = pointers[t-1][path_t], as (B, T) int64."""
    return compose_maps(pointers.flip(1), last_state, chunk_size).flip(1)


def compose_maps(maps: torch.Tensor, first: torch.Tensor, chunk_size=None) -> torch.Tensor:
    """Iterate maps S -> S given as look-up tables: x_0 = first, x_{k+1} = maps[:, k][x_k].

    maps (B, n, S) int64, first (B,) int64; returns (B, n + 1). Viterbi back-tracking and the
    sampling of state paths are both such chains. Composition is associative, so it runs
    chunk-parallel like the scans: compose each chunk's maps, walk the chunk boundaries, then
    fill the chunks.
    """
    batch, n_links, n_states = maps.shape
    if n_links == 0:
        return first.unsqueeze(1)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_links + 1)
    chunk_size = max(1, min(chunk_size, n_links))
    n_chunks = -(-n_links // chunk_size)
    padded = n_chunks * chunk_size
    links = torch.arange(n_states, device=maps.device).repeat(batch, padded, 1)  # identity
    links[:, :n_links] = maps
    links = links.view(batch, n_chunks, chunk_size, n_states)
    # 1. each chunk's composed map (its first link applied first)
    composed = links[:, :, 0]
    for offset in range(1, chunk_size):
        composed = torch.gather(links[:, :, offset], 2, composed)
    # 2. the state entering each chunk
    entering = [first]
    for chunk in range(n_chunks - 1):
        entering.append(composed[:, chunk].gather(1, entering[-1].unsqueeze(1)).squeeze(1))
    state = torch.stack(entering, dim=1)  # (B, C)
    # 3. every state inside the chunks
    states = []
    for offset in range(chunk_size):
        state = links[:, :, offset].gather(2, state.unsqueeze(-1)).squeeze(-1)
        states.append(state)
    inside = torch.stack(states, dim=2).reshape(batch, padded)[:, :n_links]
    return torch.cat([first.unsqueeze(1), inside], dim=1)


# ---------------------------------------------------------------------------- probability space


#: Probability-space vectors and chunk products are rescaled every this many steps rather than
#: every step (fewer kernels per step). In between, vector sums can only shrink and product
#: entries grow by at most a factor S per step, which the underflow checks allow for.
RESCALE_EVERY = 4


def underflow_threshold(n_states: int, dtype: torch.dtype) -> float:
    """Scales below this may have lost terms to underflow that matter at working precision."""
    info = torch.finfo(dtype)
    return n_states * n_states * info.tiny / info.eps


def _normalized_scan(first, weights, emit, chunk_size=None):
    """x_0 = first, x_t = (x_{t-1} @ weights) * e_t, each x_t normalised to sum 1.

    State-major throughout (see the module docstring), G independent groups at once (the forward
    and the backward pass share every kernel): first (G, S, B), weights (G, S, S) non-negative,
    emit (G, S, B, T) in [0, 1]. Returns x (G, S, B, T) and `suspect` (G, B): True where
    underflow may have cost accuracy (a vector sum or a chunk-product row fell below
    `underflow_threshold`).
    """
    groups, n_states, batch, n_steps = emit.shape
    threshold = underflow_threshold(n_states, emit.dtype)
    transposed = weights.mT.contiguous()  # x_t^T = W^T x_{t-1}^T: a wide, fast GEMM
    if chunk_size is None:
        chunk_size = default_chunk_size(n_steps)
    current = first / first.sum(1, keepdim=True)
    suspect = torch.zeros(groups, batch, dtype=torch.bool, device=emit.device)
    if n_steps == 1 or chunk_size >= n_steps - 1:  # plain recursion
        steps = emit.permute(3, 0, 1, 2).contiguous()  # (T, G, S, B)
        out = [current]
        for t in range(1, n_steps):
            current = torch.bmm(transposed, current) * steps[t]
            out.append(current)  # stored before rescaling: its sum shows any underflow
            if t % RESCALE_EVERY == 0:
                current = current / current.sum(1, keepdim=True)
        return _normalized_with_check(torch.stack(out, dim=-1), suspect, threshold)

    n_links = n_steps - 1  # steps t = 1 .. T-1, cut into C chunks of L
    n_chunks = -(-n_links // chunk_size)
    padded = emit.new_ones(groups, n_states, batch, n_chunks * chunk_size)  # harmless padding
    padded[..., :n_links] = emit[..., 1:]
    # grid[:, l] = e at t = 1 + c L + l for every chunk c: (G, L, S, B, C)
    grid = padded.view(groups, n_states, batch, n_chunks, chunk_size).permute(0, 4, 1, 2, 3)
    grid = grid.contiguous()
    # 1. every chunk's product P (rows i, columns j), stored transposed as (G, j, i, B, C),
    #    rows rescaled to a maximum of 1 with their log-scales kept
    products = transposed.view(groups, n_states, n_states, 1, 1) * grid[:, 0].unsqueeze(2)
    log_scale = emit.new_zeros(groups, n_states, batch, n_chunks)  # per row i
    for offset in range(1, chunk_size):
        products = torch.bmm(transposed, products.view(groups, n_states, -1)).view_as(products)
        products = products * grid[:, offset].unsqueeze(2)
        if offset % RESCALE_EVERY == 0 or offset == chunk_size - 1:
            peak = products.amax(1)  # (G, i, B, C)
            suspect |= (~(peak >= threshold * n_states**RESCALE_EVERY)).any(1).any(-1)
            products = products / peak.unsqueeze(1)
            log_scale = log_scale + peak.log()
    # 2. the state before each chunk (x at t = c L), walking the chunks one by one
    by_chunk = products.permute(4, 0, 3, 1, 2).contiguous()  # (C, G, B, j, i)
    scale_by_chunk = log_scale.permute(3, 0, 2, 1).contiguous()  # (C, G, B, i)
    boundary = current.mT  # (G, B, S)
    boundaries = [boundary]
    for chunk in range(n_chunks - 1):
        logits = boundary.log() + scale_by_chunk[chunk]
        mixed = (logits - logits.amax(-1, keepdim=True)).exp()
        boundary = (by_chunk[chunk] @ mixed.unsqueeze(-1)).squeeze(-1)
        boundary = boundary / boundary.sum(-1, keepdim=True)
        boundaries.append(boundary)
    state = torch.stack(boundaries, dim=-1).transpose(1, 2).contiguous()  # (G, S, B, C)
    # 3. every step inside the chunks, all chunks at once
    columns = []
    for offset in range(chunk_size):
        state = torch.bmm(transposed, state.view(groups, n_states, -1)).view_as(state)
        state = state * grid[:, offset]
        columns.append(state)
        if (offset + 1) % RESCALE_EVERY == 0:
            state = state / state.sum(1, keepdim=True)
    inside = torch.stack(columns, dim=-1).view(groups, n_states, batch, n_chunks * chunk_size)
    out = torch.cat([current.unsqueeze(-1), inside[..., :n_links]], dim=-1)
    return _normalized_with_check(out, suspect, threshold)


def _normalized_with_check(values, suspect, threshold):
    """values (G, S, B, T) normalised over S, and `suspect` updated with too-small sums."""
    sums = values.sum(1, keepdim=True)
    suspect = suspect | (~(sums >= threshold)).squeeze(1).any(-1)
    return values / sums, suspect


def _reverse_each(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of `values` (..., B, T) in time, within its own length."""
    n_steps = values.shape[-1]
    if bool((lengths == n_steps).all()):
        return values.flip(-1)
    steps = torch.arange(n_steps, device=lengths.device)
    reversed_steps = lengths.unsqueeze(1) - 1 - steps
    index = torch.where(reversed_steps >= 0, reversed_steps, steps.expand_as(reversed_steps))
    return values.gather(-1, index.expand_as(values))


class Expectations(NamedTuple):
    """What an EM step needs from forward-backward.

    posteriors (S, B, T): p(z_t | x), zero past each end (state-major); transitions (S, S):
    expected transition counts summed over sequences and time; log_likelihood (B,): log p(x).
    """

    posteriors: torch.Tensor
    transitions: torch.Tensor
    log_likelihood: torch.Tensor


def _scaled_emissions(log_emit, valid):
    """Emissions (S, B, T) rescaled per step to a maximum of 1, and the log-scales (B, T).
    Padding gets emission 1 in every state and scale 0."""
    log_emit = log_emit.masked_fill(~valid, 0.0)
    peak = log_emit.amax(0).clamp_min(torch.finfo(log_emit.dtype).min)
    return (log_emit - peak).exp(), peak


def _sequence_log_likelihood(alpha, start, trans, emit, peak, valid):
    """log p(x) (B,) from normalised forward variables alpha (S, B, T): the sum of the logs of
    the per-step normalisers p(x_t | x_<t) (the scaling method's identity). Also returns the
    one-step predictions p(z_t | x_<t) (S, B, T-1) and the normalisers (B, T)."""
    n_states = alpha.shape[0]
    first = start.unsqueeze(1) * emit[..., 0]  # (S, B)
    predicted = (trans.T @ alpha.reshape(n_states, -1)).view_as(alpha)[..., :-1]
    normalizers = torch.cat(
        [first.sum(0).unsqueeze(1), (predicted * emit[..., 1:]).sum(0)], dim=1
    )
    log_lik = torch.where(valid, peak + normalizers.log(), 0.0).sum(1)
    return log_lik, predicted, normalizers


def _any_below(values, valid, threshold):
    """(B,) True where a valid step's value is below `threshold` or not finite."""
    return ((~(values >= threshold) | ~torch.isfinite(values)) & valid).any(1)


def _batch_major(log_emit_state_major: torch.Tensor) -> torch.Tensor:
    return log_emit_state_major.permute(1, 2, 0)


def log_likelihood(log_start, log_trans, log_emit, lengths, chunk_size=None):
    """log p(x) per sequence (B,) from state-major log_emit (S, B, T): the scaled forward pass,
    with the log-space fallback."""
    valid = valid_mask(lengths, log_emit.shape[-1])
    emit, peak = _scaled_emissions(log_emit, valid)
    start, trans = log_start.exp(), log_trans.exp()
    first = start.unsqueeze(1) * emit[..., 0]
    alpha, suspect = _normalized_scan(
        first.unsqueeze(0), trans.unsqueeze(0), emit.unsqueeze(0), chunk_size
    )
    result, _, normalizers = _sequence_log_likelihood(alpha[0], start, trans, emit, peak, valid)
    threshold = underflow_threshold(log_emit.shape[0], log_emit.dtype)
    redo = suspect[0] | _any_below(normalizers, valid, threshold)
    if bool(redo.any()):
        _, exact = forward(
            log_start, log_trans, _batch_major(log_emit[:, redo]), lengths[redo], "log",
            chunk_size,
        )
        result = result.clone()
        result[redo] = exact
    return result


def forward_backward(log_start, log_trans, log_emit, lengths, chunk_size=None) -> Expectations:
    """Posteriors, expected transition counts and log-likelihoods for one E step, from
    state-major log_emit (S, B, T).

    Scaled probability-space recursions (GEMMs), the forward and the backward pass run as one
    batch; sequences where underflow may have cost accuracy are recomputed in log space.
    """
    n_states, _, n_steps = log_emit.shape
    valid = valid_mask(lengths, n_steps)
    emit, peak = _scaled_emissions(log_emit, valid)
    start, trans = log_start.exp(), log_trans.exp()
    # v_t = beta_t * e_t obeys the forward recursion, with A^T, on each sequence reversed.
    emit_reversed = _reverse_each(emit, lengths)
    scans, suspect = _normalized_scan(
        torch.stack([start.unsqueeze(1) * emit[..., 0], emit_reversed[..., 0]]),
        torch.stack([trans, trans.T]),
        torch.stack([emit, emit_reversed]),
        chunk_size,
    )
    alpha, v = scans[0], _reverse_each(scans[1], lengths)
    log_lik, predicted, normalizers = _sequence_log_likelihood(
        alpha, start, trans, emit, peak, valid
    )
    # beta_t = A v_{t+1}, and beta = 1 at each sequence's last step
    last = torch.arange(n_steps, device=lengths.device) == (lengths - 1).unsqueeze(1)
    beta = (trans @ v.reshape(n_states, -1)).view_as(v)
    beta = torch.cat([beta[..., 1:], torch.ones_like(beta[..., :1])], dim=-1)
    beta = torch.where(last, 1.0, beta)
    gamma = alpha * beta
    overlap = gamma.sum(0)  # (B, T)
    gamma = torch.where(valid, gamma / overlap, 0.0)
    # xi_t(i, j) = alpha_{t-1}(i) A(i, j) v_t(j) / sum_ij(...), whatever the scaling of alpha, v
    pair_norm = (predicted * v[..., 1:]).sum(0)  # (B, T-1)
    pair_weight = torch.where(valid[:, 1:], 1.0 / pair_norm, 0.0)
    before = alpha[..., :-1]
    after = v[..., 1:] * pair_weight

    threshold = underflow_threshold(n_states, log_emit.dtype)
    redo = (
        suspect.any(0)
        | _any_below(normalizers, valid, threshold)
        | _any_below(overlap, valid, threshold)
        | _any_below(pair_norm, valid[:, 1:], threshold)
    )
    if not bool(redo.any()):
        pairs = before.reshape(n_states, -1) @ after.reshape(n_states, -1).T
        return Expectations(gamma, trans * pairs, log_lik)
    # Exact log-space recomputation of the flagged sequences (rare: extreme float32 data).
    exact = log_space_expectations(
        log_start, log_trans, _batch_major(log_emit[:, redo]), lengths[redo], chunk_size
    )
    keep = ~redo.unsqueeze(-1)
    pairs = (torch.where(keep, before, 0.0).reshape(n_states, -1)
             @ torch.where(keep, after, 0.0).reshape(n_states, -1).T)
    gamma, log_lik = gamma.clone(), log_lik.clone()
    gamma[:, redo] = exact.posteriors.permute(2, 0, 1)
    log_lik[redo] = exact.log_likelihood
    return Expectations(gamma, trans * pairs + exact.transitions, log_lik)


#: Time steps per block when the log-space transition counts are summed (bounds the memory of
#: the (B, steps, S, S) intermediate).
_LOG_SPACE_BLOCK_STEPS = 4096


def log_space_expectations(log_start, log_trans, log_emit, lengths, chunk_size=None):
    """`forward_backward` computed entirely in log space, batch-major like the other log-space
    functions: log_emit (B, T, S) in, posteriors (B, T, S) out. Slower, immune to underflow."""
    alpha, log_lik = forward(log_start, log_trans, log_emit, lengths, "log", chunk_size)
    beta = backward(log_trans, log_emit, lengths, "log", chunk_size)
    valid = valid_mask(lengths, log_emit.shape[1])
    gamma = torch.where(
        valid.unsqueeze(-1), torch.exp(alpha + beta - log_lik[:, None, None]), 0.0
    )
    n_states = log_emit.shape[-1]
    log_counts = [torch.full((n_states, n_states), -math.inf, dtype=alpha.dtype,
                             device=alpha.device)]
    ahead = beta + log_emit - log_lik[:, None, None]  # log b_t(j) beta_t(j) / p(x)
    for start in range(1, log_emit.shape[1], _LOG_SPACE_BLOCK_STEPS):
        stop = min(start + _LOG_SPACE_BLOCK_STEPS, log_emit.shape[1])
        pair = (alpha[:, start - 1 : stop - 1].unsqueeze(-1) + log_trans
                + ahead[:, start:stop].unsqueeze(-2))  # (B, steps, S, S)
        pair = pair.masked_fill(~valid[:, start:stop, None, None], -math.inf)
        log_counts.append(torch.logsumexp(pair.flatten(0, 1), dim=0))
    transitions = torch.logsumexp(torch.stack(log_counts), dim=0).exp()
    return Expectations(gamma, transitions, log_lik)
