"""Two-fidelity GP strategies: ``lf-gpr``, ``lf-gpr-hybrid``, ``lf-then-hf`` and ``mfkd``.

* ``lf-gpr``: "NAS with low-fidelity evaluations only" (Trofimov et al., Alg. 1): the whole
  budget as a random (scrambled-Sobol) sample at low fidelity, a GP on those scores, and as the
  result the GP's argmax over the space (:meth:`Strategy.recommend`), a config that may never
  have been trained: the compiler's final training is its first full training.
* ``lf-gpr-hybrid``: the same low-fidelity design and GP on three quarters of the budget, then
  full-fidelity checks of the GP's favourites, the best checked one being the result.
* ``lf-then-hf``: Trofimov et al., Alg. 2: GP-BO at low fidelity, then GP-BO at full fidelity
  started from the best low-fidelity configs.
* ``mfkd``: MF-KD's two-fidelity co-kriging ``y_high = rho * y_low + delta`` (one GP, ``rho``
  fitted by maximum likelihood with it) and a UCB rule for the next full-fidelity point.

All evaluate at two fidelities, ``low_fidelity`` and 1.0, and draw through
:class:`~kd_compile.search.random.ReplayableStrategy`, so a journal replay (``ask``/``tell``
round by round) reproduces every proposal. Designs, candidate sets and the measured configs
they promote lose the configs a feasibility predicate rejects before a GP ranks them
(:func:`~kd_compile.search.gp.unique_new`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Recommendation, register_strategy
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
from .space import Config, ParamSpace
from .trial import Suggestion, TrialStatus

__all__ = ["LowFidelityGPR", "LowFidelityGPRHybrid", "LowThenHighFidelity", "MultiFidelityCoKriging"]


class _TwoFidelity(ReplayableStrategy):
    """Base for the two-fidelity GP strategies (low fidelity ``low_fidelity``, high 1.0)."""

    multi_fidelity = True

    def __init__(
        self,
        space: ParamSpace,
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
            1 for t in self.trials if t.fidelity == fidelity and t.status == TrialStatus.INFEASIBLE
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
    """Trofimov et al.'s Algorithm 1: NAS with low-fidelity evaluations only.

    Every suggestion is the next point of a scrambled-Sobol design at ``low_fidelity`` (the
    paper samples uniformly at random; a scrambled Sobol sequence is a random sample that
    covers the space more evenly), so the whole training budget, ``budget / low_fidelity``
    evaluations, goes to the low-fidelity sample and none to full fidelity. The result
    (:meth:`recommend`) is the argmax of a GP fitted to the low-fidelity scores, over the
    measured configs plus ``n_candidates`` candidates, half Sobol points over the whole space and
    half perturbations of the best measured configs (the paper's argmax is over its whole finite
    space; ours is too large to enumerate, so the argmax is taken over that candidate set).
    Candidates break no feasibility constraint and pass the strategy's screen; the argmax may
    be a config that was never trained.
    """

    costly_recommend = True

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        return [Suggestion(c, self.low) for c in self.design(n, self.low, self.taken_keys(self.low), rng)]

    def recommend(self) -> Recommendation | None:
        configs, y = self.data(self.low)
        ok = [t for t in self.trials if t.ok]
        if not ok:
            return None
        if len(configs) < 3:  # too few points for a GP: the best measured config
            return super().recommend()
        x = encode(self.space, configs)
        # seeded by the trials told (not by draws), so the same trials give the same argmax
        seed = derive_seed(self.seed, "recommend", len(self.trials))
        with torch_seeded(seed):
            model = fit_gp(x, -y, maxiter=self.gp_maxiter)
            top = x[np.argsort(y)[: max(1, min(5, len(y) // 3))]]
            fresh, _ = snap(self.space, bo_candidates(self.space, top, self.n_candidates, derive_seed(seed, "cand")))
            pool = list(configs) + fresh
            cands = [pool[i] for i in unique_new(self.space, pool, set())]
            if not cands:
                return super().recommend()
            mean, _ = posterior_mean_std(model, encode(self.space, cands))
        # the best predicted config that passes the screen (screened lazily, best first: a
        # screen costs tens of milliseconds a config)
        pick = next((cands[i] for i in np.argsort(-mean, kind="stable") if self.passes_screen(cands[i])), None)
        if pick is None:
            return super().recommend()
        key = self.space.key(pick)
        measured = [t for t in ok if self.space.key(t.config) == key]
        trial = max(measured, key=lambda t: t.fidelity) if measured else None
        return Recommendation(
            self.space.canonical(pick), trial, f"lf-gpr: the argmax of a GP on {len(configs)} low-fidelity scores"
        )


@register_strategy("lf-gpr-hybrid")
class LowFidelityGPRHybrid(_TwoFidelity):
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
            seeds = [c for c in seeds if self.space.key(c) not in taken and self.space.feasible(c)]
            n_seed = max(0, min(k, self.n_seeds - self.trained(1.0), len(seeds)))
            cfgs = seeds[:n_seed]
            taken.update(self.space.key(c) for c in cfgs)
            cfgs += self.bo(1.0, k - n_seed, taken, rng) if k > n_seed else []
            out += [Suggestion(c, 1.0) for c in cfgs]
        return out


@register_strategy("mfkd")
class MultiFidelityCoKriging(_TwoFidelity):
    """MF-KD (its Algorithm 1): co-kriging of two fidelities with a UCB rule.

    Warm-up: ``n_init`` low-fidelity and ``n_high_init`` full-fidelity points, each a scrambled-
    Sobol sample (the paper samples at random). Then, while the budget lasts, one GP models
    ``y_high(x) = rho * y_low(x) + delta(x)`` (:mod:`~kd_compile.search.cokriging`: the AR(1)
    covariance over both fidelities, ``rho`` fitted by exact marginal likelihood jointly with
    both kernels, the means and the noise), and the next config is the candidate with the best
    ``UCB = mean + beta * std`` of the predicted full-fidelity value, evaluated at full
    fidelity. The result is the best trial at full fidelity (the paper's "best validation score
    after E2 epochs").

    Departures from the paper: the exploration term is ``beta * std`` where the
    paper writes ``beta * Var`` (the standard deviation makes ``beta`` independent of the
    score's units); the candidates are ``n_candidates`` Sobol points *plus the configs measured
    at low fidelity* (the paper draws N = 5000 random architectures from NAS-Bench-201's 15,625,
    which holds most measured ones; a random set over our space almost never does, and promoting
    a measured config is where the low-fidelity runs pay off); and with ``gamma`` set, a chosen
    point is evaluated at low fidelity while the model is still unsure of its low-fidelity value
    (``|rho| * beta * std_low > gamma * std(y_low)``, the MF-GP-UCB rule of Kandasamy et al.;
    the paper evaluates every post-warm-up point at full fidelity).

    Options:
        n_init: low-fidelity warm-up points (default: a quarter of the training budget,
            ``budget / 4 / low_fidelity``, at least 4; the paper's 100 one-epoch runs against
            12-epoch full runs are about 8 full trainings' worth).
        n_high_init: full-fidelity warm-up points (default ``max(2, budget // 10)``).
        beta: exploration weight (default 1.0, as in the paper).
        gamma: None (default, the paper: full fidelity after the warm-up) or the MF-GP-UCB
            threshold as a share of the low scores' spread (e.g. 0.25).
        local: draw half of the fresh candidates around the best low configs (default False).
    """

    def __init__(
        self,
        *args: Any,
        n_high_init: int | None = None,
        beta: float = 1.0,
        gamma: float | None = None,
        local: bool = False,
        **kwargs: Any,
    ) -> None:
        n_init = kwargs.pop("n_init", None)
        super().__init__(*args, **kwargs)
        self.n_init = int(n_init or _default_low_runs(self.budget, 0.25, 3, self.low))
        self.n_high_init = int(n_high_init or max(2, (self.budget or 20) // 10))
        self.beta = float(beta)
        self.gamma = None if gamma is None else float(gamma)
        self.local = bool(local)
        #: the scaling factor of the last co-kriging fit (None before one)
        self.rho: float | None = None

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
        from .cokriging import fit_cokriging, predict, rho_of

        lo_cfg, lo_y = self.data(self.low)
        hi_cfg, hi_y = self.data(1.0)
        taken = {1.0: self.taken_keys(1.0), self.low: self.taken_keys(self.low)}
        if len(lo_cfg) < 2 or not hi_cfg:
            fid = self.low if len(lo_cfg) < 2 else 1.0
            return [Suggestion(c, fid) for c in fresh_samples(self.space, n, taken[fid], rng)]
        with torch_seeded(self.draw_seed("gp")):
            x_lo, x_hi = encode(self.space, lo_cfg), encode(self.space, hi_cfg)
            model = fit_cokriging(x_lo, -lo_y, x_hi, -hi_y, maxiter=self.gp_maxiter)
            self.rho = rho = rho_of(model)
            # local: half of the fresh candidates perturb the best low configs; else all Sobol
            top = x_lo[np.argsort(lo_y)[: max(1, min(5, len(lo_y) // 3))]] if self.local else x_lo[:0]
            raw = bo_candidates(self.space, top, self.n_candidates, self.draw_seed("cand"))
            fresh, fx = snap(self.space, raw)
            cands, cx = list(lo_cfg) + fresh, np.concatenate([x_lo, fx])
            keep = unique_new(self.space, cands, taken[1.0])
            cands, cx = [cands[i] for i in keep], cx[keep]
            if not cands:
                return [Suggestion(c, 1.0) for c in fresh_samples(self.space, n, taken[1.0], rng)]
            mean, std = predict(model, cx, high=True)
            s_lo = predict(model, cx, high=False)[1] if self.gamma is not None else np.zeros(len(cands))
        ucb = mean + self.beta * std
        spread = float(np.std(lo_y)) or 1.0
        out: list[Suggestion] = []
        for i in np.argsort(-ucb, kind="stable"):
            key = self.space.key(cands[i])
            want_low = self.gamma is not None and abs(rho) * self.beta * s_lo[i] > self.gamma * spread
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
