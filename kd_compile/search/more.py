"""More strategies: space-filling designs, regularised evolution, and multi-fidelity search.

* ``sobol``: scrambled Sobol points in the unit-cube encoding.
* ``lhs``: Latin hypercube designs (scipy.stats.qmc), one block of ``budget`` points at a time.
* ``evolution``: regularised (ageing) evolution (Real et al. 2019): tournament selection over
  the most recent ``population_size`` trials, one parameter mutated per child.
* ``lf-gpr``: "NAS with low-fidelity evaluations only" (Trofimov et al., Alg. 1): a
  space-filling design at low fidelity, a GP on the low-fidelity scores, then the GP's best
  predicted configs are evaluated at full fidelity.
* ``lf-then-hf``: Trofimov et al., Alg. 2: GP-BO at low fidelity, then GP-BO at full fidelity
  started from the best low-fidelity configs.
* ``mfkd``: MF-KD's two-fidelity co-kriging ``y_high = rho * y_low + delta`` with a UCB rule for
  the next point and an MF-GP-UCB rule for its fidelity.
* ``bohb``: Hyperband brackets of successive halving over fidelity, with BOHB's KDE-ratio
  proposals once enough results exist at some fidelity.

All draw through :class:`~kd_compile.search.random.ReplayableStrategy`, so a journal replay
(``ask``/``tell`` round by round) reproduces every proposal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..students.base import Config, Param, SearchSpace
from .base import FAILED, INFEASIBLE, Suggestion, Trial, register_strategy
from .gp import (
    bo_candidates,
    bo_propose,
    derive_seed,
    encode,
    fit_gp,
    fresh_samples,
    penalised_scores,
    pick_from_unit,
    posterior_mean_std,
    snap,
    sobol,
    torch_seeded,
    unique_new,
)
from .random import ReplayableStrategy


# -- space-filling designs ------------------------------------------------------------------------
@register_strategy("sobol")
class SobolSearch(ReplayableStrategy):
    """Scrambled Sobol sequence over the unit-cube encoding; duplicates (discrete params)
    are skipped to the next point."""

    def _ask(self, n: int) -> list[Suggestion]:
        idx = len(self.trials) + self._asked_since_tell
        u = sobol(self.space.dim, 4 * n + 16, derive_seed(self.seed, "sobol"), skip=idx)
        picked = pick_from_unit(self.space, u, n, self.taken_keys(), self.draw_rng())
        return [Suggestion(c, 1.0) for c in picked]


@register_strategy("lhs")
class LatinHypercubeSearch(ReplayableStrategy):
    """Latin hypercube designs: block ``b`` is an LHS of ``block_size`` points (default: the
    budget, so a whole run is one stratified design); later blocks are new designs.

    Options:
        block_size: points per Latin hypercube (default ``budget`` or 16).
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        block_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        self.block_size = int(block_size or budget or 16)

    def _rows(self, start: int, count: int) -> np.ndarray:
        from scipy.stats import qmc

        rows: list[np.ndarray] = []
        b, off = divmod(start, self.block_size)
        while sum(len(r) for r in rows) < count:
            rng = np.random.default_rng(derive_seed(self.seed, "lhs", b))
            rows.append(qmc.LatinHypercube(d=self.space.dim, rng=rng).random(self.block_size)[off:])
            b, off = b + 1, 0
        return np.vstack(rows)[:count]

    def _ask(self, n: int) -> list[Suggestion]:
        idx = len(self.trials) + self._asked_since_tell
        u = self._rows(idx, 4 * n + 16)
        picked = pick_from_unit(self.space, u, n, self.taken_keys(), self.draw_rng())
        return [Suggestion(c, 1.0) for c in picked]


# -- regularised evolution ------------------------------------------------------------------------
def mutate(
    space: SearchSpace, config: Config, rng: np.random.Generator, sigma: float = 0.15
) -> Config:
    """Change one parameter of ``config``.

    Unordered and ordered choices jump to another value; integers with few values too; wide
    integers and floats take a Gaussian step of ``sigma`` in their unit coordinate (a local
    move, as in NAS mutation operators), reflected at the bounds.
    """
    params = [p for p in space.params if p.cardinality != 1]
    if not params:
        return dict(config)
    p: Param = params[int(rng.integers(len(params)))]
    cur = config[p.name]
    if p.kind in ("cat", "choice") or (p.kind == "int" and p.cardinality <= 8):
        values = (
            list(p.choices)
            if p.kind in ("cat", "choice")
            else list(
                range(int(p.low), int(p.high) + 1)  # type: ignore[arg-type]
            )
        )
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
        space: SearchSpace,
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
        history = [t for t in self.trials if t.status != FAILED]
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
                    parent = min(sample, key=_fitness)
                    cand = mutate(self.space, parent.config, rng)
                    if self.space.key(cand) not in taken:
                        child = cand
                        break
            if child is None:
                child = fresh_samples(self.space, 1, taken, rng)[0]
            taken.add(self.space.key(child))
            out.append(child)
        return [Suggestion(c, 1.0) for c in out]


