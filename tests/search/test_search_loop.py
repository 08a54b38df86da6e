"""The search loop spends a training budget: a trial at fidelity f costs f; infeasible is free."""

from __future__ import annotations

import pytest
import torch

from kd_compile.search import Journal, create_strategy, run_search
from kd_compile.testing.strategies import ToySpace, toy_evaluate

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["random", "lf-gpr-hybrid"])
def test_search_loop_budget_is_training_cost(name: str, tmp_path) -> None:
    space = ToySpace()
    opts = {"gp_maxiter": 8, "n_candidates": 64} if name == "lf-gpr-hybrid" else {}
    strat = create_strategy(name, space, seed=0, budget=3, **opts)
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    res = run_search(space, strat, toy_evaluate(space), 3, journal)
    trained = [t for t in res.trials if t.status != "infeasible"]
    cost = sum(t.fidelity for t in trained)
    # the loop stops once 3 full trainings' worth is spent, and not before
    assert 3 - 1e-9 <= cost < 3 + 1
    if name == "random":
        assert len(trained) == 3
    else:  # 7 trainings at 1/3 (infeasible proposals cost nothing and do not count), then full
        fids = [t.fidelity for t in res.trials]
        first_full = fids.index(1.0)
        assert set(fids[first_full:]) == {1.0}
        low = res.trials[:first_full]
        assert sum(t.status != "infeasible" for t in low) == 7
        assert any(t.status == "infeasible" for t in low)  # the toy space has some
    assert res.best() == strat.best()  # one rule for the best trial, loop and strategy alike


def test_a_space_with_no_feasible_config_ends_the_search_after_a_few_hopeless_rounds(tmp_path) -> None:
    """When no new config passes the constraint, each round brings only best-effort infeasible
    proposals: the loop stops after HOPELESS_ROUNDS of them instead of max_infeasible rounds."""
    from kd_compile.search.loop import HOPELESS_ROUNDS

    space = ToySpace()
    strat = create_strategy("random", space, seed=0, budget=5, feasible=lambda c: False)
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    res = run_search(space, strat, toy_evaluate(space), 5, journal)
    assert len(res.trials) == HOPELESS_ROUNDS  # one proposal a round, each a best effort
    assert any("no new candidate that meets the constraints" in n for n in res.notes)
    # a space with feasible configs is not cut short
    journal = Journal(tmp_path / "k.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    ok = run_search(space, create_strategy("random", space, seed=0, budget=5), toy_evaluate(space), 5, journal)
    assert not ok.notes and len(ok.trials) == 5
