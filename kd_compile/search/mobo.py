"""Multi-objective BO (``mobo``): qNEHVI over objectives the caller names, read from metrics.

The strategy knows no metric: the caller passes the objectives (:class:`Objective`: a
``Trial.metrics`` key, its direction, an optional log scale, and whether the metric needs a
trained candidate), so the compiler's trade-off (accuracy up, latency and parameters down) is
the API's choice, not this module's. Draws go through
:class:`~kd_compile.search.random.ReplayableStrategy`, so a journal replay reproduces them.
The design and the acquisition's candidate set lose the configs a feasibility predicate
rejects before qNEHVI picks (:func:`~kd_compile.search.gp.unique_new`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from .base import register_strategy
from .gp import (
    bo_candidates,
    bo_propose,
    derive_seed,
    encode,
    fit_gp,
    fresh_samples,
    penalised_scores,
    pick_from_unit,
    snap,
    sobol,
    torch_seeded,
    unique_new,
)
from .random import ReplayableStrategy
from .space import Config, ParamSpace
from .trial import Suggestion, Trial, TrialStatus, pareto_mask, pareto_trials

__all__ = ["MultiObjectiveBO", "Objective"]


@dataclass(frozen=True)
class Objective:
    """One objective of a multi-objective strategy: the metric ``Trial.metrics[name]``.

    Attributes:
        name: the metric's key in ``Trial.metrics``.
        maximise: larger is better (else smaller is better).
        log_floor: model ``log(max(value, log_floor))`` rather than the value (for metrics that
            span orders of magnitude, e.g. latency or parameter count); None: the value itself.
        needs_training: the metric exists only for a trained candidate. Infeasible trials (rejected
            before training) then get a value worse than every feasible one; otherwise they keep
            their measured value (constraints are checked on the built, untrained candidate),
            the worst feasible value imputed when it was not measured.
    """

    name: str
    maximise: bool = False
    log_floor: float | None = None
    needs_training: bool = False

    def value(self, raw: Any) -> float:
        """The surrogate's target for a measured value: log-scaled if asked, larger is better."""
        v = math.log(max(float(raw), self.log_floor)) if self.log_floor is not None else float(raw)
        return v if self.maximise else -v


def _pure_pytorch_nehvi() -> None:
    """Keep BoTorch's qLogNEHVI on its PyTorch path. BoTorch (0.18) otherwise compiles a fused C++
    kernel on first use: a C++ toolchain and ninja at run time (37 s on a 2-core machine, each new
    machine), ``-march=native`` code cached under ``~/.cache/torch_extensions`` (which a Ray node
    of another CPU sharing that home could load), and proposals that could depend on whether the
    compile succeeded. The PyTorch path proposed the same configs on the toy problem (3.2 s
    against 5.0 s with the kernel loaded) and the same row on two seeds of the tabular benchmark
    (904 s against 813 s; README). A BoTorch without these module attributes is left as it is."""
    from botorch.acquisition.multi_objective import logei

    if hasattr(logei, "_load_attempted") and hasattr(logei, "_C"):
        logei._load_attempted = True
        logei._C = None


def _measured(t: Trial, key: str) -> bool:
    v = t.metrics.get(key)
    return isinstance(v, (int, float)) and math.isfinite(v)


