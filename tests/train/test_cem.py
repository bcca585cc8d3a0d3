"""The cross-entropy method."""

import pytest
import torch

from cerebrum.train.cem import cem_maximize


def test_cem_finds_the_optimum_of_a_quadratic_and_never_gets_worse():
    target = torch.tensor([0.7, -1.2, 2.0])

    def fitness(x):
        return -float(((x - target) ** 2).sum())

    result = cem_maximize(fitness, torch.zeros(3), init_std=1.0, population=32, elites=6,
                          generations=25, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.best, target, atol=0.05, rtol=0)
    assert all(b >= a for a, b in zip(result.history, result.history[1:], strict=False))
    assert result.best_fitness == pytest.approx(fitness(result.best))
    assert result.evaluations == 1 + 25 * 31


def test_cem_keeps_the_start_when_nothing_is_better():
    result = cem_maximize(lambda x: -float(x.abs().sum()), torch.zeros(2), population=4,
                          elites=2, generations=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.best, torch.zeros(2))
    assert result.history == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("kwargs, name", [(dict(population=1), "population"),
                                          (dict(elites=0), "elites"),
                                          (dict(elites=9, population=8), "elites"),
                                          (dict(generations=0), "generations")])
def test_bad_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cem_maximize(lambda x: 0.0, torch.zeros(2), **kwargs)
