"""BOHB (Falkner et al. 2018): Hyperband brackets of successive halving over fidelity, with
Tree-Parzen (KDE-ratio) proposals once enough results exist at some fidelity.

Bracket bookkeeping is recorded at ``ask`` time and draws go through
:class:`~kd_compile.search.random.ReplayableStrategy`, so a journal replay (``ask``/``tell``
round by round) rebuilds the brackets and reproduces every proposal.

The model is the paper's (Falkner et al. 2018, Section 4 and Algorithm 2) with the defaults of
its reference implementation (HpBandSter's ``BOHB`` config generator):

* ``N_min = d + 1`` points per KDE (``d`` = number of parameters); a budget gets a model once it
  has ``N_min + 2`` results, and models come from the highest budget that has one;
* the good set is the best ``max(N_min, q * N_b)`` results (``q`` = 15 %), the bad set the worst
  ``max(N_min, N_b - |good|)``: with few results the two overlap, so the good set never shrinks
  below ``N_min`` (the KDE over 2 points in 31 dimensions that an earlier version fitted);
* bandwidths by the normal reference rule (statsmodels ``normal_reference``:
  ``1.06 * std * n ** (-1 / (4 + d))``) with a floor of ``min_bandwidth = 1e-3``; new
  points are drawn around a good point from a truncated normal of ``bandwidth_factor`` (3)
  times the good bandwidth, a category is kept with probability ``1 - bw`` (else uniform),
  and the best of ``num_samples`` (64) draws by ``l(x) / g(x)`` is proposed;
* a fraction ``random_fraction = 1/3`` of new configs is drawn uniformly at random.

Where it departs from the paper: integer and ordinal ("choice") parameters are continuous
coordinates of the unit cube (their bin centres), as ConfigSpace's vector form gives
HpBandSter for integers, rather than statsmodels' ordered kernel; a category's bandwidth is
capped at ``(c - 1) / c``, where its Aitchison-Aitken kernel is uniform (the normal reference
rule can exceed it on category indices, and a larger value would give negative kernel weights);
an infeasible trial (a measured constraint broken) is modelled with an infinite loss as in
HpBandSter, but a failed one (a crash) is not modelled, as a crash says nothing about quality;
a draw the space's feasibility predicate rejects is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import register_strategy
from .gp import fitness, fresh_samples
from .random import ReplayableStrategy
from .space import Config, ParamSpace
from .trial import Suggestion, Trial, TrialStatus

__all__ = ["BOHB"]


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
    enough results; see the module docstring) or, with probability ``random_fraction``, at
    random; either way a config the feasibility predicate rejects is skipped (and never promoted).

    Bracket bookkeeping is recorded at ``ask`` time; the loop's resume replays ``ask``/``tell``
    round by round, which rebuilds it.

    Options:
        eta: halving rate (3). min_fidelity: the cheapest rung (1/9).
        random_fraction: share of random new configs (1/3). min_points: ``N_min``, the fewest
            points in each KDE (default ``n_params + 1``; a budget is modelled from ``N_min + 2``
            results). top_n_percent: the good share (15). bandwidth_factor: widening of the
            sampling KDE (3). min_bandwidth: the bandwidth floor (1e-3). num_samples: draws
            scored by ``l(x) / g(x)`` per proposal (64).
    """

    multi_fidelity = True

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        eta: int = 3,
        min_fidelity: float = 1.0 / 9.0,
        random_fraction: float = 1.0 / 3.0,
        min_points: int | None = None,
        top_n_percent: float = 15.0,
        bandwidth_factor: float = 3.0,
        min_bandwidth: float = 1e-3,
        num_samples: int = 64,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        self.eta = int(eta)
        self.s_max = max(0, math.floor(math.log(1.0 / min_fidelity, self.eta) + 1e-9))
        self.random_fraction = float(random_fraction)
        self.min_points = int(min_points or len(space.params) + 1)
        self.top_n_percent = float(top_n_percent)
        self.bandwidth_factor = float(bandwidth_factor)
        self.min_bandwidth = float(min_bandwidth)
        self.num_samples = int(num_samples)
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
            out[(self.space.key(t.config), t.fidelity)] = fitness(t)
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
                if key not in inrung and key not in taken and self.space.feasible(cfg):
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
        """(good, bad) points of the highest fidelity with ``N_min + 2`` results, or None.

        Good: the best ``max(N_min, q * N_b)``; bad: the worst ``max(N_min, N_b - |good|)``
        (the paper's split, overlapping while results are few). An infeasible trial ranks last
        (an infinite loss, as HpBandSter models a run without a result).
        """
        by_fid: dict[float, list[Trial]] = {}
        for t in self.trials:
            if t.status != TrialStatus.FAILED:
                by_fid.setdefault(t.fidelity, []).append(t)
        for fid in sorted(by_fid, reverse=True):
            ts = by_fid[fid]
            if len(ts) < self.min_points + 2 or not any(t.ok for t in ts):
                continue
            order = sorted(range(len(ts)), key=lambda i: (fitness(ts[i]), i))
            n_good = max(self.min_points, int(self.top_n_percent * len(ts)) // 100)
            n_bad = max(self.min_points, len(ts) - n_good)
            good = [self._vec(ts[i].config) for i in order[:n_good]]
            bad = [self._vec(ts[i].config) for i in order[len(ts) - n_bad :]]
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
        """Normal-reference bandwidths (statsmodels' rule, ``d`` in the exponent), floored at
        ``min_bandwidth``; a category's is capped where its kernel is uniform."""
        n, d = pts.shape
        bw = np.maximum(1.06 * pts.std(axis=0) * n ** (-1.0 / (4 + d)), self.min_bandwidth)
        for j, p in enumerate(self.space.params):
            if p.kind == "cat":
                bw[j] = min(bw[j], (p.width - 1) / p.width)
        return bw

    def _density(self, x: np.ndarray, pts: np.ndarray, bw: np.ndarray) -> np.ndarray:
        """Product-kernel density of rows ``x`` ``(m, p)`` under data ``pts`` ``(k, p)``."""
        logk = np.zeros((len(x), len(pts)))
        for j, p in enumerate(self.space.params):
            diff = x[:, j : j + 1] - pts[None, :, j]
            if p.kind == "cat":
                lam = bw[j]  # Aitchison-Aitken: the same category weighs 1 - lam
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
        n_samples: int | None = None,
    ) -> Config | None:
        from scipy.stats import truncnorm

        n_samples = int(n_samples or self.num_samples)
        bw_g, bw_b = self._bandwidths(good), self._bandwidths(bad)
        base = good[rng.integers(0, len(good), size=n_samples)]
        cand = base.copy()
        for j, p in enumerate(self.space.params):
            if p.kind == "cat":  # keep the category with probability 1 - bw, else any category
                flip = rng.random(n_samples) >= 1.0 - bw_g[j]
                cand[flip, j] = rng.integers(0, p.width, size=int(flip.sum()))
            else:  # a truncated normal on [0, 1] around the good point, bandwidth_factor wider
                scale = self.bandwidth_factor * bw_g[j]
                m = base[:, j]
                cand[:, j] = truncnorm.rvs(-m / scale, (1 - m) / scale, loc=m, scale=scale, random_state=rng)
        score = self._density(cand, good, bw_g) - self._density(cand, bad, bw_b)
        for i in np.argsort(-score, kind="stable"):
            cfg = self._unvec(cand[i])
            if self.space.key(cfg) not in taken and self.space.feasible(cfg):
                return cfg
        return None
