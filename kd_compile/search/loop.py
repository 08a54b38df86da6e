"""The search loop: ask -> evaluate -> journal -> tell, with resume by replay.

``run_search`` never loses a finished evaluation: each trial is appended (fsynced) to the
journal before the strategy hears of it. On resume the journal's trials are replayed through
``strategy.ask``/``tell`` in the same order, so a deterministic strategy ends in the same state
as if the run had never stopped, and the search continues from there.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Strategy
from .journal import Journal
from .space import Config, ParamSpace
from .trial import Suggestion, Trial, TrialStatus, best_trial

Evaluate = Callable[[Config, float, int], Trial]


@dataclass
class SearchResult:
    trials: list[Trial]
    resumed: int = 0
    duplicates: int = 0
    stopped_by_time: bool = False
    replay_mismatches: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.status == TrialStatus.OK]

    def best(self, fidelity: float | None = None) -> Trial | None:
        """The best trial (``best_trial``'s rule)."""
        return best_trial(self.trials, fidelity)


def run_search(
    space: ParamSpace,
    strategy: Strategy,
    evaluate: Evaluate,
    n_trials: int,
    journal: Journal,
    past: list[Trial] | None = None,
    *,
    batch_size: int = 1,
    time_limit_s: float | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    max_infeasible: int | None = None,
) -> SearchResult:
    """Spend a training budget of ``n_trials`` full-fidelity evaluations (counting replayed
    ones) and return every trial.

    Args:
        space: the search space (used to deduplicate proposals by ``space.key``).
        strategy: a freshly constructed, seeded strategy.
        evaluate: ``evaluate(config, fidelity, number) -> Trial``; must not raise for a
            failing candidate (return a ``failed`` trial instead).
        n_trials: training budget in full-fidelity evaluations: a trained trial (ok or failed)
            at fidelity f uses f of it, so single-fidelity strategies get ``n_trials``
            evaluations and multi-fidelity ones more, at the same training cost; infeasible
            candidates are rejected before training and not counted, up to
            ``max_infeasible`` of them.
        journal: an opened journal; each new trial is appended before ``tell``.
        past: trials read from the journal on resume.
        batch_size: suggestions asked per round.
        time_limit_s: stop asking for new candidates after this many seconds.
        on_trial: callback after each trial (progress display).
    """
    t0 = time.perf_counter()
    result = SearchResult(trials=[])
    cache: dict[tuple[str, float], Trial] = {}
    past = list(past or [])
    result.resumed = len(past)

    # replay: complete ask/tell rounds are re-asked and told the recorded answers in order, so
    # a deterministic strategy reaches the state it had; trials of an unfinished round go into
    # the cache, and the live loop below re-asks them and finds them there (no retraining).
    by_number = {t.number: t for t in past}
    result.trials.extend(sorted(past, key=lambda t: t.number))
    for t in past:
        cache[(space.key(t.config), t.fidelity)] = t
        if on_trial:
            on_trial(t)
    for numbers in journal.rounds:
        if not all(n in by_number for n in numbers):
            break
        chunk = [by_number[n] for n in numbers]
        asked = strategy.ask(len(chunk))
        for s, t in zip(asked, chunk):
            if space.key(s.config) != space.key(t.config) or s.fidelity != t.fidelity:
                result.replay_mismatches += 1
        strategy.tell(chunk)
    if result.replay_mismatches:
        warnings.warn(
            f"resume: {result.replay_mismatches} replayed proposals differ from the journal "
            "(non-deterministic strategy?); the journal's results are kept",
            stacklevel=2,
        )

    # ``n_trials`` counts training cost (a trial at fidelity f costs f): infeasible candidates
    # cost no training and do not use the budget, but they are capped so a space that is mostly
    # infeasible still terminates.
    number = len(result.trials)
    spent = sum(t.fidelity for t in result.trials if t.status != TrialStatus.INFEASIBLE)
    infeasible = sum(1 for t in result.trials if t.status == TrialStatus.INFEASIBLE)
    max_infeasible = max_infeasible if max_infeasible is not None else 20 * n_trials + 50
    asks = 0
    max_asks = 4 * (n_trials + max_infeasible) + 10
    while spent < n_trials - 1e-9 and infeasible < max_infeasible and asks < max_asks:
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            result.stopped_by_time = True
            break
        k = max(1, min(batch_size, math.ceil(n_trials - spent - 1e-9)))
        suggestions: list[Suggestion] = strategy.ask(k)
        asks += 1
        told: list[Trial] = []
        for s in suggestions:
            key = (space.key(s.config), s.fidelity)
            if key in cache:
                # already evaluated: tell the known answer again without training it again
                prev = cache[key]
                result.duplicates += 1
                told.append(prev)
                continue
            trial = evaluate(s.config, s.fidelity, number)
            journal.append(trial)
            cache[key] = trial
            result.trials.append(trial)
            told.append(trial)
            number += 1
            if trial.status == TrialStatus.INFEASIBLE:
                infeasible += 1
            else:
                spent += trial.fidelity
            if on_trial:
                on_trial(trial)
        journal.told([t.number for t in told])
        strategy.tell(told)
    result.seconds = time.perf_counter() - t0
    return result
