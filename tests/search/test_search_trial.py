"""Trials and the rules over them: statuses, journal round trip, best trial, Pareto front."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kd_compile.search import (
    Journal,
    Suggestion,
    Trial,
    TrialStatus,
    best_trial,
    create_strategy,
    pareto_mask,
    pareto_trials,
)
from kd_compile.testing.strategies import ToySpace

CFG = {"a": 1}


# -- statuses -------------------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["ok", "infeasible", "failed"])
def test_plain_string_status_becomes_the_enum(word: str) -> None:
    t = Trial(0, CFG, word, 1.0 if word == "ok" else None)
    assert type(t.status) is TrialStatus and t.status is TrialStatus(word)
    assert t.status == word and str(t.status) == word  # still compares and prints as the word
    assert t.ok is (word == "ok")


def test_bad_status_and_ok_without_a_finite_score_are_rejected() -> None:
    with pytest.raises(ValueError, match="bad status"):
        Trial(0, CFG, "done", 1.0)
    with pytest.raises(ValueError, match="finite score"):
        Trial(0, CFG, TrialStatus.OK)
    with pytest.raises(ValueError, match="finite score"):
        Trial(0, CFG, "ok", math.inf)
    assert Trial(0, CFG, "failed", error="diverged").score is None


def test_dict_round_trip_keeps_the_plain_word() -> None:
    t = Trial(3, CFG, TrialStatus.INFEASIBLE, None, 0.5, {"params": 10}, "too big", 1.5)
    d = t.to_dict()
    assert d["status"] == "infeasible" and type(d["status"]) is str
    assert Trial.from_dict({**d, "unknown_field": 1}) == t  # fields of a newer writer are ignored


def test_journal_round_trip_keeps_ok(tmp_path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.open({"fingerprint": "f"}, resume=False)
    trials = [Trial(0, CFG, TrialStatus.OK, 2.0, metrics={"accuracy": 0.5}), Trial(1, CFG, "failed", error="x")]
    for t in trials:
        j.append(t)
    j.told([0, 1])
    j.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["trial"]["status"] for r in lines if r["type"] == "trial"] == ["ok", "failed"]
    past = Journal(path).open({"fingerprint": "f"}, resume=True)
    assert past == trials and past[0].status is TrialStatus.OK and past[0].ok


def test_suggestion_defaults_to_full_fidelity() -> None:
    assert Suggestion(CFG).fidelity == 1.0


# -- best trial -----------------------------------------------------------------------------------
def _t(n: int, score: float | None, fidelity: float = 1.0, status: str = "ok") -> Trial:
    return Trial(n, {"n": n}, status, score, fidelity)


def test_best_picks_the_lowest_score_at_the_top_fidelity() -> None:
    trials = [
        _t(0, 0.1, 1 / 3),  # best score overall, but at low fidelity
        _t(1, 0.9),
        _t(2, 0.5),
        _t(3, None, 1.0, "infeasible"),
        _t(4, None, 1.0, "failed"),
        _t(5, 0.5),  # ties go to the earlier trial
    ]
    assert best_trial(trials).number == 2
    assert best_trial(trials, fidelity=1 / 3).number == 0
    assert best_trial(trials, fidelity=0.5) is None


def test_best_uses_the_highest_fidelity_with_an_ok_trial() -> None:
    # the only full-fidelity trial failed: the incumbent is the best at 1/3
    trials = [_t(0, 0.4, 1 / 3), _t(1, 0.2, 1 / 3), _t(2, None, 1.0, "failed")]
    assert best_trial(trials).number == 1
    assert best_trial([]) is None and best_trial([_t(0, None, 1.0, "infeasible")]) is None


def test_strategy_best_follows_the_same_rule() -> None:
    strat = create_strategy("random", ToySpace(), seed=0)
    cfg = ToySpace().default()
    trials = [Trial(0, cfg, "ok", 0.1, 1 / 3), Trial(1, cfg, "ok", 0.7), Trial(2, cfg, "ok", 0.3)]
    strat.tell(trials)
    assert strat.best() is best_trial(trials) is trials[2]


# -- Pareto front ---------------------------------------------------------------------------------
def test_pareto_mask_of_a_known_set() -> None:
    y = np.array(
        [
            [1.0, 1.0],  # dominated by row 1
            [2.0, 1.0],
            [1.0, 3.0],
            [2.0, 1.0],  # equal to row 1: neither dominates the other
            [0.0, 0.0],  # dominated
        ]
    )
    assert pareto_mask(y).tolist() == [False, True, True, True, False]
    assert pareto_mask(np.zeros((0, 2))).tolist() == []


def test_pareto_trials_of_a_known_set() -> None:
    def t(n: int, acc: float, lat: float, fidelity: float = 1.0, status: str = "ok") -> Trial:
        metrics = {"accuracy": acc, "latency_ms": lat}
        return Trial(n, {"n": n}, status, 1.0 if status == "ok" else None, fidelity, metrics)

    trials = [
        t(0, 0.9, 3.0),
        t(1, 0.8, 1.0),
        t(2, 0.7, 2.0),  # dominated by 1 (less accurate and slower)
        t(3, 0.95, 0.5, fidelity=1 / 3),  # would dominate all, but at low fidelity
        t(4, 0.99, 0.1, status="infeasible"),  # not ok
        t(5, 0.9, 3.0),  # equal to 0: both stay
    ]
    objectives = [("accuracy", True), ("latency_ms", False)]
    assert [x.number for x in pareto_trials(trials, objectives)] == [0, 1, 5]
    # the direction matters: maximising latency too, 0 and 5 dominate everything else
    assert [x.number for x in pareto_trials(trials, [("accuracy", True), ("latency_ms", True)])] == [0, 5]
    assert pareto_trials([trials[4]], objectives) == []
