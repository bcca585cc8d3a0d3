"""Compiled CPU recursions for HiddenMarkov: forward-backward, the forward pass and Viterbi.

The per-step recursions of an HMM are S x S work: far below the cost of launching a PyTorch
kernel (5-10 us each on CPU). For CPU tensors that need no gradient, these loops are therefore
compiled with numba (the way hmmlearn compiles its own with pybind11): one pass over the frames,
sequences in parallel. Everything else (CUDA, autograd, numba missing) runs the chunk-parallel
PyTorch code of `hmm_inference`, which gives the same results.

Layout: the frames of all sequences laid end to end, state-major as HiddenMarkov keeps them:
log_b (S, N); sequence b owns the frames offsets[b] <= n < offsets[b + 1]. No padding.

Numerics: Rabiner's scaling (each forward vector normalised to sum 1, each step's emissions
divided by their largest value), accumulated in float64 whatever the input dtype. A step whose
normaliser falls below `underflow_threshold` (or is not finite) marks its sequence as not done;
the caller then recomputes the batch with the PyTorch path, which has an exact log-space
fallback. Results are returned in the input dtype.

Compilation: the kernels compile on first use, once per dtype of log_b (float32, float64),
which takes seconds; numba caches the machine code on disk (`cache=True`), so later processes
load it instead. `warm_up()` pays that cost up front, and `cache_dir()` says where the cache is
(docs/hidden-markov.md, "Compiled kernels and their cache").
"""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import numpy as np
import torch

try:  # numba is a dependency, but a platform without a wheel still gets the PyTorch path
    import numba
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    numba = None

#: Set CEREBRUM_COMPILED_HMM=0 to force the PyTorch path (tests compare the two).
ENABLED = numba is not None and os.environ.get("CEREBRUM_COMPILED_HMM", "1") != "0"

