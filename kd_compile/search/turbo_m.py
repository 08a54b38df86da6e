"""TuRBO-M: several trust regions at once (Eriksson et al. 2019), built on TuRBO-1.

Each region has its own state, initial design and GP on its own points (the state rules and
candidate generation are :mod:`kd_compile.search.turbo`'s); batch slots go to the region whose
Thompson sample is best, with SCBO's rule for learned (measured) constraints as in TuRBO-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import register_strategy
from .gp import (
    derive_seed,
    encode,
    fit_gp,
    fresh_samples,
    lengthscales,
    penalised_scores,
    pick_from_unit,
    posterior_mean_std,
    scbo_key,
    sobol,
    thompson_values,
    torch_seeded,
)
from .space import Config, ParamSpace
from .trial import Suggestion, Trial
from .turbo import Turbo, TurboState, default_n_init, new_candidates, tr_candidates, tr_weights

__all__ = ["TurboM"]


@register_strategy("turbo-m")
class TurboM(Turbo):
    """TuRBO-M: ``n_regions`` trust regions, each with its own state, design and GP on its own
    points; batch slots go to the region whose Thompson sample is best (an implicit bandit:
    GP posteriors are on the original score scale, so draws are comparable across regions).

    A trial belongs to the region that proposed it (recorded at ``ask``; the loop's resume
    replays ``ask``/``tell``, which rebuilds the record). Trials told without being asked
    (foreign results) are spread round-robin by position.

    Options (besides :class:`Turbo`'s):
        n_regions: number of trust regions (default 2; small budgets cannot feed more).
        n_init: design size per region (default ``max(3, turbo's n_init // n_regions)``).
    """

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        n_regions: int = 2,
        n_init: int | None = None,
        **options: Any,
    ) -> None:
        self.n_regions = max(1, int(n_regions))
        per = n_init or max(3, default_n_init(space, budget) // self.n_regions)
        super().__init__(space, seed=seed, budget=budget, n_init=per, **options)
        self._origin: dict[tuple[str, float], int] = {}

    def _region_of(self, i: int, t: Trial) -> int:
        return self._origin.get((self.space.key(t.config), t.fidelity), i % self.n_regions)

    def region_trials(self) -> list[list[Trial]]:
        """Told trials of each region, in told order."""
        out: list[list[Trial]] = [[] for _ in range(self.n_regions)]
        for i, t in enumerate(self.trials):
            out[self._region_of(i, t)].append(t)
        return out

    def region_states(self) -> list[tuple[TurboState, int, int]]:
        """(state, first trial index of the live TR in the region's list, restarts) per region."""
        return [self.replay_state(ts) for ts in self.region_trials()]

    def _ask(self, n: int) -> list[Suggestion]:
        regions = self.region_trials()
        states = self.region_states()
        taken = self.taken_keys()
        rng = self.draw_rng("fill")
        pending = [0] * self.n_regions
        for k in self._pending:
            if k in self._origin:
                pending[self._origin[k]] += 1
        chosen: list[tuple[Config, int]] = []
        # 1) regions still in their initial design (or with < 2 usable points) get design rows
        models: list[tuple[int, Any, list[Config], np.ndarray]] = []
        for r, (state, start, restarts) in enumerate(states):
            live = regions[r][start:]
            done = len(live) + pending[r]
            used, y = penalised_scores(live)
            want = self.n_init - done if len(used) >= 2 else n
            want = max(0, min(n - len(chosen), want))
            if want:
                seed = derive_seed(self.seed, "turbo-m-design", r, restarts)
                u = sobol(self.space.dim, 4 * want + 16, seed, skip=done)
                chosen += [(c, r) for c in pick_from_unit(self.space, u, want, taken, rng)]
            elif len(used) >= 2:
                models.append((r, state, used, y))
        # 2) the rest by Thompson sampling across the regions' candidate sets
        left = n - len(chosen)
        if left and models:
            pool: list[tuple[Config, int]] = []
            pool_x: list[np.ndarray] = []
            draws: list[np.ndarray] = []
            for r, state, used, y in models:
                x = encode(self.space, [t.config for t in used])
                with torch_seeded(self.draw_seed(f"gp{r}")):
                    model = fit_gp(x, -y, maxiter=self.gp_maxiter)
                    mean, _ = posterior_mean_std(model, x)
                    raw = tr_candidates(
                        self.space,
                        x[int(np.argmax(mean))],
                        tr_weights(lengthscales(model)),
                        state.length,
                        self.n_candidates,
                        self.draw_seed(f"cand{r}"),
                    )
                    configs, cx = new_candidates(self.space, raw, taken, rng, left)
                    if configs:
                        draws.append(thompson_values(model, cx, left))
                        pool += [(c, r) for c in configs]
                        pool_x.append(cx)
            if pool:
                vals = np.concatenate(draws, axis=1)  # (left, total candidates)
                # SCBO (see turbo.py): a GP on each measured constraint, once one was broken
                with torch_seeded(self.draw_seed("constraints")):
                    px = np.concatenate(pool_x)
                    viol = self._violation_draws(px, left)
                pool_keys = [self.space.key(c) for c, _ in pool]
                available = np.ones(len(pool), dtype=bool)
                for i in range(left):
                    key = scbo_key(vals[i], None if viol is None else viol[i], available)
                    for j in np.argsort(-key, kind="stable"):
                        if available[j] and pool_keys[j] not in taken:
                            available[j] = False
                            taken.add(pool_keys[j])
                            chosen.append(pool[int(j)])
                            break
        if len(chosen) < n:
            extra = fresh_samples(self.space, n - len(chosen), taken, rng)
            chosen += [(c, i % self.n_regions) for i, c in enumerate(extra)]
        for c, r in chosen:
            self._origin[(self.space.key(c), 1.0)] = r
        return [Suggestion(c, 1.0) for c, _ in chosen]
