"""BrierLM: a likelihood-free yardstick for language models (Shao et al., "Continuous
Autoregressive Language Models", 2025).

Definition. A scored position t of a document d (token ids d[0], d[1], ...) has the context
c = d[t - L : t] of exactly L = `context_length` tokens and the truth y = d[t : t + n]. Under
the model's distribution p(. | c) over continuations of n tokens,

    Brier-n(t) = 2 p(y | c) - sum_x p(x | c)^2        (x over all V^n n-grams)
               = 1 - sum_x (p(x | c) - 1{x = y})^2     (one minus the Brier score)

which is 1 for a model certain of the truth, 1 / V^n for the uniform model, and -1 for a
model certain of something else: higher is better. Brier-n is the mean of Brier-n(t) over the
scored positions of the held-out documents, and

    BrierLM = 100 * (Brier-1 * Brier-2 * ... * Brier-N) ** (1 / N),   N = n_max (default 4).

The geometric mean is undefined when some Brier-n <= 0 (a model that bad is worse than the
uniform one at that n); BrierLM is then 0, its floor (the reference code clamps the product
of the Brier-n at 0).
The Brier-n themselves are reported unclamped. The score moves with the context length, so
quote L with it: two models are comparable only at the same L, positions and documents.

Positions. t is a candidate when it has L tokens before it, n_max tokens from it on
(t + n_max <= len(d)) and the context starts at a multiple of `align` (t - L = 0, align,
2 align, ...; models that predict chunks of K tokens need align = K). Every n is averaged over
the same positions, so a document needs at least L + n_max tokens: shorter documents are
skipped, and having none long enough is an error. All candidates are scored unless
`positions_per_document` (drawn per document) or `max_positions` (drawn over all documents)
asks for fewer; the draws are uniform without replacement, seeded by `random_state`, and the
chosen positions are scored in document order.

Estimators (both unbiased for every Brier-n(t); one draw of n_max tokens serves every n
through its prefixes, since a prefix of a draw from p is a draw from p's marginal):
- "samples", for models that can only sample: draw m = 2 * `samples` independent
  continuations x^1..x^m and take (2/m) sum_i 1{x^i = y} - mean_{i<j} 1{x^i = x^j}; with
  samples = 1 this is 1{x^1 = y} + 1{x^2 = y} - 1{x^1 = x^2}, the paper's estimator.
- "probabilities", for models that also give log p(x | c): the accuracy term 2 p(y | c) is
  exact, and the collision term sum_x p(x | c)^2 = E_{x ~ p}[p(x | c)] is the mean of p(x^s | c)
  over `samples` draws x^s ~ p, computed exactly. Its per-position standard deviation is at
  most 1/2 where the samples estimator's is up to 3/2, so it needs far fewer positions.

Interface. A model is scored through a `Predictor` (`sample`), or a `ProbabilisticPredictor`
(`sample` and `log_prob`); `LogitsPredictor` adapts any network that maps ids to next-token
logits. `brier_scores` returns every Brier-n and BrierLM, `brier_lm` BrierLM alone. The
evaluation runs in batches under torch.no_grad(), on the predictor's device, in the dtype of
the log-probabilities it returns.

The CALM reference code (github.com/shaochenze/calm, `train/train_ar.py` and `eval_brier` in
`models/modeling_calm.py`) concatenates the validation documents, cuts them into chunks of
`block_size` tokens (2048 for its Transformer) and scores every position of a chunk (every
K-th for CALM) with the whole chunk before it as context, so contexts cross document
boundaries and grow from 1 token to the chunk length; its Transformer's collision term
multiplies a sampled prefix collision by the exact last-token collision sum_v p(v | ...)^2.
Here the context has a fixed length inside one document, so scores of models with different
context windows are comparable; numbers are not comparable with the paper's.

Shapes: B positions in a batch, L context_length, n tokens of a continuation (<= n_max),
S samples, m = 2 S draws, V vocabulary size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Protocol

import numpy as np
import torch
from torch import nn

from cerebrum._util.validation import check_positive_int


class Predictor(Protocol):
    """What BrierLM needs from a model: draws of continuations.

    Rows are independent: row b of a call is a draw from p(. | contexts[b]) and draws of
    different rows (also of rows with equal contexts) are independent given the contexts.
    A `ProbabilisticPredictor` also gives log-probabilities; a predictor may further offer
    `prefix_log_probs(contexts, continuations) -> (B, n)`, the log-probabilities of every
    prefix continuations[:, :k] (k = 1..n), which replaces n calls to `log_prob`.
    """

    def sample(self, contexts: torch.LongTensor, n: int,
               generator: torch.Generator | None) -> torch.LongTensor:
        """contexts (B, L) -> continuations (B, n) drawn from the model, using `generator`."""
        ...


class ProbabilisticPredictor(Predictor, Protocol):
    """A `Predictor` that also gives the probability of a given continuation."""

    def log_prob(self, contexts: torch.LongTensor,
                 continuations: torch.LongTensor) -> torch.Tensor:
        """contexts (B, L), continuations (B, n) -> (B,) natural-log probability of the whole
        continuation given its context, for any n from 1 to n_max."""
        ...


class LogitsPredictor:
    """A `ProbabilisticPredictor` for any network mapping ids (B, T) to next-token logits
    (B, T, V), where logits[:, j] scores the token after ids[:, j].

    `logits_fn` may return a tuple whose first element is the logits (GPT's forward returns
    (logits, loss)), so `LogitsPredictor(model)` works for GPT. Put the network in eval mode
    first (dropout would make the draws and the probabilities disagree). The distribution is
    softmax(logits / temperature), for the draws and the probabilities alike. `sample` runs n
    forward passes on the growing ids (n is small, so no key/value cache); `log_prob` and
    `prefix_log_probs` one teacher-forced pass. Softmax runs in at least float32.

    `device` is where the ids go; by default the device of the network's first parameter or
    buffer when `logits_fn` is an nn.Module or one's bound method, else the CPU.
    """

    def __init__(self, logits_fn: Callable[[torch.LongTensor], torch.Tensor], *,
                 temperature: float = 1.0, device: torch.device | str | None = None):
        if not callable(logits_fn):
            raise TypeError(f"logits_fn must be callable (ids (B, T) -> logits (B, T, V)), "
                            f"got {type(logits_fn).__name__}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a real number, got "
                            f"{type(temperature).__name__} {temperature!r}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.logits_fn = logits_fn
        self.temperature = float(temperature)
        self._device = None if device is None else torch.device(device)

    @property
    def device(self) -> torch.device:
        """Where contexts should live (see the class docstring)."""
        if self._device is not None:
            return self._device
        device = _module_device(self.logits_fn)
        return torch.device("cpu") if device is None else device

    @torch.no_grad()
    def sample(self, contexts: torch.LongTensor, n: int,
               generator: torch.Generator | None = None) -> torch.LongTensor:
        """contexts (B, L) -> (B, n) drawn token by token from softmax(logits / temperature)."""
        ids = contexts
        for _ in range(n):
            log_probs = self._log_softmax(self._logits(ids)[:, -1])
            token = torch.multinomial(log_probs.exp(), 1, generator=generator)
            ids = torch.cat([ids, token], 1)
        return ids[:, contexts.shape[1]:]

    def prefix_log_probs(self, contexts: torch.LongTensor,
                         continuations: torch.LongTensor) -> torch.Tensor:
        """contexts (B, L), continuations (B, n) -> (B, n): entry k - 1 is the log-probability
        of continuations[:, :k] given the context."""
        L = contexts.shape[1]
        ids = torch.cat([contexts, continuations[:, :-1]], 1)
        # logits at position L - 1 + j predict continuations[:, j]
        log_probs = self._log_softmax(self._logits(ids)[:, L - 1:])
        chosen = log_probs.gather(-1, continuations.unsqueeze(-1)).squeeze(-1)
        return chosen.cumsum(-1)

    def log_prob(self, contexts: torch.LongTensor,
                 continuations: torch.LongTensor) -> torch.Tensor:
        """contexts (B, L), continuations (B, n) -> (B,) log-probability of the continuation."""
        return self.prefix_log_probs(contexts, continuations)[:, -1]

    def _logits(self, ids: torch.LongTensor) -> torch.Tensor:
        out = self.logits_fn(ids)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 \
                or logits.shape[:2] != ids.shape:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"logits_fn must map ids {tuple(ids.shape)} to logits "
                             f"{(*ids.shape, 'V')}, got {shape}")
        return logits

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        # low-precision logits (bf16) lose the small probabilities the collision term sums
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return torch.log_softmax(logits.to(dtype) / self.temperature, -1)


def _module_device(fn) -> torch.device | None:
    """The device of the first parameter or buffer of `fn` (a module or a bound method of
    one), None when it has none."""
    module = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if isinstance(module, nn.Module):
        for tensor in chain(module.parameters(), module.buffers()):
            return tensor.device
    return None


@torch.no_grad()
def brier_scores(predictor: Predictor, documents: Sequence[Sequence[int]], *,
                 context_length: int, n_max: int = 4,
                 positions_per_document: int | None = None, max_positions: int | None = None,
                 align: int = 1, batch_size: int = 32, samples: int = 1,
                 random_state: int = 0, use_probabilities: bool | None = None,
                 device: torch.device | str | None = None) -> dict:
    """Brier-1..Brier-n_max and BrierLM of `predictor` on `documents` (token-id sequences,
    e.g. [bos, *ids]); see the module docstring for the definition, positions and estimators.

    Returns {"brier_1": float, ..., "brier_{n_max}": float, "brier_lm": float,
    "positions": number of scored positions, "estimator": "probabilities" | "samples"}.

    `batch_size` positions go to the predictor at once (as batch_size * samples rows, twice
    that on the samples path). `use_probabilities` None picks the exact-accuracy path when the
    predictor has `log_prob`. `device` (default: the predictor's `device` attribute, else the
    CPU) is where contexts and the random generator live. The same arguments give the same
    result; another batch_size draws other samples.
    """
    _check_predictor(predictor)
    context_length = check_positive_int(context_length, name="context_length")
    n_max = check_positive_int(n_max, name="n_max")
    align = check_positive_int(align, name="align")
    batch_size = check_positive_int(batch_size, name="batch_size")
    samples = check_positive_int(samples, name="samples")
    random_state = check_positive_int(random_state, name="random_state", minimum=0)
    if positions_per_document is not None:
        positions_per_document = check_positive_int(positions_per_document,
                                                    name="positions_per_document")
    if max_positions is not None:
        max_positions = check_positive_int(max_positions, name="max_positions")
    estimator = _choose_estimator(predictor, use_probabilities)
    docs = _as_documents(documents)
    doc_index, starts = _choose_positions(
        docs, context_length=context_length, n_max=n_max, align=align,
        positions_per_document=positions_per_document, max_positions=max_positions,
        rng=np.random.default_rng(random_state))
    if device is None:
        device = getattr(predictor, "device", None)
        device = "cpu" if device is None else device
    generator = torch.Generator(device=device)
    generator.manual_seed(random_state)

    brier_sums = None  # (n_max,) per-n sums of the per-position estimates, on the device
    for begin in range(0, len(starts), batch_size):
        contexts, targets = _gather_windows(
            docs, doc_index[begin:begin + batch_size], starts[begin:begin + batch_size],
            context_length=context_length, n_max=n_max, device=device)
        if estimator == "probabilities":
            batch = _probabilities_estimates(predictor, contexts, targets, samples, generator)
        else:
            batch = _samples_estimates(predictor, contexts, targets, samples, generator)
        brier_sums = batch.sum(0) if brier_sums is None else brier_sums + batch.sum(0)

    n_positions = len(starts)
    means = [total / n_positions for total in brier_sums.tolist()]
    result = {f"brier_{n}": mean for n, mean in enumerate(means, 1)}
    result.update(brier_lm=_geometric_brier_lm(means), positions=n_positions,
                  estimator=estimator)
    return result


def brier_lm(predictor: Predictor, documents: Sequence[Sequence[int]], *,
             context_length: int, n_max: int = 4, positions_per_document: int | None = None,
             max_positions: int | None = None, align: int = 1, batch_size: int = 32,
             samples: int = 1, random_state: int = 0, use_probabilities: bool | None = None,
             device: torch.device | str | None = None) -> float:
    """BrierLM (100 * geometric mean of Brier-1..Brier-n_max, 0 when one is <= 0) of
    `predictor` on `documents`; the arguments are those of `brier_scores`."""
    return brier_scores(
        predictor, documents, context_length=context_length, n_max=n_max,
        positions_per_document=positions_per_document, max_positions=max_positions,
        align=align, batch_size=batch_size, samples=samples, random_state=random_state,
        use_probabilities=use_probabilities, device=device)["brier_lm"]


def _check_predictor(predictor) -> None:
    if not callable(getattr(predictor, "sample", None)):
        raise TypeError(f"predictor must have a sample(contexts, n, generator) method, "
                        f"got {type(predictor).__name__} without one")


def _choose_estimator(predictor, use_probabilities: bool | None) -> str:
    has_log_prob = callable(getattr(predictor, "log_prob", None))
    if use_probabilities is None:
        return "probabilities" if has_log_prob else "samples"
    if not isinstance(use_probabilities, bool):
        raise TypeError(f"use_probabilities must be None, True or False, got "
                        f"{use_probabilities!r}")
    if use_probabilities and not has_log_prob:
        raise TypeError(f"use_probabilities=True needs a predictor with a "
                        f"log_prob(contexts, continuations) method; "
                        f"{type(predictor).__name__} has none")
    return "probabilities" if use_probabilities else "samples"


def _as_documents(documents) -> list[np.ndarray]:
    """`documents` (lists, arrays or 1-D tensors of token ids, or a 2-D array or tensor of
    equal-length ones) as a list of 1-D int64 arrays of non-negative token ids."""
    if isinstance(documents, (str, bytes)) or not hasattr(documents, "__iter__"):
        raise TypeError(f"documents must be a sequence of token-id sequences, got "
                        f"{type(documents).__name__}")
    documents = list(documents)
    if len(documents) == 0:
        raise ValueError("documents is empty: expected at least one token-id sequence")
    return [_as_document(doc, i) for i, doc in enumerate(documents)]


def _as_document(doc, index: int) -> np.ndarray:
    name = f"documents[{index}]"
    if isinstance(doc, torch.Tensor):
        doc = doc.tolist()
    if isinstance(doc, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(doc).__name__} "
                        f"(tokenize it first)")
    try:
        array = np.asarray(doc)
    except ValueError as err:  # ragged nesting
        raise ValueError(f"{name} must be a flat sequence of token ids") from err
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of token ids, got shape "
                         f"{array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == bool or array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{name} holds a negative token id ({array.min()})")
    return array.astype(np.int64, copy=False)


def _choose_positions(docs: list[np.ndarray], *, context_length: int, n_max: int, align: int,
                      positions_per_document: int | None, max_positions: int | None,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(document index, t) of the scored positions, in document order (see the module
    docstring)."""
    doc_index, starts = [], []
    for i, doc in enumerate(docs):
        candidates = np.arange(context_length, len(doc) - n_max + 1, align)
        if positions_per_document is not None and len(candidates) > positions_per_document:
            candidates = np.sort(rng.choice(candidates, positions_per_document, replace=False))
        doc_index.append(np.full(len(candidates), i))
        starts.append(candidates)
    doc_index, starts = np.concatenate(doc_index), np.concatenate(starts)
    if len(starts) == 0:
        longest = max(len(doc) for doc in docs)
        raise ValueError(
            f"documents have no scorable position: a document needs at least context_length "
            f"+ n_max = {context_length} + {n_max} = {context_length + n_max} tokens, and the "
            f"longest of the {len(docs)} has {longest}")
    if max_positions is not None and len(starts) > max_positions:
        keep = np.sort(rng.choice(len(starts), max_positions, replace=False))
        doc_index, starts = doc_index[keep], starts[keep]
    return doc_index, starts


