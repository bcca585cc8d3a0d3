"""The cross-entropy method (CEM): derivative-free maximisation of a fitness over R^D.

Each generation draws `population` points from a diagonal Gaussian, evaluates them, and refits
the Gaussian's mean and standard deviation to the `elites` best. The best point seen so far
is carried into every later population (elitism), so the best fitness never decreases; a
floor on the standard deviation (`min_std`) keeps the search from collapsing early.
Transformer² searches mixture coefficients over SVF experts this way, with the few-shot
likelihood of a task's answers as the fitness (`cerebrum.brain.transformer2`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cerebrum._util.validation import check_positive_int


@dataclass
class CEMResult:
    """The outcome of `cem_maximize`.

    Attributes:
        best: (D,) the best point evaluated.
        best_fitness: its fitness.
        history: the best fitness so far after each generation (non-decreasing).
        mean: (D,) the final search mean.
        evaluations: how many times the fitness was called.
    """

    best: torch.Tensor
    best_fitness: float
    history: list[float]
    mean: torch.Tensor
    evaluations: int


def cem_maximize(fitness: Callable[[torch.Tensor], float], init_mean: torch.Tensor, *,
                 init_std: float = 0.5, population: int = 16, elites: int = 4,
                 generations: int = 10, min_std: float = 0.02,
                 generator: torch.Generator | None = None) -> CEMResult:
    """Maximise `fitness((D,) tensor) -> float` from `init_mean` (D,) (module docstring).

    The initial mean is evaluated first, so the result is never worse than the start."""
    population = check_positive_int(population, name="population", minimum=2)
    elites = check_positive_int(elites, name="elites")
    generations = check_positive_int(generations, name="generations")
    if elites > population:
        raise ValueError(f"elites ({elites}) must be <= population ({population})")
    if not init_std > 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")
    mean = init_mean.detach().clone()
    std = torch.full_like(mean, float(init_std))
    best, best_fitness = mean.clone(), float(fitness(mean))
    evaluations, history = 1, []
    for _ in range(generations):
        noise = torch.randn(population - 1, mean.shape[0], generator=generator,
                            device=mean.device, dtype=mean.dtype)
        candidates = torch.cat([best.unsqueeze(0), mean + std * noise])   # (population, D)
        scores = [best_fitness] + [float(fitness(c)) for c in candidates[1:]]
        evaluations += population - 1
        order = sorted(range(population), key=lambda i: scores[i], reverse=True)
        if scores[order[0]] > best_fitness:
            best, best_fitness = candidates[order[0]].clone(), scores[order[0]]
        elite = candidates[order[:elites]]
        mean = elite.mean(0)
        std = elite.std(0, unbiased=False).clamp_min(min_std) if elites > 1 else std
        history.append(best_fitness)
    return CEMResult(best=best, best_fitness=best_fitness, history=history, mean=mean,
                     evaluations=evaluations)