def _fitness(t: Trial) -> float:
    return float(t.score) if t.ok else math.inf  # type: ignore[arg-type]


# -- multi-fidelity: shared pieces ----------------------------------------------------------------
class _TwoFidelity(ReplayableStrategy):
    """Base for the two-fidelity GP strategies (low fidelity ``low_fidelity``, high 1.0)."""

    multi_fidelity = True

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        low_fidelity: float = 1.0 / 3.0,
        n_init: int | None = None,
        n_candidates: int | None = None,
        gp_maxiter: int = 200,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        if not 0.0 < low_fidelity < 1.0:
            raise ValueError("low_fidelity must be in (0, 1)")
        self.low = float(low_fidelity)
        self.n_init = int(n_init or max(4, min(2 * len(space.params), (budget or 40) // 4)))
        self.n_candidates = int(n_candidates or min(2000, max(500, 100 * space.dim)))
        self.gp_maxiter = int(gp_maxiter)

    def count(self, fidelity: float) -> int:
        """Trials told plus suggestions pending at ``fidelity``."""
        told = sum(1 for t in self.trials if t.fidelity == fidelity)
        return told + sum(1 for _, f in self._pending if f == fidelity)

    def trained(self, fidelity: float) -> int:
        """Like ``count`` without the infeasible trials: they are never trained, so they do not
        use up a phase planned in trainings (a design where most proposals break a constraint
        still gets its low-fidelity results)."""
        return self.count(fidelity) - sum(
            1 for t in self.trials if t.fidelity == fidelity and t.status == INFEASIBLE
        )

    def data(self, fidelity: float) -> tuple[list[Config], np.ndarray]:
        used, y = penalised_scores([t for t in self.trials if t.fidelity == fidelity])
        return [t.config for t in used], y

    def design(
        self, n: int, fidelity: float, taken: set[str], rng: np.random.Generator
    ) -> list[Config]:
        """Sobol design rows for ``fidelity``, indexed by how many exist there already."""
        u = sobol(
            self.space.dim,
            4 * n + 16,
            derive_seed(self.seed, "mf-design", str(fidelity)),
            skip=self.count(fidelity),
        )
        return pick_from_unit(self.space, u, n, taken, rng)

    def bo(
        self, fidelity: float, n: int, taken: set[str], rng: np.random.Generator
    ) -> list[Config]:
        configs, y = self.data(fidelity)
        return bo_propose(
            self.space,
            configs,
            y,
            n,
            taken,
            rng,
            self.draw_seed(f"bo{fidelity}"),
            n_candidates=self.n_candidates,
            maxiter=self.gp_maxiter,
        )


def _default_low_runs(budget: int | None, share: float, n_init: int, low: float) -> int:
    """Low-fidelity evaluations that spend ``share`` of the training budget: ``budget`` counts
    full-fidelity trainings (the search loop charges a trial at fidelity f with f of it), so
    the phase runs ``share * budget / low`` evaluations (24 without a budget)."""
    return max(n_init + 1, round(share * budget / low)) if budget else 24


@register_strategy("lf-gpr")
class LowFidelityGPR(_TwoFidelity):
    """Low-fidelity design, a GP on its scores, full-fidelity checks of the GP's favourites.

    The first ``low_share`` of the budget evaluates a scrambled-Sobol design at
    ``low_fidelity`` (Trofimov et al. sample at random; Sobol covers the space more evenly).
    Each later suggestion is the config with the best GP-predicted low-fidelity score not yet
    evaluated at full fidelity, among the configs measured at low fidelity (the GP's posterior
    mean pools each measurement with its neighbours', which smooths the low-fidelity noise);
    fresh candidates near the best join once the measured ones are used up (the GP's
    extrapolation to a config never trained is its least reliable prediction).

    Options:
        low_share: share of the training budget spent at low fidelity (default 0.75, i.e.
            ``0.75 * budget / low_fidelity`` evaluations; 24 without a budget).
    """

    def __init__(self, *args: Any, low_share: float = 0.75, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_low = _default_low_runs(self.budget, low_share, self.n_init, self.low)

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        n_lo = max(0, min(n, self.n_low - self.trained(self.low)))
        out = [
            Suggestion(c, self.low)
            for c in self.design(n_lo, self.low, self.taken_keys(self.low), rng)
        ]
        if n > n_lo:
            out += [Suggestion(c, 1.0) for c in self._favourites(n - n_lo, rng)]
        return out

    def _favourites(self, n: int, rng: np.random.Generator) -> list[Config]:
        taken = self.taken_keys(1.0)
        configs, y = self.data(self.low)
        if len(configs) < 2:
            return fresh_samples(self.space, n, taken, rng)
        x = encode(self.space, configs)
        with torch_seeded(self.draw_seed("gp")):
            model = fit_gp(x, -y, maxiter=self.gp_maxiter)
            # the measured configs not yet checked at full fidelity; unmeasured candidates near
            # the best join only once fewer than n are left
            cands = [configs[i] for i in unique_new(self.space, configs, taken)]
            if len(cands) < n:
                top = x[np.argsort(y)[: max(1, min(5, len(y) // 3))]]
                raw = bo_candidates(self.space, top, self.n_candidates, self.draw_seed("cand"))
                fresh, _ = snap(self.space, raw)
                seen = taken | {self.space.key(c) for c in cands}
                cands += [fresh[i] for i in unique_new(self.space, fresh, seen)]
            if not cands:
                return fresh_samples(self.space, n, taken, rng)
            mean, _ = posterior_mean_std(model, encode(self.space, cands))
        out = [cands[i] for i in np.argsort(-mean, kind="stable")[:n]]
        taken.update(self.space.key(c) for c in out)
        if len(out) < n:
            out += fresh_samples(self.space, n - len(out), taken, rng)
        return out


@register_strategy("lf-then-hf")
class LowThenHighFidelity(_TwoFidelity):
    """GP-BO at low fidelity, then GP-BO at full fidelity seeded with the best low-fidelity
    configs (Trofimov et al., Alg. 2).

    Options:
        low_share: share of the training budget for the low-fidelity phase (default 0.5, i.e.
            ``0.5 * budget / low_fidelity`` evaluations).
        n_seeds: best low-fidelity configs re-evaluated first at full fidelity (default 3).
    """

    def __init__(self, *args: Any, low_share: float = 0.5, n_seeds: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_low = _default_low_runs(self.budget, low_share, self.n_init, self.low)
        self.n_seeds = int(n_seeds)

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        out: list[Suggestion] = []
        n_lo = max(0, min(n, self.n_low - self.trained(self.low)))
        if n_lo:
            taken = self.taken_keys(self.low)
            n_design = max(0, min(n_lo, self.n_init - self.trained(self.low)))
            cfgs = self.design(n_design, self.low, taken, rng)
            cfgs += self.bo(self.low, n_lo - n_design, taken, rng) if n_lo > n_design else []
            out += [Suggestion(c, self.low) for c in cfgs]
        if n > n_lo:
            taken = self.taken_keys(1.0)
            k = n - n_lo
            # best ok low-fidelity configs (an infeasible one stays infeasible at any fidelity)
            lo_ok = sorted(
                (t for t in self.trials if t.fidelity == self.low and t.ok),
                key=lambda t: float(t.score),  # type: ignore[arg-type]
            )
            seeds = [t.config for t in lo_ok[: self.n_seeds]]
            seeds = [c for c in seeds if self.space.key(c) not in taken]
            n_seed = max(0, min(k, self.n_seeds - self.trained(1.0), len(seeds)))
            cfgs = seeds[:n_seed]
            taken.update(self.space.key(c) for c in cfgs)
            cfgs += self.bo(1.0, k - n_seed, taken, rng) if k > n_seed else []
            out += [Suggestion(c, 1.0) for c in cfgs]
        return out


@register_strategy("mfkd")
class MultiFidelityCoKriging(_TwoFidelity):
    """MF-KD: co-kriging of two fidelities with a UCB rule.

    Warm-up: ``n_init`` low-fidelity and ``n_high_init`` full-fidelity Sobol points. Then the
    fusion model ``y_high(x) = rho * y_low(x) + delta(x)`` (independent GPs for ``y_low`` and
    ``delta``; ``rho`` by least squares of the high scores on the low GP's mean, which is the
    maximum-likelihood estimate for a fixed ``delta`` kernel) scores candidates by
    ``UCB = mean + beta * std`` of the predicted full-fidelity value (to maximise; the paper
    writes ``beta * Var``, we use the standard deviation so ``beta`` is scale-free). The chosen
    point is evaluated at low fidelity while the low GP is still unsure there
    (``|rho| * beta * std_low > gamma * std(y_low)``, the MF-GP-UCB rule of Kandasamy et al.)
    and at full fidelity otherwise.

    The candidate set is the configs measured at low fidelity plus a fresh Sobol set over the
    whole space. With ``local=True`` half of the fresh set is perturbations of the best low
    configs instead; on the tabular benchmark that made the UCB rule re-propose neighbours of
    the incumbent that all map to one architecture (20 distinct architectures in 117
    evaluations), so the default screens widely at low fidelity and promotes measured configs.

    Options:
        n_high_init: full-fidelity warm-up points (default ``max(2, budget // 10)``).
        beta: exploration weight (default 1.0, as in the paper).
        gamma: fidelity threshold, as a share of the low scores' spread (default 0.25).
        local: draw half of the fresh candidates around the best low configs (default False).
    """

    def __init__(
        self,
        *args: Any,
        n_high_init: int | None = None,
        beta: float = 1.0,
        gamma: float = 0.25,
        local: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.n_high_init = int(n_high_init or max(2, (self.budget or 20) // 10))
        self.beta, self.gamma = float(beta), float(gamma)
        self.local = bool(local)

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        out: list[Suggestion] = []
        n_lo = max(0, min(n, self.n_init - self.trained(self.low)))
        out += [
            Suggestion(c, self.low)
            for c in self.design(n_lo, self.low, self.taken_keys(self.low), rng)
        ]
        n_hi = max(0, min(n - n_lo, self.n_high_init - self.trained(1.0)))
        out += [Suggestion(c, 1.0) for c in self.design(n_hi, 1.0, self.taken_keys(1.0), rng)]
        if len(out) < n:
            out += self._ucb(n - len(out), rng)
        return out

    def _ucb(self, n: int, rng: np.random.Generator) -> list[Suggestion]:
        lo_cfg, lo_y = self.data(self.low)
        hi_cfg, hi_y = self.data(1.0)
        taken = {1.0: self.taken_keys(1.0), self.low: self.taken_keys(self.low)}
        if len(lo_cfg) < 2:
            return [
                Suggestion(c, self.low) for c in fresh_samples(self.space, n, taken[self.low], rng)
            ]
        with torch_seeded(self.draw_seed("gp")):
            x_lo = encode(self.space, lo_cfg)
            gp_lo = fit_gp(x_lo, -lo_y, maxiter=self.gp_maxiter)
            rho, gp_d, d_const = 1.0, None, 0.0
            if hi_cfg:
                x_hi = encode(self.space, hi_cfg)
                m_hi, _ = posterior_mean_std(gp_lo, x_hi)
                v_hi = -hi_y
                if len(hi_cfg) >= 2 and np.var(m_hi) > 1e-12:
                    c = np.cov(m_hi, v_hi)
                    rho = float(c[0, 1] / c[0, 0])
                resid = v_hi - rho * m_hi
                if len(hi_cfg) >= 3:
                    gp_d = fit_gp(x_hi, resid, maxiter=self.gp_maxiter)
                else:
                    d_const = float(resid.mean())
            # local: half of the fresh candidates perturb the best low configs; else all Sobol
            top = x_lo[np.argsort(lo_y)[: max(1, min(5, len(lo_y) // 3))]] if self.local else x_lo[:0]
            raw = bo_candidates(self.space, top, self.n_candidates, self.draw_seed("cand"))
            fresh, fx = snap(self.space, raw)
            # the configs measured at low fidelity compete too: promoting a well-measured one to
            # full fidelity is where the low-fidelity runs pay off
            cands, cx = list(lo_cfg) + fresh, np.concatenate([x_lo, fx])
            keep = unique_new(self.space, cands, taken[1.0])
            cands, cx = [cands[i] for i in keep], cx[keep]
            if not cands:
                return [Suggestion(c, 1.0) for c in fresh_samples(self.space, n, taken[1.0], rng)]
            m_lo, s_lo = posterior_mean_std(gp_lo, cx)
            if gp_d is not None:
                m_d, s_d = posterior_mean_std(gp_d, cx)
            else:
                m_d, s_d = np.full(len(cands), d_const), np.zeros(len(cands))
        mean = rho * m_lo + m_d
        std = np.sqrt(rho**2 * s_lo**2 + s_d**2)
        ucb = mean + self.beta * std
        spread = float(np.std(lo_y)) or 1.0
        out: list[Suggestion] = []
        for i in np.argsort(-ucb, kind="stable"):
            key = self.space.key(cands[i])
            want_low = abs(rho) * self.beta * s_lo[i] > self.gamma * spread
            fid = self.low if want_low and key not in taken[self.low] else 1.0
            if key in taken[fid]:
                continue
            taken[fid].add(key)
            out.append(Suggestion(cands[i], fid))
            if len(out) == n:
                break
        if len(out) < n:
            out += [
                Suggestion(c, 1.0) for c in fresh_samples(self.space, n - len(out), taken[1.0], rng)
            ]
        return out


# -- BOHB -----------------------------------------------------------------------------------------
@dataclass
class _Bracket:
    """One successive-halving bracket: rung ``k`` runs ``sizes[k]`` configs at ``fids[k]``."""

    s: int
    fids: list[float]
    sizes: list[int]
    members: list[list[tuple[str, Config]]] = field(default_factory=list)


@register_strategy("bohb")
class BOHB(ReplayableStrategy):
    """Hyperband over fidelity with successive halving, and BOHB's KDE proposals.

    Brackets ``s = s_max .. 0`` cycle, ``s_max = floor(log_eta(1 / min_fidelity))``; bracket
    ``s`` starts ``ceil((s_max + 1) / (s + 1) * eta**s)`` configs at fidelity ``eta**-s`` and
    promotes the best ``1 / eta`` of each rung (ok trials only) to the next, up to fidelity 1.
    When a rung waits for results (batch or asynchronous asks), the next bracket starts, as
    HpBandSter does with idle workers. New configs come from the KDE-ratio model (Tree Parzen
    densities ``l(x) / g(x)`` of the best 15 % vs the rest, at the highest fidelity with
    enough results) or, with probability ``random_fraction``, at random.

    Bracket bookkeeping is recorded at ``ask`` time; the loop's resume replays ``ask``/``tell``
    round by round, which rebuilds it.

    Options:
        eta: halving rate (3). min_fidelity: the cheapest rung (1/9).
        random_fraction: share of random new configs (1/3). min_points: results a KDE needs
            (default ``n_params + 2``). bandwidth_factor: widening of the sampling KDE (3).
    """

    multi_fidelity = True

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        eta: int = 3,
        min_fidelity: float = 1.0 / 9.0,
        random_fraction: float = 1.0 / 3.0,
        min_points: int | None = None,
        bandwidth_factor: float = 3.0,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        self.eta = int(eta)
        self.s_max = max(0, math.floor(math.log(1.0 / min_fidelity, self.eta) + 1e-9))
        self.random_fraction = float(random_fraction)
        self.min_points = int(min_points or len(space.params) + 2)
        self.bandwidth_factor = float(bandwidth_factor)
        self.brackets: list[_Bracket] = []

    def _new_bracket(self) -> _Bracket:
        s = self.s_max - len(self.brackets) % (self.s_max + 1)
        n0 = math.ceil((self.s_max + 1) / (s + 1) * self.eta**s)
        fids = [float(self.eta ** (k - s)) for k in range(s + 1)]
        sizes = [max(1, n0 // self.eta**k) for k in range(s + 1)]
        br = _Bracket(s, fids, sizes, [[] for _ in fids])
        self.brackets.append(br)
        return br

    def _results(self) -> dict[tuple[str, float], float]:
        out: dict[tuple[str, float], float] = {}
        for t in self.trials:
            out[(self.space.key(t.config), t.fidelity)] = _fitness(t)
        return out

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        res = self._results()
        out: list[Suggestion] = []
        for _ in range(n):
            job = None
            for br in self.brackets:
                job = self._job(br, res, rng)
                if job is not None:
                    break
            while job is None:
                job = self._job(self._new_bracket(), res, rng)
            out.append(job)
        return out

    def _job(
        self, br: _Bracket, res: dict[tuple[str, float], float], rng: np.random.Generator
    ) -> Suggestion | None:
        # promotions first (top rung first), so a bracket finishes before new ones grow
        for k in range(len(br.fids) - 1, 0, -1):
            if len(br.members[k]) >= br.sizes[k]:
                continue
            prev = br.members[k - 1]
            if len(prev) < br.sizes[k - 1] or any(
                (key, br.fids[k - 1]) not in res for key, _ in prev
            ):
                continue  # the lower rung is not finished
            ranked = sorted(
                (i for i, (key, _) in enumerate(prev) if math.isfinite(res[(key, br.fids[k - 1])])),
                key=lambda i: (res[(prev[i][0], br.fids[k - 1])], i),
            )
            taken = self.taken_keys(br.fids[k])
            inrung = {key for key, _ in br.members[k]}
            for i in ranked[: br.sizes[k]]:
                key, cfg = prev[i]
                if key not in inrung and key not in taken:
                    br.members[k].append((key, cfg))
                    return Suggestion(cfg, br.fids[k])
            br.sizes[k] = len(br.members[k])  # too few ok configs to promote: the rung shrinks
        if len(br.members[0]) < br.sizes[0]:
            cfg = self._new_config(br.fids[0], rng)
            br.members[0].append((self.space.key(cfg), cfg))
            return Suggestion(cfg, br.fids[0])
        return None

    # -- KDE-ratio proposals -----------------------------------------------------------------
    def _new_config(self, fidelity: float, rng: np.random.Generator) -> Config:
        taken = self.taken_keys(fidelity)
        if rng.random() >= self.random_fraction:
            model = self._kde_data()
            if model is not None:
                cfg = self._kde_sample(*model, taken=taken, rng=rng)
                if cfg is not None:
                    return cfg
        return fresh_samples(self.space, 1, taken, rng)[0]

    def _kde_data(self) -> tuple[np.ndarray, np.ndarray] | None:
        by_fid: dict[float, list[Trial]] = {}
        for t in self.trials:
            if t.status != FAILED:
                by_fid.setdefault(t.fidelity, []).append(t)
        for fid in sorted(by_fid, reverse=True):
            ts = by_fid[fid]
            if len(ts) < self.min_points or not any(t.ok for t in ts):
                continue
            order = sorted(range(len(ts)), key=lambda i: (_fitness(ts[i]), i))
            n_good = max(2, math.ceil(0.15 * len(ts)))
            good = [self._vec(ts[i].config) for i in order[:n_good]]
            bad = [self._vec(ts[i].config) for i in order[n_good:]]
            if len(bad) < 2:
                continue
            return np.asarray(good), np.asarray(bad)
        return None

    def _vec(self, config: Config) -> np.ndarray:
        """Per-parameter coordinates: the unit coordinate, or the category index for "cat"."""
        return np.asarray(
            [
                float(p.choices.index(config[p.name]))
                if p.kind == "cat"
                else p.encode(config[p.name])[0]
                for p in self.space.params
            ]
        )

    def _unvec(self, v: np.ndarray) -> Config:
        u: list[float] = []
        for p, x in zip(self.space.params, v):
            if p.kind == "cat":
                u.extend(1.0 if i == int(x) else 0.0 for i in range(p.width))
            else:
                u.append(float(x))
        return self.space.from_unit(u)

    def _bandwidths(self, pts: np.ndarray) -> np.ndarray:
        n = len(pts)
        bw = 1.06 * pts.std(axis=0) * n ** (-1.0 / 5.0)
        return np.clip(bw, 0.05, 0.5)

    def _density(self, x: np.ndarray, pts: np.ndarray, bw: np.ndarray) -> np.ndarray:
        """Product-kernel density of rows ``x`` ``(m, p)`` under data ``pts`` ``(k, p)``."""
        logk = np.zeros((len(x), len(pts)))
        for j, p in enumerate(self.space.params):
            diff = x[:, j : j + 1] - pts[None, :, j]
            if p.kind == "cat":
                lam = 0.2  # Aitchison-Aitken: keep the category with 1 - lam
                same = np.abs(diff) < 0.5
                logk += np.where(same, np.log(1 - lam), np.log(lam / max(1, p.width - 1)))
            else:
                logk += -0.5 * (diff / bw[j]) ** 2 - np.log(bw[j])
        m = logk.max(axis=1, keepdims=True)
        return m[:, 0] + np.log(np.exp(logk - m).mean(axis=1))

    def _kde_sample(
        self,
        good: np.ndarray,
        bad: np.ndarray,
        *,
        taken: set[str],
        rng: np.random.Generator,
        n_samples: int = 64,
    ) -> Config | None:
        bw_g, bw_b = self._bandwidths(good), self._bandwidths(bad)
        base = good[rng.integers(0, len(good), size=n_samples)]
        cand = base.copy()
        for j, p in enumerate(self.space.params):
            if p.kind == "cat":
                flip = rng.random(n_samples) < 0.2
                cand[flip, j] = rng.integers(0, p.width, size=int(flip.sum()))
            else:
                cand[:, j] = np.clip(
                    base[:, j] + rng.normal(0.0, self.bandwidth_factor * bw_g[j], n_samples), 0, 1
                )
        score = self._density(cand, good, bw_g) - self._density(cand, bad, bw_b)
        for i in np.argsort(-score, kind="stable"):
            cfg = self._unvec(cand[i])
            if self.space.key(cfg) not in taken:
                return cfg
        return None


# -- multi-objective BO ---------------------------------------------------------------------------
MOBO_METRICS: tuple[tuple[str, bool], ...] = (
    ("accuracy", True),  # (metric key, maximise?)
    ("latency_ms", False),
    ("params", False),
)


@register_strategy("mobo")
class MultiObjectiveBO(ReplayableStrategy):
    """qNEHVI (BoTorch ``qLogNoisyExpectedHypervolumeImprovement``) over accuracy (up),
    latency (down) and parameter count (down), read from ``trial.metrics``.

    One GP per objective (latency and params on a log scale: they span orders of magnitude),
    inputs in the unit cube; the acquisition is maximised over a discrete set of snapped
    candidates (Sobol + perturbations of Pareto points) by sequential greedy batch selection.
    Infeasible trials keep their measured latency/params (constraints are checked on the
    built, untrained student; a metric not measured is imputed as the worst feasible one) and
    get an accuracy below every feasible one, so the front is steered away from them. The reference point is the worst observed value of each objective
    minus 10 % of its range. The first ``n_init`` suggestions are a Sobol design (continued
    while fewer than two trials succeeded); when fewer than three trials carry the metrics
    (an evaluator that does not report them), it falls back to single-objective GP Thompson
    sampling on the scalar score.

    Options:
        n_init: Sobol design size (default ``max(4, min(2 n_params, budget // 4))``).
        n_candidates: discrete candidate set size (default 500).
        mc_samples: QMC samples of the acquisition (default 32: each sample needs its own
            box decomposition of the front, the main CPU cost with three objectives).
        gp_maxiter: L-BFGS iterations per GP fit.
    """

    multi_objective = True

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        n_init: int | None = None,
        n_candidates: int = 500,
        mc_samples: int = 32,
        gp_maxiter: int = 200,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        self.n_init = int(n_init or max(4, min(2 * len(space.params), (budget or 40) // 4)))
        self.n_candidates = int(n_candidates)
        self.mc_samples = int(mc_samples)
        self.gp_maxiter = int(gp_maxiter)

    # -- data --------------------------------------------------------------------------------
    @staticmethod
    def _has_metrics(t: Trial, keys: tuple[str, ...]) -> bool:
        return all(
            isinstance(t.metrics.get(k), (int, float)) and math.isfinite(t.metrics[k]) for k in keys
        )

    def objectives(self) -> tuple[list[Config], np.ndarray]:
        """Configs and objective values ``(n, 3)`` to maximise, for the surrogate."""
        keys = tuple(k for k, _ in MOBO_METRICS)
        ok = [t for t in self.trials if t.ok and self._has_metrics(t, keys)]
        if not ok:
            return [], np.zeros((0, len(keys)))
        acc = np.asarray([float(t.metrics["accuracy"]) for t in ok])
        floor = float(acc.min() - max(0.5 * (acc.max() - acc.min()), 0.05 * abs(acc.min()), 1e-3))
        lat_ok = [math.log(max(float(t.metrics["latency_ms"]), 1e-9)) for t in ok]
        par_ok = [math.log(max(float(t.metrics["params"]), 1.0)) for t in ok]
        infeasible = [t for t in self.trials if t.status == "infeasible"]
        rows, configs = [], []
        for t in ok + infeasible:
            a = float(t.metrics["accuracy"]) if t.ok else floor
            # a metric the evaluator did not reach (it stops at the first failed constraint)
            # is imputed as the worst feasible value: pessimistic, never attractive
            lat = _log_metric(t, "latency_ms", 1e-9, max(lat_ok))
            par = _log_metric(t, "params", 1.0, max(par_ok))
            rows.append([a, -lat, -par])
            configs.append(t.config)
        return configs, np.asarray(rows)

    def pareto_front(self) -> list[Trial]:
        """Non-dominated ok trials (accuracy up, latency and params down) at the highest
        fidelity present; the best-score trial when the metrics are missing."""
        keys = tuple(k for k, _ in MOBO_METRICS)
        ok = [t for t in self.trials if t.ok and self._has_metrics(t, keys)]
        if ok:
            top = max(t.fidelity for t in ok)
            ok = [t for t in ok if t.fidelity == top]
        if not ok:
            b = self.best()
            return [b] if b is not None else []
        y = np.asarray(
            [[t.metrics[k] if up else -t.metrics[k] for k, up in MOBO_METRICS] for t in ok]
        )
        front = []
        for i in range(len(ok)):
            dominated = np.any(np.all(y >= y[i], axis=1) & np.any(y > y[i], axis=1))
            if not dominated:
                front.append(ok[i])
        return front

    # -- proposals ---------------------------------------------------------------------------
    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        taken = self.taken_keys()
        configs, y = self.objectives()
        n_ok = sum(1 for t in self.trials if t.ok)
        done = len(self.trials) + self._asked_since_tell
        if done >= self.n_init and n_ok >= 2 and len(configs) >= 3:
            out = self._nehvi(n, configs, y, taken, rng)
        elif done >= self.n_init and n_ok >= 2:  # the metrics are missing: BO on the score
            used, s = penalised_scores(self.trials)
            out = bo_propose(
                self.space,
                [t.config for t in used],
                s,
                n,
                taken,
                rng,
                self.draw_seed("bo"),
                n_candidates=self.n_candidates,
                maxiter=self.gp_maxiter,
            )
        else:  # initial design, continued while fewer than two trials succeeded
            u = sobol(self.space.dim, 4 * n + 16, derive_seed(self.seed, "mobo-design"), skip=done)
            out = pick_from_unit(self.space, u, n, taken, rng)
        return [Suggestion(c, 1.0) for c in out]

    def _nehvi(
        self,
        n: int,
        configs: list[Config],
        y: np.ndarray,
        taken: set[str],
        rng: np.random.Generator,
    ) -> list[Config]:
        import torch
        from botorch.acquisition.multi_objective.logei import (
            qLogNoisyExpectedHypervolumeImprovement,
        )
        from botorch.models import ModelListGP
        from botorch.optim import optimize_acqf_discrete
        from botorch.sampling import SobolQMCNormalSampler

        x = encode(self.space, configs)
        with torch_seeded(self.draw_seed("gp")), warnings_off():
            model = ModelListGP(
                *[fit_gp(x, y[:, j], maxiter=self.gp_maxiter) for j in range(y.shape[1])]
            )
            lo, hi = y.min(axis=0), y.max(axis=0)
            ref = lo - 0.1 * np.maximum(hi - lo, 1e-6)
            front = x[_pareto_mask(y)]
            raw = bo_candidates(self.space, front, self.n_candidates, self.draw_seed("cand"))
            cands, cx = snap(self.space, raw)
            keep = unique_new(self.space, cands, taken)
            cands, cx = [cands[i] for i in keep], cx[keep]
            if not cands:
                return fresh_samples(self.space, n, taken, rng)
            acqf = qLogNoisyExpectedHypervolumeImprovement(
                model=model,
                ref_point=torch.as_tensor(ref, dtype=torch.float64),
                X_baseline=torch.as_tensor(x, dtype=torch.float64),
                sampler=SobolQMCNormalSampler(
                    torch.Size([self.mc_samples]), seed=self.draw_seed("mc") % (2**31)
                ),
                prune_baseline=True,
            )
            choice = torch.as_tensor(cx, dtype=torch.float64)
            picked, _ = optimize_acqf_discrete(
                acqf, q=min(n, len(cands)), choices=choice, unique=True
            )
        out: list[Config] = []
        for row in picked.cpu().numpy():
            i = int(np.argmin(np.abs(cx - row).sum(axis=1)))
            key = self.space.key(cands[i])
            if key not in taken:
                taken.add(key)
                out.append(cands[i])
        if len(out) < n:
            out += fresh_samples(self.space, n - len(out), taken, rng)
        return out


def _log_metric(t: Trial, key: str, floor: float, default: float) -> float:
    v = t.metrics.get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return math.log(max(float(v), floor))
    return default


def _pareto_mask(y: np.ndarray) -> np.ndarray:
    """Rows of ``y`` ``(n, m)`` (maximised) that no other row dominates."""
    mask = np.ones(len(y), dtype=bool)
    for i in range(len(y)):
        mask[i] = not np.any(np.all(y >= y[i], axis=1) & np.any(y > y[i], axis=1))
    return mask


def warnings_off() -> Any:
    import warnings

    ctx = warnings.catch_warnings()

    class _Ctx:
        def __enter__(self) -> None:
            ctx.__enter__()
            warnings.simplefilter("ignore")

        def __exit__(self, *exc: object) -> None:
            ctx.__exit__(*exc)

    return _Ctx()
