"""The search loop: ask -> evaluate -> journal -> tell, with resume by replay.

``run_search`` never loses a finished evaluation: each trial is appended (fsynced) to the
journal before the strategy hears of it. On resume the journal's trials are replayed through
``strategy.ask``/``tell`` in the same order, so a deterministic strategy ends in the same state
as if the run had never stopped, and the search continues from there.

A round asks the strategy for a batch of suggestions. Each new candidate gets its trial number
when it is submitted, so numbers do not depend on which evaluation finishes first; with an
``evaluate_batch`` (an executor running candidates side by side, e.g. Ray tasks) results arrive
in any order and the driver (this loop, alone) appends each to the journal as it arrives. The
round's ``told`` record, written once all its results are in, lists the numbers in suggestion
order: replay re-asks exactly that round.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .base import Recommendation, Strategy
from .journal import Journal
from .space import Config, ParamSpace
from .trial import Suggestion, Trial, TrialStatus, best_trial

#: rounds in a row of nothing but best-effort infeasible proposals after which a search ends
HOPELESS_ROUNDS = 3

Evaluate = Callable[[Config, float, int], Trial]


class Job(NamedTuple):
    """One candidate to evaluate: ``evaluate(config, fidelity, number)``'s arguments."""

    config: Config
    fidelity: float
    number: int


# evaluate_batch(jobs) -> the jobs' trials, yielded as each finishes (any order; each trial
# carries its job's number). It must not raise for a failing candidate.
EvaluateBatch = Callable[[Sequence[Job]], Iterable[Trial]]


