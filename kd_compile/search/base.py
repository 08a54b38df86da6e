"""Search strategy interface: ``ask(n) -> [Suggestion]``, ``tell([Trial])``, and its registry.

All strategies *minimise* ``Trial.score`` (see ``trial.py`` for statuses). Strategies must stay
deterministic under a seed: the search loop rebuilds a strategy's state on ``--resume`` by
replaying the journal through ``ask``/``tell``.

Fidelity: a float in (0, 1], the share of the proxy training budget a suggestion asks for
(1.0 = the search's full proxy training). Single-fidelity strategies always ask for 1.0.
The training budget counts full-fidelity trainings: the search loop charges a trial at
fidelity f with f of it, so a multi-fidelity strategy given ``budget=B`` may run, say, 3B
evaluations at fidelity 1/3.

Feasibility: ``feasible=`` (a pure, cheap predicate on a config, e.g. an analytic parameter
count against ``--max-params``) rides on the strategy's copy of the space
(``ParamSpace.with_constraint``), so the shared candidate helpers of ``gp.py`` drop
infeasible configs before any proposal exists. Every built-in strategy generates through
them; when a bounded number of tries finds no new feasible config, a strategy proposes its
best-effort (new but infeasible) config instead, so ``ask(n)`` still returns n: such
proposals are counted in ``Strategy.infeasible_proposals``. With ``feasible=None`` nothing
changes (same proposals, draw for draw).

Screening: ``screen=`` is a second, *costly* pure predicate (e.g. build the student and predict
its latency on the target: tens of milliseconds, too slow for the thousands of candidates a GP
strategy scores). It is applied lazily, to proposals only: ``ask`` drops the proposals it
rejects, remembers their keys (``excluded_keys``: a strategy never proposes them again) and asks
``_ask`` again (for twice as many as are missing, doubling each round, up to 16 n; the first that
pass are kept), in at most :data:`SCREEN_ROUNDS` rounds; after that it returns
the rejected proposals as a best effort (counted in ``infeasible_proposals``). Screened-out
configs are not told as trials: the predicate is known, there is nothing to learn from them
(``Strategy.screened`` counts them). The search loop replays a journal round by round, so a
resumed strategy screens out the same configs and proposes what the original run proposed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..registry import Registry
from .space import Config, Feasible, ParamSpace
from .trial import Suggestion, Trial, best_trial

#: rounds of re-asking for proposals the screen rejected, before a best-effort fallback
SCREEN_ROUNDS = 8

__all__ = [
    "GP_STRATEGY",
    "RUN_SET_OPTIONS",
    "SCREEN_ROUNDS",
    "Recommendation",
    "Strategy",
    "create_strategy",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "strategy_options",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    """What a strategy hands back as its result once the search is over.

    Attributes:
        config: the recommended config (the student the compiler trains in full).
        trial: the trial that evaluated this config during the search, at the highest fidelity
            it was evaluated at; None when the search never trained it (a model's prediction).
        by: how it was chosen, in words (the report quotes it).
    """

    config: Config
    trial: Trial | None
    by: str

    @property
    def trained_at(self) -> float | None:
        """The fidelity the recommended config was trained at during the search (None: never)."""
        return None if self.trial is None else float(self.trial.fidelity)


class Strategy:
    """Base strategy. Subclasses implement ``_ask`` and optionally ``_tell``.

    Args:
        space: the search space.
        seed: seed for every random choice the strategy makes.
        budget: the training budget the loop will spend, in full-fidelity trainings (a trial
            at fidelity f costs f); strategies may plan with it.
        feasible: a predicate ``feasible(config) -> bool``, pure and cheap (see the module
            docstring); ``self.space`` is then ``space.with_constraint(feasible)``, and
            candidates it rejects are never proposed while a feasible new one can be found.
            None: no filtering (proposals exactly as without the option).
        screen: a costly pure predicate ``screen(config) -> bool`` applied to proposals only
            (module docstring); None: no screening.
    """

    name = "base"
    multi_fidelity = False
    multi_objective = False
    #: True when ``recommend`` fits a model (seconds), so a benchmark calls it only where it
    #: reads the result (``kd_compile.testing.tabular.run_strategy``); False: it is a lookup
    costly_recommend = False

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        feasible: Feasible | None = None,
        screen: Feasible | None = None,
        **options: Any,
    ):
        if options:
            raise UsageError(f"strategy '{self.name}' got unknown options: {', '.join(sorted(options))}")
        if feasible is not None and not callable(feasible):
            raise UsageError(f"strategy '{self.name}': feasible must be a callable config -> bool")
        if screen is not None and not callable(screen):
            raise UsageError(f"strategy '{self.name}': screen must be a callable config -> bool")
        self.space = space.with_constraint(feasible)
        self.screen = screen
        self._screen_memo: dict[str, bool] = {}
        #: keys of configs the screen rejected (never proposed again), and of those kept so far
        #: in the ask being screened (so a re-ask does not repeat them)
        self._screened_keys: set[str] = set()
        self._reserved: set[str] = set()
        self.budget = budget
        self.trials: list[Trial] = []
        #: proposals the space's constraint rejects (best-effort fallbacks when no feasible new
        #: config was found within the bounded tries); always 0 without a constraint
        self.infeasible_proposals = 0
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    # -- public API --------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Suggestion]:
        if n < 1:
            raise ValueError("ask(n) needs n >= 1")
        out = self._checked_ask(n)
        if self.screen is not None:
            out = self._screened(out, n)
        if self.space.constraint is not None or self.screen is not None:
            bad = sum(1 for s in out if not (self.space.feasible(s.config) and self.passes_screen(s.config)))
            if bad:
                self.infeasible_proposals += bad
                _log.debug("strategy %s: %d of %d proposals infeasible (fallback)", self.name, bad, n)
        return out

    def tell(self, trials: list[Trial]) -> None:
        self.trials.extend(trials)
        self._tell(trials)

    @property
    def screened(self) -> int:
        """How many distinct configs the screen has rejected so far (never trained)."""
        return len(self._screened_keys)

    def excluded_keys(self) -> set[str]:
        """Keys a proposal must avoid besides the told and pending ones: configs the screen
        rejected, and those already kept in the ask being screened."""
        return self._screened_keys | self._reserved

    def passes_screen(self, config: Config) -> bool:
        """Whether ``config`` passes the screen (memoised by key; True without a screen)."""
        if self.screen is None:
            return True
        k = self.space.key(config)
        ok = self._screen_memo.get(k)
        if ok is None:
            ok = self._screen_memo[k] = bool(self.screen(self.space.canonical(config)))
        return ok

    def _checked_ask(self, n: int) -> list[Suggestion]:
        out = self._ask(n)
        if len(out) != n:
            raise RuntimeError(f"strategy {self.name} returned {len(out)} suggestions, asked {n}")
        return out

    def _screened(self, out: list[Suggestion], n: int) -> list[Suggestion]:
        """``n`` proposals that pass the screen: rejected ones are excluded and asked again, in
        at most :data:`SCREEN_ROUNDS` rounds, then filled with the rejected (best effort)."""
        kept: list[Suggestion] = []
        rejected: list[Suggestion] = []
        batch = out
        try:
            for round_ in range(SCREEN_ROUNDS + 1):
                for s in batch:
                    k = self.space.key(s.config)
                    if self.passes_screen(s.config):
                        if len(kept) < n:
                            kept.append(s)
                            self._reserved.add(k)
                    else:
                        self._screened_keys.add(k)
                        rejected.append(s)
                if len(kept) >= n or round_ == SCREEN_ROUNDS:
                    break
                # ask for more than are missing, doubling each round (up to 16 n): a model whose
                # favourite region the screen rejects would otherwise spend a fit per exclusion
                batch = self._checked_ask(min((n - len(kept)) * 2 ** (round_ + 1), 16 * n))
        finally:
            self._reserved.clear()
        if len(kept) < n:
            _log.debug("strategy %s: screen left %d of %d proposals; best effort", self.name, len(kept), n)
            kept += rejected[: n - len(kept)]
        return kept

    # -- hooks -------------------------------------------------------------------------------
    def _ask(self, n: int) -> list[Suggestion]:
        raise NotImplementedError

    def _tell(self, trials: list[Trial]) -> None:
        """Update internal state. Default: nothing (``self.trials`` already holds them)."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def completed(self, fidelity: float | None = None) -> list[Trial]:
        """Ok trials (optionally at one fidelity)."""
        return [t for t in self.trials if t.ok and (fidelity is None or t.fidelity == fidelity)]

    def best(self) -> Trial | None:
        """The best trial told so far (``best_trial``'s rule)."""
        return best_trial(self.trials)

    def recommend(self) -> Recommendation | None:
        """The strategy's result from the trials told so far: by default the best trial
        (``best_trial``'s rule: the lowest score among the ok trials at the highest fidelity).
        A strategy whose method returns something else (e.g. a model's argmax that was never
        trained, Trofimov et al.'s Algorithm 1) overrides it. None when nothing can be
        recommended (no ok trial)."""
        b = self.best()
        return None if b is None else Recommendation(b.config, b, "the best trial at the highest fidelity")


_STRATEGIES: Registry[Strategy] = Registry("strategies", UsageError)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (an unknown name raises ``UsageError``)."""
    return _STRATEGIES.get(name)  # type: ignore[return-value]


def register_strategy(name: str):
    def deco(cls):
        cls.name = name
        return _STRATEGIES.register(name)(cls)

    return deco


#: constructor arguments kd-compile sets from the run itself, never from ``--strategy-options``
RUN_SET_OPTIONS = ("space", "seed", "budget", "feasible", "screen", "objectives")


def strategy_options(cls: type[Strategy]) -> list[str]:
    """The options a strategy class takes (``--strategy-options`` keys): the keyword parameters
    of its ``__init__`` and its bases', less those the run sets (:data:`RUN_SET_OPTIONS`)."""
    import inspect

    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds}
    return sorted(names - set(RUN_SET_OPTIONS) - {"self"})


