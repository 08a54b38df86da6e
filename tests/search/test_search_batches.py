"""Batches evaluated side by side: results arriving in any order give the journal a sequential
run gives, and a driver killed in the middle of a batch resumes without losing or retraining a
finished candidate (``run_search``'s ``evaluate_batch``)."""

from __future__ import annotations

import json

import pytest
import torch

from kd_compile.search import Journal, create_strategy, run_search
from kd_compile.search.loop import Job
from kd_compile.testing.strategies import ToySpace, toy_evaluate

torch.set_num_threads(1)

BUDGET, BATCH = 9, 3


class Killed(BaseException):
    """The driver stopping (a kill), raised from inside a batch."""


def _reversed_batches(evaluate, calls: list[int], kill_after: int | None = None):
    """An evaluate_batch whose results arrive last-submitted first (as a parallel executor's may);
    with ``kill_after``, the driver dies once that many trials arrived in total."""

    def evaluate_batch(jobs: list[Job]):
        for j in reversed(jobs):
            if kill_after is not None and len(calls) == kill_after:
                raise Killed
            calls.append(j.number)
            yield evaluate(j.config, j.fidelity, j.number)

    return evaluate_batch


def _run(path, strategy: str, resume: bool = False, **kw):
    space = ToySpace()
    journal = Journal(path)
    past = journal.open({"fingerprint": "x"}, resume=resume)
    strat = create_strategy(strategy, space, seed=3, budget=BUDGET)
    try:
        return run_search(space, strat, toy_evaluate(space), BUDGET, journal, past, batch_size=BATCH, **kw)
    finally:
        journal.close()


def _journal(path):
    """(trials by number, told rounds) as recorded."""
    recs = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    trials = {r["trial"]["number"]: r["trial"] for r in recs if r["type"] == "trial"}
    for t in trials.values():
        t.pop("duration_s")
    return trials, [r["numbers"] for r in recs if r["type"] == "told"]


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_results_in_any_order_journal_as_a_sequential_run(tmp_path, strategy):
    seq = _run(tmp_path / "seq.jsonl", strategy)
    calls: list[int] = []
    par = _run(tmp_path / "par.jsonl", strategy, evaluate_batch=_reversed_batches(toy_evaluate(ToySpace()), calls))
    assert calls != sorted(calls)  # the results really arrived out of order
    assert _journal(tmp_path / "seq.jsonl") == _journal(tmp_path / "par.jsonl")
    assert [t.number for t in par.trials] == [t.number for t in seq.trials] == list(range(len(seq.trials)))


@pytest.mark.parametrize("kill_after", [1, 4, 7])
def test_a_driver_killed_mid_batch_resumes_to_the_same_journal(tmp_path, kill_after):
    ref = tmp_path / "ref.jsonl"
    _run(ref, "evolution")
    path = tmp_path / "killed.jsonl"
    calls: list[int] = []
    batch = _reversed_batches(toy_evaluate(ToySpace()), calls, kill_after=kill_after)
    with pytest.raises(Killed):
        _run(path, "evolution", evaluate_batch=batch)
    done = set(calls)
    resumed: list[int] = []
    res = _run(path, "evolution", resume=True, evaluate_batch=_reversed_batches(toy_evaluate(ToySpace()), resumed))
    assert not done & set(resumed)  # nothing finished before the kill is trained again
    assert _journal(path) == _journal(ref)  # same trials under the same numbers, same rounds
    assert sorted(t.number for t in res.trials) == sorted(_journal(ref)[0])