# float64 normalisers below this may have lost terms to underflow: S**2 * tiny / eps for S = 64
# states (the check is about accuracy, a fixed bound is simpler and stricter for smaller S).
_THRESHOLD = 64**2 * np.finfo(np.float64).tiny / np.finfo(np.float64).eps


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled path applies: numba present, CPU tensors, no gradient wanted,
    float32 or float64."""
    return ENABLED and all(
        t.device.type == "cpu" and not t.requires_grad and t.dtype in (torch.float32,
                                                                          torch.float64)
        for t in tensors
    )


def _offsets(lengths: torch.Tensor) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths.cpu().numpy(), out=offsets[1:])
    return offsets


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


# --------------------------------------------------------------------------- kernels

if numba is not None:

    def _compiler(**options):
        """njit with numba's on-disk cache. numba picks the cache directory when a function is
        decorated (NUMBA_CACHE_DIR, else __pycache__ beside this file, else its user-wide cache
        directory, the first that is writable) and raises when none is: then compile in every
        process rather than fail to import."""
        def decorate(func):
            try:
                return numba.njit(cache=True, nogil=True, fastmath=False, **options)(func)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                return numba.njit(cache=False, nogil=True, fastmath=False, **options)(func)
        return decorate

    _jit = _compiler()
    _pjit = _compiler(parallel=True)

    @_jit
    def _scaled_forward(start, trans, log_b, first, last, alpha, emit, scales):
        """Forward pass of one sequence over frames first..last-1. Writes the normalised alpha
        and the scaled emissions (when the arrays have columns) and the normalisers; returns
        (log-likelihood, ok)."""
        n_states = start.shape[0]
        keep = alpha.shape[1] > 0
        prev = np.empty(n_states)
        cur = np.empty(n_states)
        e = np.empty(n_states)
        log_lik = 0.0
        for n in range(first, last):
            peak = -np.inf
            for j in range(n_states):
                if log_b[j, n] > peak:
                    peak = log_b[j, n]
            if not np.isfinite(peak):
                return log_lik, False
            for j in range(n_states):
                e[j] = math.exp(log_b[j, n] - peak)
            total = 0.0
            for j in range(n_states):
                if n == first:
                    p = start[j]
                else:
                    p = 0.0
                    for i in range(n_states):
                        p += prev[i] * trans[i, j]
                cur[j] = p * e[j]
                total += cur[j]
            if not (total > _THRESHOLD) or not np.isfinite(total):
                return log_lik, False
            log_lik += math.log(total) + peak
            for j in range(n_states):
                prev[j] = cur[j] / total
            if keep:
                scales[n] = total
                for j in range(n_states):
                    alpha[j, n] = prev[j]
                    emit[j, n] = e[j]
        return log_lik, True

    @_pjit
    def _log_likelihood_kernel(start, trans, log_b, offsets):
        n_seq = offsets.shape[0] - 1
        log_lik = np.empty(n_seq)
        ok = np.empty(n_seq, dtype=np.bool_)
        no_alpha = np.empty((0, 0), dtype=log_b.dtype)
        no_scales = np.empty(0)
        for b in numba.prange(n_seq):
            log_lik[b], ok[b] = _scaled_forward(
                start, trans, log_b, offsets[b], offsets[b + 1], no_alpha, no_alpha, no_scales
            )
        return log_lik, ok

    @_pjit
    def _forward_backward_kernel(start, trans, log_b, offsets):
        """gamma (S, N) in log_b's dtype, transition counts (S, S), log-likelihoods (B,), ok (B,).
        gamma holds alpha until the backward pass turns it into posteriors in place."""
        n_states, n_frames = log_b.shape
        n_seq = offsets.shape[0] - 1
        gamma = np.zeros((n_states, n_frames), dtype=log_b.dtype)
        emit = np.empty((n_states, n_frames), dtype=log_b.dtype)
        scales = np.empty(n_frames)
        counts = np.zeros((n_seq, n_states, n_states))
        log_lik = np.empty(n_seq)
        ok = np.empty(n_seq, dtype=np.bool_)
        for b in numba.prange(n_seq):
            first, last = offsets[b], offsets[b + 1]
            log_lik[b], ok[b] = _scaled_forward(
                start, trans, log_b, first, last, gamma, emit, scales
            )
            if not ok[b]:
                continue
            beta = np.ones(n_states)
            weight = np.empty(n_states)
            for n in range(last - 1, first - 1, -1):
                total = 0.0
                for j in range(n_states):
                    total += gamma[j, n] * beta[j]
                if not (total > _THRESHOLD) or not np.isfinite(total):
                    ok[b] = False
                    break
                for j in range(n_states):
                    gamma[j, n] = gamma[j, n] * beta[j] / total
                if n == first:
                    break
                # xi_{n-1,n}(i, j) = alpha_{n-1}(i) A(i, j) e_n(j) beta_n(j) / c_n
                for j in range(n_states):
                    weight[j] = emit[j, n] * beta[j] / scales[n]
                for i in range(n_states):
                    a = gamma[i, n - 1]
                    back = 0.0
                    for j in range(n_states):
                        term = trans[i, j] * weight[j]
                        counts[b, i, j] += a * term
                        back += term
                    beta[i] = back
        return gamma, counts.sum(axis=0), log_lik, ok

    @_pjit
    def _viterbi_kernel(log_start, log_trans, log_b, offsets):
        """Best paths (N,) int64 and their log-probabilities (B,); ties go to the lowest state,
        as with torch.argmax."""
        n_states, n_frames = log_b.shape
        n_seq = offsets.shape[0] - 1
        paths = np.empty(n_frames, dtype=np.int64)
        pointers = np.empty((n_frames, n_states), dtype=np.int32)
        best = np.empty(n_seq)
        for b in numba.prange(n_seq):
            first, last = offsets[b], offsets[b + 1]
            delta = np.empty(n_states)
            nxt = np.empty(n_states)
            for j in range(n_states):
                delta[j] = log_start[j] + log_b[j, first]
            for n in range(first + 1, last):
                for j in range(n_states):
                    top = delta[0] + log_trans[0, j]
                    arg = 0
                    for i in range(1, n_states):
                        value = delta[i] + log_trans[i, j]
                        if value > top:
                            top = value
                            arg = i
                    nxt[j] = top + log_b[j, n]
                    pointers[n, j] = arg
                for j in range(n_states):
                    delta[j] = nxt[j]
            state = 0
            for j in range(1, n_states):
                if delta[j] > delta[state]:
                    state = j
            best[b] = delta[state]
            for n in range(last - 1, first - 1, -1):
                paths[n] = state
                if n > first:
                    state = pointers[n, state]
        return paths, best


# --------------------------------------------------------------------------- torch front ends


def log_likelihood(log_start, log_trans, log_b, lengths):
    """log p(x) per sequence (B,) and a (B,) bool tensor `ok` (False: recompute elsewhere),
    from state-major log_b (S, N)."""
    log_lik, ok = _log_likelihood_kernel(
        _numpy(log_start.exp().double()), _numpy(log_trans.exp().double()), _numpy(log_b),
        _offsets(lengths),
    )
    return torch.from_numpy(log_lik).to(log_b.dtype), torch.from_numpy(ok)


def forward_backward(log_start, log_trans, log_b, lengths):
    """(posteriors (S, N), expected transition counts (S, S), log-likelihoods (B,), ok (B,))."""
    gamma, counts, log_lik, ok = _forward_backward_kernel(
        _numpy(log_start.exp().double()), _numpy(log_trans.exp().double()), _numpy(log_b),
        _offsets(lengths),
    )
    dtype = log_b.dtype
    return (torch.from_numpy(gamma), torch.from_numpy(counts).to(dtype),
            torch.from_numpy(log_lik).to(dtype), torch.from_numpy(ok))


def viterbi(log_start, log_trans, log_b, lengths):
    """(best paths (N,) int64, their log-probabilities (B,)) from state-major log_b (S, N)."""
    paths, best = _viterbi_kernel(
        _numpy(log_start.double()), _numpy(log_trans.double()), _numpy(log_b),
        _offsets(lengths),
    )
    return torch.from_numpy(paths), torch.from_numpy(best).to(log_b.dtype)


# --------------------------------------------------------------------------- compilation


#: The dtypes of log_b the front ends accept (`usable`); each compiles its own specialisation.
DTYPES = (torch.float32, torch.float64)


class WarmUp(NamedTuple):
    """What `warm_up` did: seconds taken, specialisations compiled and loaded from numba's
    cache, and the cache directory (None: no compiled path, or no writable cache directory)."""

    seconds: float
    compiled: int
    loaded: int
    cache_dir: str | None


def kernels() -> tuple:
    """The numba dispatchers the front ends call (`_scaled_forward` is linked into them);
    empty without the compiled path."""
    if not ENABLED:
        return ()
    return (_log_likelihood_kernel, _forward_backward_kernel, _viterbi_kernel)


def cache_dir() -> str | None:
    """The directory numba caches the compiled kernels in, as chosen when this module was
    imported; None when the compiled path is off or numba found no writable directory."""
    return _forward_backward_kernel.stats.cache_path if ENABLED else None


def warm_up(dtypes=DTYPES) -> WarmUp:
    """Compile, or load from numba's cache, every kernel specialisation that fitting, scoring
    and decoding use for log_b of these dtypes, by running the front ends on a tiny problem
    (so the argument types are exactly a real call's). A no-op without the compiled path, and
    cheap once done in this process; afterwards a first fit pays no compilation."""
    if not ENABLED:
        return WarmUp(0.0, 0, 0, None)

    def counts():  # numba counts a miss for each compilation, cached or not
        stats = [kernel.stats for kernel in kernels()]
        return (sum(sum(s.cache_misses.values()) for s in stats),
                sum(sum(s.cache_hits.values()) for s in stats))

    misses, hits = counts()
    start = time.perf_counter()
    lengths = torch.tensor([2, 1])
    for dtype in dtypes:
        log_start = torch.log(torch.tensor([0.6, 0.4], dtype=dtype))
        log_trans = torch.log(torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=dtype))
        log_b = -torch.arange(6, dtype=dtype).reshape(2, 3)
        forward_backward(log_start, log_trans, log_b, lengths)
        log_likelihood(log_start, log_trans, log_b, lengths)
        viterbi(log_start, log_trans, log_b, lengths)
    seconds = time.perf_counter() - start
    new_misses, new_hits = counts()
    return WarmUp(seconds, new_misses - misses, new_hits - hits, cache_dir())