@dataclass
class SearchResult:
    trials: list[Trial]
    resumed: int = 0
    duplicates: int = 0
    stopped_by_time: bool = False
    replay_mismatches: int = 0
    #: proposals the strategy's screen rejected before they reached the evaluator (never trained)
    screened: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the strategy's result (``Strategy.recommend``) once the search is over; None: no ok trial
    recommendation: Recommendation | None = None

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
    evaluate_batch: EvaluateBatch | None = None,
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
            ``max_infeasible`` of them. The search also ends after
            :data:`HOPELESS_ROUNDS` rounds in a row in which the strategy could propose nothing
            but best-effort infeasible configs (``Strategy.infeasible_proposals``: no new config
            passed its constraint and screen in all its tries), noted in ``notes``: a space
            without a feasible config left would otherwise spend ``max_infeasible`` rounds of
            screening (minutes) before the same conclusion.
        journal: an opened journal; each new trial is appended before ``tell``.
        past: trials read from the journal on resume.
        batch_size: suggestions asked per round (with an executor: its free workers).
        time_limit_s: stop asking for new candidates after this many seconds.
        on_trial: callback after each trial (progress display).
        evaluate_batch: evaluates a round's new candidates side by side, yielding each trial as
            it finishes; without it they are evaluated one after the other with ``evaluate``.
    """
    t0 = time.perf_counter()
    result = SearchResult(trials=[])
    cache: dict[tuple[str, float], Trial] = {}
    past = list(past or [])
    result.resumed = len(past)

    # replay: complete ask/tell rounds are re-asked and told the recorded answers in order, so
    # a deterministic strategy reaches the state it had. Trials of the unfinished round (the
    # driver stopped before all of its results were in) are kept aside: the live loop re-asks
    # that round and takes them instead of training them again.
    by_number = {t.number: t for t in past}
    result.trials.extend(sorted(past, key=lambda t: t.number))
    for t in result.trials:
        if on_trial:
            on_trial(t)
    told_numbers: set[int] = set()
    for numbers in journal.rounds:
        if not all(n in by_number for n in numbers):
            break
        chunk = [by_number[n] for n in numbers]
        asked = strategy.ask(len(chunk))
        for s, t in zip(asked, chunk):
            if space.key(s.config) != space.key(t.config) or s.fidelity != t.fidelity:
                result.replay_mismatches += 1
        strategy.tell(chunk)
        for t in chunk:
            cache[(space.key(t.config), t.fidelity)] = t
        told_numbers.update(numbers)
    pending: dict[tuple[str, float], Trial] = {}
    for t in sorted(past, key=lambda t: t.number):
        if t.number not in told_numbers:
            pending.setdefault((space.key(t.config), t.fidelity), t)
    if result.replay_mismatches:
        warnings.warn(
            f"resume: {result.replay_mismatches} replayed proposals differ from the journal "
            "(non-deterministic strategy?); the journal's results are kept",
            stacklevel=2,
        )

    # ``n_trials`` counts training cost (a trial at fidelity f costs f): infeasible candidates
    # cost no training and do not use the budget, but they are capped so a space that is mostly
    # infeasible still terminates. Only told trials count: the unfinished round is re-asked.
    told_trials = [by_number[n] for n in sorted(told_numbers)]
    spent = sum(t.fidelity for t in told_trials if t.status != TrialStatus.INFEASIBLE)
    infeasible = sum(1 for t in told_trials if t.status == TrialStatus.INFEASIBLE)
    taken = set(by_number)  # numbers already in the journal are never given out again
    next_number = 0

    def new_number() -> int:
        nonlocal next_number
        while next_number in taken:
            next_number += 1
        taken.add(next_number)
        return next_number

    max_infeasible = max_infeasible if max_infeasible is not None else 20 * n_trials + 50
    asks = 0
    max_asks = 4 * (n_trials + max_infeasible) + 10
    hopeless = 0
    while spent < n_trials - 1e-9 and infeasible < max_infeasible and asks < max_asks:
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            result.stopped_by_time = True
            break
        if hopeless >= HOPELESS_ROUNDS:
            result.notes.append(
                f"the search stopped after {hopeless} rounds in a row in which the strategy found no new "
                "candidate that meets the constraints known before training"
            )
            break
        k = max(1, min(batch_size, math.ceil(n_trials - spent - 1e-9)))
        before = int(getattr(strategy, "infeasible_proposals", 0))
        suggestions: list[Suggestion] = strategy.ask(k)
        asks += 1
        hopeless = hopeless + 1 if int(getattr(strategy, "infeasible_proposals", 0)) - before >= k else 0
        keys = [(space.key(s.config), s.fidelity) for s in suggestions]
        jobs: list[Job] = []
        round_keys: set[tuple[str, float]] = set()
        arrived: list[Trial] = []
        for s, key in zip(suggestions, keys):
            if key in cache or key in round_keys:
                result.duplicates += 1  # already evaluated: told the known answer, not retrained
                continue
            round_keys.add(key)
            if key in pending:  # evaluated before the driver stopped; journaled, not yet told
                arrived.append(pending.pop(key))
                continue
            jobs.append(Job(s.config, s.fidelity, new_number()))
        key_of = {j.number: (space.key(j.config), j.fidelity) for j in jobs}
        fresh: list[Trial] = []
        for trial in _evaluate_jobs(jobs, evaluate, evaluate_batch):
            journal.append(trial)
            if on_trial:
                on_trial(trial)
            fresh.append(trial)
        if {t.number for t in fresh} != set(key_of):
            raise RuntimeError("the executor returned other trials than the ones submitted")
        for trial in fresh:
            cache[key_of[trial.number]] = trial
        for trial in arrived:
            cache[(space.key(trial.config), trial.fidelity)] = trial
        result.trials.extend(sorted(fresh, key=lambda t: t.number))
        for trial in [*arrived, *fresh]:
            if trial.status == TrialStatus.INFEASIBLE:
                infeasible += 1
            else:
                spent += trial.fidelity
        told = [cache[key] for key in keys]
        journal.told([t.number for t in told])
        strategy.tell(told)
    result.screened = int(getattr(strategy, "screened", 0))
    result.recommendation = _recommend(strategy, result)
    result.seconds = time.perf_counter() - t0
    return result


def _recommend(strategy: Strategy, result: SearchResult) -> Recommendation | None:
    """The strategy's recommendation; a strategy whose ``recommend`` raises (a model that will
    not fit) falls back to the best trial, with a note in the result."""
    try:
        return strategy.recommend()
    except Exception as exc:  # noqa: BLE001 -- a plugin's model failing must not lose the search
        why = f"{type(exc).__name__}: {exc}"
        result.notes.append(f"{strategy.name}: recommend() failed ({why}); the best trial is used")
        return Strategy.recommend(strategy)


def _evaluate_jobs(jobs: list[Job], evaluate: Evaluate, evaluate_batch: EvaluateBatch | None) -> Iterable[Trial]:
    """The round's trials as they finish: side by side through ``evaluate_batch``, else in turn."""
    if not jobs:
        return []
    if evaluate_batch is None:
        return (evaluate(j.config, j.fidelity, j.number) for j in jobs)
    return evaluate_batch(jobs)