def create_strategy(name: str, space: ParamSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    """Create a registered strategy (built-ins register when ``kd_compile.search`` is imported).

    Raises:
        UsageError: an unknown name, or an option outside its rule (:mod:`.options`).
    """
    from .options import check_strategy_options

    check_strategy_options(get_strategy(name), kwargs)
    return _STRATEGIES.create(name, space, seed=seed, **kwargs)


def list_strategies() -> list[str]:
    return _STRATEGIES.names()


#: Name of the default ``--strategy``: resolved per run by :func:`strategy_for_budget`.
AUTO = "auto"
#: Fewest candidates for which ``auto`` fits a model (TuRBO-m). Below it a GP over the searched
#: space (about 35 dimensions for TRADE with the KD parameters) would be fitted on fewer points
#: than the space has dimensions, and a quasi-random design spends the budget better: on the
#: bundled glyph example at budget 8, sobol gave 86.04% +- 0.37 test accuracy over 3 seeds against
#: turbo's 82.32% +- 2.39 (``benchmarks/e2e_glyphs.py --seeds 3 --strategy ...``).
GP_MIN_BUDGET = 20
#: The model-based strategy ``auto`` runs from :data:`GP_MIN_BUDGET` candidates: on the tabular
#: benchmark with the shipped GP settings (README, strategy tables, 20 seeds) turbo-m (several
#: trust regions) matched random's median regret at 50 by a cost of 23 where turbo-1 did not
#: within 50, and the 10-class confirmation table ranks it at least level with turbo-1 (both match
#: at 14; mean regret .061 against .074).
GP_STRATEGY = "turbo-m"


def strategy_for_budget(name: str, budget: int) -> str:
    """The strategy a run uses: ``name`` itself, or for ``auto`` quasi-random ``sobol`` below
    :data:`GP_MIN_BUDGET` candidates and :data:`GP_STRATEGY` from there."""
    if name != AUTO:
        return name
    return "sobol" if budget < GP_MIN_BUDGET else GP_STRATEGY