@register_strategy("mobo")
class MultiObjectiveBO(ReplayableStrategy):
    """qNEHVI (BoTorch ``qLogNoisyExpectedHypervolumeImprovement``) over the given objectives.

    One GP per objective (on a log scale where the objective asks for it), inputs in the unit
    cube; the acquisition is maximised over a discrete set of snapped candidates (Sobol +
    perturbations of Pareto points) by sequential greedy batch selection. Infeasible trials
    take part with the values :class:`Objective` gives them (below every feasible value for a
    metric that needs training, the measured or the worst feasible value otherwise), so the
    front is steered away from them. The reference point is the worst observed value of each
    objective minus 10 % of its range. The first ``n_init`` suggestions are a Sobol design
    (continued while fewer than two trials succeeded); when fewer than three trials carry
    every objective's metric (an evaluator that does not report them), it falls back to
    single-objective GP Thompson sampling on the scalar score.

    Options:
        objectives: at least two :class:`Objective` (or tuples of its fields), required.
        n_init: Sobol design size (default ``max(4, min(2 n_params, budget // 4))``).
        n_candidates: discrete candidate set size (default 500).
        mc_samples: QMC samples of the acquisition (default 32: each sample needs its own
            box decomposition of the front, the main CPU cost with three objectives).
        gp_maxiter: L-BFGS iterations per GP fit.
    """

    multi_objective = True

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        objectives: Sequence[Objective | tuple[Any, ...]] | None = None,
        n_init: int | None = None,
        n_candidates: int = 500,
        mc_samples: int = 32,
        gp_maxiter: int = 200,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        objs = tuple(o if isinstance(o, Objective) else Objective(*o) for o in objectives or ())
        if len(objs) < 2:
            raise UsageError(
                "strategy 'mobo' needs objectives=[Objective(metric, maximise, ...), ...], at least two"
            )
        names = [o.name for o in objs]
        if len(set(names)) != len(names):
            raise UsageError(f"strategy 'mobo' got an objective twice: {', '.join(names)}")
        self.objectives: tuple[Objective, ...] = objs
        self.n_init = int(n_init or max(4, min(2 * len(space.params), (budget or 40) // 4)))
        self.n_candidates = int(n_candidates)
        self.mc_samples = int(mc_samples)
        self.gp_maxiter = int(gp_maxiter)

    # -- data --------------------------------------------------------------------------------
    def _has_metrics(self, t: Trial) -> bool:
        return all(_measured(t, o.name) for o in self.objectives)

    def targets(self) -> tuple[list[Config], np.ndarray]:
        """Configs and their objective values ``(n, len(objectives))`` to maximise, for the
        surrogates: the ok trials that carry every metric, then the infeasible trials."""
        ok = [t for t in self.trials if t.ok and self._has_metrics(t)]
        if not ok:
            return [], np.zeros((0, len(self.objectives)))
        # per objective, the value an infeasible trial gets where it has none of its own
        fills: list[float] = []
        for o in self.objectives:
            v = np.asarray([o.value(t.metrics[o.name]) for t in ok])
            if o.needs_training:  # never trained: below every feasible value
                fills.append(float(v.min() - max(0.5 * (v.max() - v.min()), 0.05 * abs(v.min()), 1e-3)))
            else:  # not reached (the evaluator stops at the first failed constraint): the worst
                fills.append(float(v.min()))
        infeasible = [t for t in self.trials if t.status == TrialStatus.INFEASIBLE]
        rows, configs = [], []
        for t in ok + infeasible:
            row = []
            for o, fill in zip(self.objectives, fills):
                keep = t.ok or (not o.needs_training and _measured(t, o.name))
                row.append(o.value(t.metrics[o.name]) if keep else fill)
            rows.append(row)
            configs.append(t.config)
        return configs, np.asarray(rows)

    def pareto_front(self) -> list[Trial]:
        """Non-dominated ok trials over the objectives' raw metrics at the highest fidelity
        (``pareto_trials``); the best trial when no trial carries the metrics."""
        usable = [t for t in self.trials if t.ok and self._has_metrics(t)]
        front = pareto_trials(usable, [(o.name, o.maximise) for o in self.objectives])
        if front:
            return front
        b = self.best()
        return [b] if b is not None else []

    # -- proposals ---------------------------------------------------------------------------
    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        taken = self.taken_keys()
        configs, y = self.targets()
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
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.models import ModelListGP
        from botorch.optim import optimize_acqf_discrete
        from botorch.sampling import SobolQMCNormalSampler

        _pure_pytorch_nehvi()
        x = encode(self.space, configs)
        # BoTorch warns about input scaling and numerics that the unit-cube encoding and the
        # standardised outcomes already handle; a search log is no place for them
        with torch_seeded(self.draw_seed("gp")), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ModelListGP(*[fit_gp(x, y[:, j], maxiter=self.gp_maxiter) for j in range(y.shape[1])])
            lo, hi = y.min(axis=0), y.max(axis=0)
            ref = lo - 0.1 * np.maximum(hi - lo, 1e-6)
            front = x[pareto_mask(y)]
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
                sampler=SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=self.draw_seed("mc") % (2**31)),
                prune_baseline=True,
            )
            choice = torch.as_tensor(cx, dtype=torch.float64)
            picked, _ = optimize_acqf_discrete(acqf, q=min(n, len(cands)), choices=choice, unique=True)
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
