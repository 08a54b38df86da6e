"""Monte Carlo tree search (kd_compile.distill.autokd.mcts): UCB1, caching, determinism, finding the best leaf."""

from __future__ import annotations

import math
import random

import pytest

from kd_compile.distill.autokd import DistillerChoice, DistillerTree, MctsNode, mcts_search, select_child, ucb_score


def test_ucb_prefers_unvisited_children() -> None:
    assert ucb_score(0.0, 0, 10, 1.4) == math.inf
    # UCB1: scaled mean + c * sqrt(2 ln N / n)
    assert ucb_score(3.0, 4, 10, 1.4, lo=0.0, hi=1.0) == pytest.approx(0.75 + 1.4 * math.sqrt(2 * math.log(10) / 4))
    node = MctsNode(visits=3)
    node.children = {
        "a": MctsNode(path=("a",), visits=2, total=2.0),  # the best mean so far
        "b": MctsNode(path=("b",), visits=1, total=0.0),
        "c": MctsNode(path=("c",)),
    }
    assert select_child(node, 1.4, random.Random(0)).path == ("c",)
    node.children["c"].visits, node.children["c"].total = 1, 0.0
    # all visited: exploitation wins with no exploration, exploration with a large c
    assert select_child(node, 0.0, random.Random(0)).path == ("a",)
    assert select_child(node, 100.0, random.Random(0)).path in {("b",), ("c",)}


def _table_reward(tree: DistillerTree, best: tuple, seed: int = 0):
    """A reward table with structure (additive per level, plus noise) and one clear maximum."""
    rng = random.Random(seed)
    level_val = [{o: rng.uniform(0, 0.5) for o in opts} for _, opts in tree.levels]
    for lv, o in zip(level_val, best):
        lv[o] = 0.6
    table = {}
    for leaf in tree.leaves():
        table[leaf] = sum(lv[o] for lv, o in zip(level_val, leaf)) + rng.uniform(0, 0.05)
    table[best] = max(table.values()) + 0.3  # one clear maximum
    calls: list[tuple] = []

    def reward(ch: DistillerChoice) -> float:
        calls.append(ch.key)
        return table[ch.key]

    return reward, calls, table


def test_mcts_exhaustive_budget_finds_best_and_caches() -> None:
    tree = DistillerTree(
        transforms=("none", "attention", "sample"),
        distances=("l2", "kl"),
        weights=(1.0, 5.0),
        temperatures=(1.0, 4.0),
    )
    best = ("sample", "l2", 5.0, 1.0)
    reward, calls, table = _table_reward(tree, best)
    res = mcts_search(reward, tree, iterations=tree.size + 10, seed=0)
    # the rollout draws unevaluated leaves first: 24 iterations evaluate all 24 leaves once
    assert len(calls) == len(set(calls)) == tree.size
    assert res.evaluations == tree.size
    assert len(res.history) == tree.size + 10
    assert res.best.key == best and res.best_reward == pytest.approx(table[best])
    # root statistics are the backed-up means of every iteration
    assert res.root.visits == tree.size + 10
    assert res.root.total == pytest.approx(sum(r for _, r in res.history))


def test_mcts_finds_clear_maximum_with_a_fraction_of_the_tree() -> None:
    tree = DistillerTree()  # 288 leaves
    best = ("channel", "pearson", 25.0, 2.0)
    found, best_share = 0, []
    for seed in range(3):
        reward, _, _ = _table_reward(tree, best, seed=seed)
        res = mcts_search(reward, tree, iterations=96, seed=seed, c=0.5)
        found += res.best.key == best
        # the search concentrates on the best subtree: well above its uniform share (1/6)
        best_share.append(sum(ch.transform == "channel" for ch, _ in res.history) / 96)
    # (uniform random search over 96 of the 288 leaves finds it with probability 1/3)
    assert found == 3
    assert min(best_share) > 0.25


def test_mcts_deterministic_under_seed() -> None:
    tree = DistillerTree()
    reward, _, _ = _table_reward(tree, ("mask", "kl", 1.0, 8.0))
    a = mcts_search(reward, tree, iterations=30, seed=5)
    b = mcts_search(reward, tree, iterations=30, seed=5)
    c = mcts_search(reward, tree, iterations=30, seed=6)
    assert [ch.key for ch, _ in a.history] == [ch.key for ch, _ in b.history]
    assert [ch.key for ch, _ in a.history] != [ch.key for ch, _ in c.history]
    assert a.to_dict() == b.to_dict()


def test_mcts_failed_candidate_never_best() -> None:
    tree = DistillerTree(transforms=("none", "sample"), distances=("l2",), weights=(1.0,), temperatures=(1.0,))

    def reward(ch: DistillerChoice) -> float:
        return float("nan") if ch.transform == "none" else -1.0

    res = mcts_search(reward, tree, iterations=4, seed=0)
    assert res.best.transform == "sample" and res.best_reward == -1.0
    assert math.isfinite(res.root.total)


def test_mcts_module_is_pure_search() -> None:
    """mcts.py imports no torch (and nothing of the training side): it is search only."""
    import ast
    from pathlib import Path

    import kd_compile.distill.autokd.mcts as mcts

    tree = ast.parse(Path(mcts.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "torch" for m in imported), imported
    assert imported <= {"__future__", "math", "random", "collections.abc", "dataclasses", "typing", "space"}
