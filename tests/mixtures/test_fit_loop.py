"""The one fit loop (`mixtures/_fit_loop.py`): restarts keep the best run, the monitor's
convergence rule, and the fitted summary both classical models share."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cerebrum import ConvergenceWarning, GaussianMixture, HiddenMarkov
from cerebrum.mixtures._fit_loop import EMHooks, fit_with_restarts, run_em


class _ShrinkingGap(EMHooks):
    """A scripted EM: the parameter is a number p that each M step moves halfway to `target`;
    the figure is -(p - target)^2, so the exact history is known in closed form."""

    def __init__(self, starts, target=1.0):
        self.starts = iter(starts)
        self.target = target

    def initialise(self, generator):
        return next(self.starts)

    def statistics(self, params, *, final):
        return params

    def log_likelihood(self, stats):
        return -((stats - self.target) ** 2)

    def m_step(self, params, stats):
        return params + 0.5 * (self.target - params)


def test_em_history_follows_the_hooks_and_stops_at_tol():
    # gaps 1, 1/2, 1/4, ...: figures -1, -1/4, -1/16, ...; changes 3/4, 3/16, 3/64 < 0.05
    result = run_em(_ShrinkingGap([]), 0.0, max_iter=50, tol=0.05)
    expected = [-(0.5 ** (2 * i)) for i in range(4)]
    assert result.converged and result.n_iter == 4
    np.testing.assert_allclose(result.lower_bounds, expected)
    assert result.params == pytest.approx(1.0 - 0.5**4)


def test_reduce_sees_every_statistics_before_the_m_step():
    seen = []

    def reduce(stats):
        seen.append(stats)
        return stats

    result = run_em(_ShrinkingGap([]), 0.0, max_iter=3, tol=0.0, reduce=reduce)
    assert seen == [0.0, 0.5, 0.75] and not result.converged


def test_restarts_keep_the_best_final_figure_and_warn_once():
    hooks = _ShrinkingGap([-9.0, 0.9, 5.0])  # the second start ends closest to the target
    with pytest.warns(ConvergenceWarning, match="Toy did not converge in 2 iterations") as caught:
        best = fit_with_restarts(hooks, torch.Generator(), n_runs=3, max_iter=2, tol=0.0,
                                 owner="Toy")
    assert len(caught) == 1
    assert best.params == pytest.approx(1.0 - 0.1 / 4)
    assert best.lower_bound == pytest.approx(-(0.05**2))


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(120, 2)).astype(np.float32), [50, 70]


def test_both_models_carry_the_same_fit_summary():
    X, lengths = _sequences()
    gmm = GaussianMixture(2, 2).fit(X, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hmm = HiddenMarkov(2, 2).fit(X, lengths, max_iter=5, random_state=0)
    for model in (gmm, hmm):
        assert model.lower_bound_ == model.lower_bounds_[-1]
        assert len(model.lower_bounds_) == model.n_iter_
        assert isinstance(model.converged_, bool)
    # an HMM's figure is the total log-likelihood of the data before the last update
    assert hmm.lower_bounds_[-1] <= hmm.score(X, lengths) + 1e-3


def test_the_old_hmm_history_name_still_works_with_a_deprecation_warning():
    X, lengths = _sequences(1)
    hmm = HiddenMarkov(2, 2).fit(X, lengths, max_iter=30, random_state=0)
    with pytest.warns(DeprecationWarning, match="history_ is deprecated: use lower_bounds_"):
        history = hmm.history_
    assert history == hmm.lower_bounds_
    with pytest.warns(DeprecationWarning):
        hmm.history_ = [1.0, 2.0]  # a saved summary restored under the old name
    assert hmm.lower_bounds_ == [1.0, 2.0]