def _gather_windows(docs, doc_index, starts, *, context_length: int, n_max: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts (B, L) and true continuations (B, n_max) of the positions, on `device`."""
    windows = np.stack([docs[i][t - context_length:t + n_max]
                        for i, t in zip(doc_index, starts, strict=True)])
    windows = torch.as_tensor(windows, device=device)  # one host-to-device copy per batch
    return windows[:, :context_length], windows[:, context_length:]


def _draw(predictor, contexts: torch.Tensor, copies: int, n: int,
          generator: torch.Generator) -> torch.Tensor:
    """`copies` independent continuations per context: (copies, B, n)."""
    rows = contexts.repeat(copies, 1)
    draws = predictor.sample(rows, n, generator)
    if not isinstance(draws, torch.Tensor) or draws.shape != (rows.shape[0], n) \
            or draws.is_floating_point() or draws.is_complex() or draws.dtype == torch.bool:
        got = (f"{draws.dtype} tensor of shape {tuple(draws.shape)}"
               if isinstance(draws, torch.Tensor) else type(draws).__name__)
        raise ValueError(f"predictor.sample(contexts {tuple(rows.shape)}, n={n}) must return "
                         f"integer token ids of shape {(rows.shape[0], n)}, got {got}")
    return draws.reshape(copies, contexts.shape[0], n)


def _prefix_log_probs(predictor, contexts: torch.Tensor,
                      continuations: torch.Tensor) -> torch.Tensor:
    """(B, n): log p(continuations[:, :k] | contexts) for k = 1..n, from the predictor's
    `prefix_log_probs` when it has one, else from n calls to its `log_prob`."""
    B, n = continuations.shape
    if callable(getattr(predictor, "prefix_log_probs", None)):
        result = predictor.prefix_log_probs(contexts, continuations)
        _check_log_probs(result, (B, n), "prefix_log_probs")
        return result
    columns = []
    for k in range(1, n + 1):
        column = predictor.log_prob(contexts, continuations[:, :k])
        _check_log_probs(column, (B,), "log_prob")
        columns.append(column)
    return torch.stack(columns, 1)


def _check_log_probs(value, shape: tuple, method: str) -> None:
    if not isinstance(value, torch.Tensor) or value.shape != shape \
            or not value.is_floating_point():
        got = (f"{value.dtype} tensor of shape {tuple(value.shape)}"
               if isinstance(value, torch.Tensor) else type(value).__name__)
        raise ValueError(f"predictor.{method} must return floating log-probabilities of "
                         f"shape {shape}, got {got}")


def _probabilities_estimates(predictor, contexts, targets, samples: int,
                             generator) -> torch.Tensor:
    """(B, n_max) estimates 2 p(y) - mean_s p(x^s) with x^s drawn from the predictor."""
    B, n_max = targets.shape
    truth = _prefix_log_probs(predictor, contexts, targets).exp()
    draws = _draw(predictor, contexts, samples, n_max, generator)
    # p of each drawn prefix, with its context repeated to match the draw's row
    drawn = _prefix_log_probs(predictor, contexts.repeat(samples, 1),
                              draws.reshape(samples * B, n_max)).exp()
    return 2 * truth - drawn.reshape(samples, B, n_max).mean(0)


def _samples_estimates(predictor, contexts, targets, samples: int,
                       generator) -> torch.Tensor:
    """(B, n_max) estimates (2/m) sum_i 1{x^i = y} - mean_{i<j} 1{x^i = x^j} over m = 2 S
    draws; prefix k of a draw equals y (or another draw) when its first k tokens all do."""
    m = 2 * samples
    draws = _draw(predictor, contexts, m, targets.shape[1], generator)  # (m, B, n)
    targets = targets.to(draws.device)
    hits = _prefix_matches(draws == targets)  # (m, B, n)
    first, second = torch.triu_indices(m, m, 1, device=draws.device)
    collisions = _prefix_matches(draws[first] == draws[second])  # (m (m - 1) / 2, B, n)
    # float32 at least: the estimates are fractions with small denominators
    dtype = torch.promote_types(torch.get_default_dtype(), torch.float32)
    return (2 * hits.to(dtype).mean(0)) - collisions.to(dtype).mean(0)


def _prefix_matches(equal: torch.Tensor) -> torch.Tensor:
    """(..., n) token-wise equality -> (..., n) equality of the prefixes of 1..n tokens."""
    return equal.to(torch.int32).cumprod(-1)


def _geometric_brier_lm(means: list[float]) -> float:
    """100 * geometric mean of the Brier-n means; 0 when one is <= 0 (the mean is undefined
    there, and 0 is BrierLM's floor)."""
    if min(means) <= 0:
        return 0.0
    return 100.0 * math.exp(sum(math.log(mean) for mean in means) / len(means))
