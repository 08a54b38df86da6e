"""Regularised (ageing) evolution (Real et al. 2019) and its mutation operator, ``mutate``.

Tournament selection over the most recent ``population_size`` trials; each child changes one
parameter of its parent (re-mutated, up to 30 times, until it is new and passes the feasibility
predicate; then a fresh feasible sample). Draws go through
:class:`~kd_compile.search.random.ReplayableStrategy`, so a journal replay reproduces them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import register_strategy
from .gp import fitness, fresh_samples
from .random import ReplayableStrategy
from .space import Config, Param, ParamSpace
from .trial import Suggestion, TrialStatus

__all__ = ["RegularizedEvolution", "mutate"]


def mutate(space: ParamSpace, config: Config, rng: np.random.Generator, sigma: float = 0.15) -> Config:
    """Change one parameter of ``config``.

    Unordered and ordered choices jump to another value; integers with few values too; wide
    integers and floats take a Gaussian step of ``sigma`` in their unit coordinate (a local
    move, as in NAS mutation operators), reflected at the bounds.

    Args:
        space: the space ``config`` belongs to.
        config: the parent (not modified).
        rng: the generator every random choice draws from.
        sigma: standard deviation of the step in a wide parameter's unit coordinate.

    Returns:
        The child, canonical.
    """
    params = [p for p in space.params if p.cardinality != 1]
    if not params:
        return dict(config)
    p: Param = params[int(rng.integers(len(params)))]
    cur = config[p.name]
    if p.kind in ("cat", "choice") or (p.kind == "int" and p.cardinality <= 8):
        if p.kind in ("cat", "choice"):
            values = list(p.choices)
        else:
            values = list(range(int(p.low), int(p.high) + 1))  # type: ignore[arg-type]
        others = [v for v in values if v != cur]
        new = others[int(rng.integers(len(others)))]
    else:
        u = p.encode(cur)[0] + float(rng.normal(0.0, sigma))
        u = abs(u) if u < 0 else (2.0 - u if u > 1 else u)
        new = p.decode([min(max(u, 0.0), 1.0)])
    out = dict(config)
    out[p.name] = new.item() if isinstance(new, np.generic) else new
    return space.canonical(out)


@register_strategy("evolution")
class RegularizedEvolution(ReplayableStrategy):
    """Ageing evolution: the population is the last ``population_size`` evaluated trials
    (failed ones left out); a child mutates one parameter of the best of ``sample_size``
    random members. Infeasible members rank last, so they are parents only of a sample that
    is all infeasible (which still moves away from them by mutation).

    Options:
        population_size: default ``clip(budget // 3, 4, 20)`` (20 without a budget).
        sample_size: tournament size, default ``max(2, population_size // 4)``.
    """

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        population_size: int | None = None,
        sample_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        default_pop = 20 if budget is None else min(20, max(4, budget // 3))
        self.population_size = int(population_size or default_pop)
        self.sample_size = int(sample_size or max(2, self.population_size // 4))

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        taken = self.taken_keys()
        history = [t for t in self.trials if t.status != TrialStatus.FAILED]
        out: list[Config] = []
        n_random = max(0, min(n, self.population_size - len(history) - self._asked_since_tell))
        out += fresh_samples(self.space, n_random, taken, rng)
        pop = history[-self.population_size :]
        for _ in range(n - n_random):
            child = None
            if pop:
                for _ in range(30):
                    k = min(self.sample_size, len(pop))
                    sample = [pop[i] for i in sorted(rng.choice(len(pop), size=k, replace=False))]
                    # a tournament, not best_trial: an all-infeasible sample still needs a
                    # parent (best_trial gives None), and trials told at another fidelity
                    # compete too (best_trial keeps only the top fidelity)
                    parent = min(sample, key=fitness)
                    cand = mutate(self.space, parent.config, rng)
                    # mutate until new and feasible (bounded; then a fresh feasible sample)
                    if self.space.key(cand) not in taken and self.space.feasible(cand):
                        child = cand
                        break
            if child is None:
                child = fresh_samples(self.space, 1, taken, rng)[0]
            taken.add(self.space.key(child))
            out.append(child)
        return [Suggestion(c, 1.0) for c in out]
