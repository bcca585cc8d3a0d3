"""One fit loop for every classical model: restarts, keep-the-best, EM through hooks, Adam, and
the convergence monitor (after scikit-learn's `mixture/_base.py` and hmmlearn's
`ConvergenceMonitor`).

A model describes its EM by subclassing `EMHooks`:

    initialise(generator)            -> params      a starting point (one per restart)
    statistics(params, final=...)    -> stats       the E step: summed sufficient statistics
    log_likelihood(stats)            -> float       the figure the monitor tracks
    m_step(params, stats)            -> params      maximum-likelihood update from the statistics

Statistics are summable: they offer `map_sums(fn)`, which returns a copy whose additive tensors
went through `fn(list of tensors) -> list of tensors`. `run_em` passes every iteration's
statistics through one `reduce` function before the log-likelihood and the M step: none in one
process, an all-reduce (sum) across ranks in a distributed fit (`distributed.py`). That
is the only place a distributed EM differs from a single-process one.

`fit_with_restarts` runs a fit `n_init` times, keeps the result with the best final figure and
warns once when it did not converge. The fitted summary every classical model carries is the same:
`converged_`, `n_iter_`, `lower_bound_` (the final figure) and `lower_bounds_` (one per
iteration), set by `record_fit`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from cerebrum.exceptions import ConvergenceWarning

P = TypeVar("P")  # a model's parameters in fitting form
S = TypeVar("S")  # its summed sufficient statistics


@dataclass
class FitResult(Generic[P]):
    """The outcome of one run: final parameters, whether the monitor saw convergence, the
    number of iterations (or epochs) taken and the monitored figure of each one."""

    params: P
    converged: bool
    n_iter: int
    lower_bounds: list[float] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        """The last monitored figure (-inf for a run that recorded none)."""
        return self.lower_bounds[-1] if self.lower_bounds else -math.inf


class ConvergenceMonitor:
    """Records the figure a fit maximises, one value per iteration, and says when it has settled.

    A fit has converged when the figure changed by less than `tol` in absolute value since the
    previous iteration (|change| rather than hmmlearn's signed change: a rounding-level dip must
    not stop a tol=0 run early; a real drop is reported by `warn_if_decreasing`).
    """

    def __init__(self, tol: float):
        self.tol = tol
        self.history: list[float] = []

    def converging(self, value: float) -> bool:
        """Whether `value` is within `tol` of the last recorded figure (False for the first)."""
        return bool(self.history) and abs(value - self.history[-1]) < self.tol

    def record(self, value: float) -> None:
        self.history.append(value)

    def warn_if_decreasing(self, value: float, slack: float | None, stacklevel: int) -> None:
        """EM never lowers the likelihood: warn when `value` falls below the last figure by more
        than `slack` (the known rounding of the E step; None: the model does not ask)."""
        if slack is None or not self.history or value >= self.history[-1] - slack:
            return
        warnings.warn(
            f"EM lowered the log-likelihood from {self.history[-1]:.8g} to {value:.8g}; the "
            "model may be degenerate (increase reg_covar) or need float64",
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )


class EMHooks(Generic[P, S]):
    """What one model contributes to `run_em`. Subclasses implement the four abstract hooks;
    the two optional ones default to "nothing to refine" and "no decrease check"."""

    def initialise(self, generator: torch.Generator) -> P:
        """Starting parameters for one restart, drawn with `generator`."""
        raise NotImplementedError

    def statistics(self, params: P, *, final: bool) -> S:
        """The E step: sufficient statistics of this process's data under `params`.

        `final` is True where the M step that follows may decide the returned parameters (the
        last allowed iteration, or a re-run once the monitor saw convergence): a model with a
        faster, less accurate form of its statistics must use the accurate one there.
        """
        raise NotImplementedError

    def log_likelihood(self, stats: S) -> float:
        """The monitored figure from (reduced) statistics."""
        raise NotImplementedError

    def m_step(self, params: P, stats: S) -> P:
        """New parameters from (reduced) statistics; `params` are those of the E step."""
        raise NotImplementedError

    def refines_final_step(self, params: P) -> bool:
        """Whether `statistics(params, final=True)` is more accurate than with final=False, so
        that a converging iteration is worth one more, accurate, E step."""
        return False

    def decrease_slack(self, params: P, value: float, *, final: bool) -> float | None:
        """How far `value` may fall below the previous figure through rounding before a
        ConvergenceWarning; None (the default) skips the check (a model whose re-seeding of
        dead components may lower the likelihood on purpose)."""
        return None


def run_em(
    hooks: EMHooks[P, S],
    params: P,
    *,
    max_iter: int,
    tol: float,
    reduce: Callable[[S], S] | None = None,
    progress=None,
    stacklevel: int = 1,
) -> FitResult[P]:
    """EM from `params` until the monitored figure changes by less than `tol`, at most
    `max_iter` iterations.

    As in scikit-learn and hmmlearn, the figure of an iteration is the one computed in its E
    step, i.e. of the parameters before that iteration's M step. `reduce` combines the
    statistics of all processes (see the module docstring). `stacklevel` counts the frames
    from the user's call to this one, for the decrease warning.
    """
    monitor = ConvergenceMonitor(tol)
    with torch.inference_mode():  # no autograd bookkeeping: about 5% faster on CPU
        for n_iter in range(1, max_iter + 1):
            last = n_iter == max_iter
            stats = _reduced(reduce, hooks.statistics(params, final=last))
            value = hooks.log_likelihood(stats)
            converging = monitor.converging(value)
            if converging and not last and hooks.refines_final_step(params):
                # This M step decides the returned parameters: take it from accurate statistics.
                stats = _reduced(reduce, hooks.statistics(params, final=True))
                value = hooks.log_likelihood(stats)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"EM produced a non-finite log-likelihood at iteration {n_iter}; the data "
                    "may be degenerate for this covariance type: increase reg_covar or use "
                    "float64"
                )
            monitor.warn_if_decreasing(
                value, hooks.decrease_slack(params, value, final=last), stacklevel + 1
            )
            monitor.record(value)
            params = hooks.m_step(params, stats)
            _report(progress, value)
            if converging:
                return FitResult(params, True, n_iter, monitor.history)
    return FitResult(params, False, max_iter, monitor.history)


def run_adam(
    parameters: list[torch.Tensor],
    terms: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    finish: Callable[[], P],
    *,
    lr: float,
    max_steps: int,
    tol: float,
    normaliser: float,
    project: Callable[[], None] | None = None,
    unit: str = "epoch",
    progress=None,
) -> FitResult[P]:
    """Maximum likelihood by Adam on `parameters` (leaf tensors that require grad).

    Each epoch, `terms()` yields (loss, gain) pairs: one optimiser step on each loss, and the
    gains (log-likelihood contributions, before the step) summed and divided by `normaliser`
    give the epoch's figure for the monitor. `project()` runs after every step (a projected
    gradient: the variance floor). `finish()` builds the returned parameters at the end.
    """
    optimizer = torch.optim.Adam(parameters, lr=lr)
    monitor = ConvergenceMonitor(tol)
    converged, epoch = False, 0
    with torch.enable_grad():
        for epoch in range(1, max_steps + 1):
            total = 0.0
            for loss, gain in terms():
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if project is not None:
                    project()
                total += float(gain.detach())
            value = total / normaliser
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"gradient fit diverged at {unit} {epoch}: lower the learning rate lr"
                )
            converging = monitor.converging(value)
            monitor.record(value)
            _report(progress, value)
            if converging:
                converged = True
                break
    with torch.no_grad():
        params = finish()
    return FitResult(params, converged, epoch, monitor.history)


def fit_with_restarts(
    hooks: EMHooks[P, S],
    generator: torch.Generator,
    *,
    n_runs: int,
    max_iter: int,
    tol: float,
    owner: str,
    gradient: Callable[[P, Any], FitResult[P]] | None = None,
    reduce: Callable[[S], S] | None = None,
    verbose: bool = False,
    description: str = "fit",
    stacklevel: int = 1,
) -> FitResult[P]:
    """The fit every classical model runs: `n_runs` times, start from `hooks.initialise` and
    run EM (or, when given, `gradient(start, progress)`, an Adam fit); keep the result with the
    best final figure (the first on ties) and warn with ConvergenceWarning, once, when the kept
    run did not converge. `owner` names the model in that warning; `stacklevel` counts the
    frames from the user's call to this one.
    """
    best: FitResult[P] | None = None
    with tqdm(total=max_iter * n_runs, disable=not verbose, desc=description) as bar:
        progress = bar if verbose else None
        for _ in range(n_runs):
            with torch.inference_mode():
                start = hooks.initialise(generator)
            if gradient is None:
                result = run_em(hooks, start, max_iter=max_iter, tol=tol, reduce=reduce,
                                progress=progress, stacklevel=stacklevel + 1)
            else:
                result = gradient(start, progress)
            if best is None or result.lower_bound > best.lower_bound:
                best = result
    if not best.converged:
        warnings.warn(
            f"{owner} did not converge in {best.n_iter} iterations (tol={tol}); try a larger "
            "max_iter, a larger tol or another init",
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )
    return best


def record_fit(model, result: FitResult) -> None:
    """Set the fitted summary every classical model carries from the kept run."""
    model.converged_ = result.converged
    model.n_iter_ = result.n_iter
    model.lower_bounds_ = list(result.lower_bounds)
    model.lower_bound_ = result.lower_bound


def deprecated_alias(old: str, new: str) -> property:
    """A property `old` that reads and writes attribute `new` with a DeprecationWarning (a
    fitted attribute that was renamed so both classical models use one name)."""
    message = f"{old} is deprecated: use {new}, which holds the same values"

    def get(self):
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    def set_(self, value):
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated alias of `{new}`.")


def _reduced(reduce, stats):
    return stats if reduce is None else reduce(stats)


def _report(progress, value: float) -> None:
    if progress is not None:
        progress.update(1)
        progress.set_postfix(lower_bound=f"{value:.6g}")

