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

Shapes: B sequences, T time steps (padded), S states.
"""

from __future__ import annotations

import math

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
    """(..., S) (x) (..., S, S) -> (..., S)."""
    return _reduce(vector.unsqueeze(-1) + matrix, -2, semiring)


def _matrix_times_matrix(left, right, semiring):
    """(..., S, S) (x) (..., S, S) -> (..., S, S)."""
    return _reduce(left.unsqueeze(-1) + right.unsqueeze(-3), -2, semiring)


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


def _forward_matrices(log_trans, log_emit, valid):
    """Step matrices of the forward pass: M_t = log A + log b_t (columns), identity where
    t == 0 or t is past the sequence's end."""
    n_steps = log_emit.shape[1]

    def step_matrix(index: torch.Tensor) -> torch.Tensor:
        inside = index.clamp_max(n_steps - 1)
        emit = log_emit[:, inside]  # (B, *I, S)
        matrix = log_trans + emit.unsqueeze(-2)
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
        matrix = (log_trans + emit.unsqueeze(-2)).mT
        use = valid[:, following] & (index > 0) & (index < n_steps)
        return torch.where(use[..., None, None], matrix, _identity_like(matrix))

    return step_matrix


def forward(log_start, log_trans, log_emit, lengths, semiring="log", chunk_size=None):
    """Forward variables (B, T, S) and per-sequence log-likelihood (or best path score) (B,).

    log_start (S,), log_trans (S, S), log_emit (B, T, S), lengths (B,) int64 (each >= 1).
    Past a sequence's end the forward variables repeat the value at its last step.
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


def viterbi(log_start, log_trans, log_emit, lengths, chunk_size=None):
    """Most probable state paths (B, T) (-1 past each end) and their log-probabilities (B,)."""
    batch, n_steps, n_states = log_emit.shape
    valid = valid_mask(lengths, n_steps)
    delta, best = forward(log_start, log_trans, log_emit, lengths, "max", chunk_size)
    # Back-pointers psi_t[j] = argmax_i delta_{t-1}[i] + log A[i, j], for every t at once
    # (t = 0 and padded steps point to themselves, so paths carry through padding).
    scores = delta[:, :-1].unsqueeze(-1) + log_trans  # (B, T-1, S, S)
    pointers = scores.argmax(-2)
    own = torch.arange(n_states, device=log_emit.device).expand(batch, n_steps - 1, n_states)
    pointers = torch.where(valid[:, 1:, None], pointers, own)
    last_state = delta[:, -1].argmax(-1)
    path = _follow_pointers(pointers, last_state, chunk_size)
    return torch.where(valid, path, torch.full_like(path, -1)), best


def _follow_pointers(pointers: torch.Tensor, last_state: torch.Tensor, chunk_size=None):
    """path_{T-1} = last_state, path_{t-1} = pointers[t-1][path_t], as (B, T) int64.

    The chain of look-ups is a composition of maps S -> S, so it runs chunk-parallel like the
    scans: compose each chunk's maps, walk the chunk boundaries, then fill the chunks.
    """
    batch, n_links, n_states = pointers.shape
    n_steps = n_links + 1
    reversed_pointers = pointers.flip(1)  # link k maps path_{T-1-k} to path_{T-2-k}
    if chunk_size is None:
        chunk_size = default_chunk_size(n_steps)
    chunk_size = max(1, min(chunk_size, n_links))
    n_chunks = max(1, -(-n_links // chunk_size))
    padded = n_chunks * chunk_size
    identity = torch.arange(n_states, device=pointers.device).expand(batch, padded, n_states)
    links = identity.clone()
    links[:, :n_links] = reversed_pointers
    links = links.view(batch, n_chunks, chunk_size, n_states)
    # 1. each chunk's composed map (apply link 0 first)
    composed = links[:, :, 0]
    for offset in range(1, chunk_size):
        composed = torch.gather(links[:, :, offset], 2, composed)
    # 2. the state entering each chunk
    entering = [last_state]
    for chunk in range(n_chunks - 1):
        entering.append(composed[:, chunk].gather(1, entering[-1].unsqueeze(1)).squeeze(1))
    state = torch.stack(entering, dim=1)  # (B, C)
    # 3. every state inside the chunks
    states = []
    for offset in range(chunk_size):
        state = links[:, :, offset].gather(2, state.unsqueeze(-1)).squeeze(-1)
        states.append(state)
    inside = torch.stack(states, dim=2).reshape(batch, padded)[:, :n_links]
    reversed_path = torch.cat([last_state.unsqueeze(1), inside], dim=1)
    return reversed_path.flip(1)
