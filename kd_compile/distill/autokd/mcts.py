"""Monte Carlo tree search over a tree-structured space, rewarded by any function.

Pure search: no torch, no training. ``mcts_search`` walks any space with the interface of
``autokd.space.DistillerTree`` (``levels``, ``depth``, ``size``, ``leaves``, ``choice``; the
``SearchTree`` protocol) and calls ``reward_fn`` once per distinct leaf. UCB1 selection (Auto-KD
Eq. 2) on min-max scaled rewards, expansion of all children at once, random rollouts that
prefer unevaluated leaves, and mean backup.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .space import DistillerChoice

__all__ = ["MctsNode", "MctsResult", "SearchTree", "mcts_search", "select_child", "ucb_score"]


class SearchTree(Protocol):
    """What ``mcts_search`` needs of a space (``DistillerTree`` is one)."""

    @property
    def levels(self) -> list[tuple[str, tuple[Any, ...]]]: ...

    @property
    def depth(self) -> int: ...

    @property
    def size(self) -> int: ...

    def leaves(self, prefix: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def choice(self, path: Sequence[Any]) -> DistillerChoice: ...


@dataclass
class MctsNode:
    """A node of the search tree: a prefix of a distiller path.

    Attributes:
        path: the options chosen from the root down to this node.
        visits: how many rewards were backed up through it.
        total: their sum (the node's value is ``total / visits``).
        children: option -> child, created all at once on the first expansion.
        evaluated: distinct leaves below it whose reward is known.
        capacity: number of leaves below it (the subtree is exhausted when ``evaluated``
            reaches it).
    """

    path: tuple[Any, ...] = ()
    visits: int = 0
    total: float = 0.0
    children: dict[Any, MctsNode] = field(default_factory=dict)
    evaluated: int = 0
    capacity: int = 1

    @property
    def mean(self) -> float:
        return self.total / self.visits if self.visits else float("nan")


def ucb_score(
    total: float,
    visits: int,
    parent_visits: int,
    c: float,
    lo: float = 0.0,
    hi: float = 1.0,
) -> float:
    """UCB1 of a child (Auto-KD Eq. 2): ``R_i/N_i + c * sqrt(2 ln N_b / N_i)``.

    The mean reward is min-max scaled to [0, 1] with the rewards seen so far (``lo``, ``hi``):
    proxy rewards (minus a cross-entropy) have a dataset-dependent scale, and UCB1's
    exploration constant only means the same thing across datasets on rewards in [0, 1].

    Returns:
        +inf for an unvisited child, so that every child is tried once before any twice.
    """
    if visits == 0:
        return math.inf
    span = hi - lo
    exploit = (total / visits - lo) / span if span > 0 else 0.5
    return exploit + c * math.sqrt(2.0 * math.log(max(parent_visits, 1)) / visits)


def select_child(
    node: MctsNode,
    c: float,
    rng: random.Random,
    lo: float = 0.0,
    hi: float = 1.0,
    skip: Callable[[MctsNode], bool] | None = None,
) -> MctsNode:
    """The child of an expanded ``node`` with the highest UCB1; ties broken by ``rng``.

    Args:
        skip: children for which it is True are passed over, unless it is True for all.
    """
    if not node.children:
        raise ValueError("select_child needs an expanded node")
    pool = list(node.children.values())
    if skip is not None:
        pool = [ch for ch in pool if not skip(ch)] or pool
    scores = [(ucb_score(ch.total, ch.visits, node.visits, c, lo, hi), ch) for ch in pool]
    best = max(s for s, _ in scores)
    tied = [ch for s, ch in scores if s == best]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


@dataclass
class MctsResult:
    """What ``mcts_search`` found.

    Attributes:
        best: the evaluated distiller with the highest reward (first found on ties).
        best_reward: its reward.
        history: (distiller, reward) of every iteration in order (repeats of a cached leaf
            included).
        evaluations: number of calls to the reward function (distinct leaves evaluated).
        root: the search tree, for inspection.
    """

    best: DistillerChoice
    best_reward: float
    history: list[tuple[DistillerChoice, float]]
    evaluations: int
    root: MctsNode

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": self.best.to_dict(),
            "best_reward": self.best_reward,
            "evaluations": self.evaluations,
            "history": [{"choice": ch.to_dict(), "reward": r} for ch, r in self.history],
        }


def _rollout(
    tree: SearchTree, prefix: tuple[Any, ...], seen: set[tuple[Any, ...]], rng: random.Random
) -> tuple[Any, ...]:
    """Random completion of ``prefix`` to a leaf, uniform over the not yet evaluated leaves.

    Re-drawing an evaluated leaf would spend an iteration without any new information, so the
    rollout draws among unseen leaves below ``prefix``, and among all of them only when every
    one has been evaluated already.
    """
    leaves = tree.leaves(prefix)
    fresh = [p for p in leaves if p not in seen]
    return rng.choice(fresh or leaves)


def mcts_search(
    reward_fn: Callable[[DistillerChoice], float],
    space: SearchTree,
    iterations: int,
    seed: int = 0,
    c: float = 1.4,
    *,
    on_result: Callable[[DistillerChoice, float, bool], None] | None = None,
) -> MctsResult:
    """Monte Carlo tree search for the distiller with the highest reward.

    Each iteration: *selection* descends from the root by UCB1 (``select_child``) through
    expanded nodes; *expansion* creates all children of the first unexpanded node met and
    steps into one not yet visited; *simulation* completes the path by a random rollout to a
    leaf (``_rollout``); the leaf's reward (from ``reward_fn``, or from the cache when that
    leaf was evaluated before) is *backpropagated* into every node on the selected path, whose
    value is the mean of its rewards. Deterministic for a seed (one ``random.Random(seed)``
    drives every random decision, and options are visited in tree order).

    Args:
        reward_fn: distiller -> reward (higher is better); called at most once per leaf.
        space: the tree.
        iterations: number of MCTS iterations (>= 1). Selection passes over exhausted subtrees
            (every leaf evaluated) and the rollout prefers unevaluated leaves, so each
            iteration evaluates a new leaf until the whole tree has been evaluated.
        seed: seed of the search.
        c: UCB1 exploration constant (on rewards scaled to [0, 1]).
        on_result: called after every iteration with (choice, reward, cached).

    Returns:
        MctsResult with the best evaluated leaf.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    rng = random.Random(seed)
    root = MctsNode()
    cache: dict[tuple[Any, ...], float] = {}
    history: list[tuple[DistillerChoice, float]] = []
    best_path: tuple[Any, ...] | None = None
    levels = space.levels
    sizes = [len(opts) for _, opts in levels]
    root.capacity = space.size

    def exhausted(n: MctsNode) -> bool:
        return n.evaluated >= n.capacity

    for _ in range(iterations):
        finite = [r for r in cache.values() if math.isfinite(r)]
        lo, hi = min(finite, default=0.0), max(finite, default=1.0)
        node, path = root, [root]
        while len(node.path) < space.depth:
            if not node.children:
                d = len(node.path)
                cap = math.prod(sizes[d + 1 :])
                node.children = {}
                for o in levels[d][1]:
                    prefix = node.path + (o,)
                    # leaves evaluated by earlier rollouts through this not-yet-created node
                    done = sum(1 for leaf in cache if leaf[: d + 1] == prefix)
                    node.children[o] = MctsNode(path=prefix, capacity=cap, evaluated=done)
            # rewards are deterministic, so a subtree whose leaves are all evaluated has nothing
            # left to teach: pass it over while other subtrees still have unevaluated leaves
            node = select_child(node, c, rng, lo, hi, skip=exhausted)
            path.append(node)
            if node.visits == 0:
                break
        leaf = _rollout(space, node.path, set(cache), rng)
        cached = leaf in cache
        choice = space.choice(leaf)
        if not cached:
            reward = float(reward_fn(choice))
            if math.isnan(reward):
                # a NaN would poison every mean on the path; treat it as the worst outcome
                reward = -math.inf
            cache[leaf] = reward
            walk: MctsNode | None = root
            for depth in range(space.depth + 1):
                if walk is None:
                    break
                walk.evaluated += 1
                walk = walk.children.get(leaf[depth]) if depth < space.depth else None
        reward = cache[leaf]
        if best_path is None or reward > cache[best_path]:
            best_path = leaf
        # -inf rewards (failed candidates) are backed up as the worst finite reward seen, so
        # that means stay finite and the failing branch is still discouraged
        finite = [r for r in cache.values() if math.isfinite(r)]
        backed = reward if math.isfinite(reward) else (min(finite) if finite else 0.0)
        for n in path:
            n.visits += 1
            n.total += backed
        history.append((choice, reward))
        if on_result is not None:
            on_result(choice, reward, cached)
    assert best_path is not None
    return MctsResult(
        best=space.choice(best_path),
        best_reward=cache[best_path],
        history=history,
        evaluations=len(cache),
        root=root,
    )
