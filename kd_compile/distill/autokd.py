"""Auto-KD: a tree-structured distiller space searched by Monte Carlo tree search.

Auto-KD (Li et al., ICCV 2023; ``/work/shared/papers/auto-kd-distiller-search.txt``) decomposes
a feature distiller into a feature *transform* ``T_f``, a *distance* ``D_f``, a loss *weight*
``W_f`` and a *temperature* ``tau`` (its Eq. 1):

    L_KD = W_f * D_f(T_f<f_S, f_T>) + W_p * D_p(p_S / tau, p_T / tau)

The options form a tree (one level per component); a path root -> leaf is one distiller
(``DistillerChoice``). MCTS with UCB1 picks which leaves to try, rewarded by a short proxy
training of the student (a stratified subset, a fraction of an epoch, teacher knowledge
computed once offline) as ``-(val CE) - gap_weight * (1 - CKA(student, teacher features))``
(the paper's Eq. 3 up to a constant and the gap's weight).

Layout of this module:

* ``DistillerChoice`` / ``DistillerTree``: the space as data.
* ``transform_features``, ``feature_distance``, ``DistillerLoss``: the loss of one choice on
  a (student, teacher) feature pair.
* ``mcts_search``: generic MCTS over a ``DistillerTree`` with any reward function.
* ``TeacherKnowledge``, ``distiller_reward``, ``search_distiller``, ``train_with_distiller``:
  the kd-compile glue (proxy reward, the search, the final training).

Training with a ``DistillerLoss`` is ``trainer.train_student`` with the loss plugged in as
an ``ExtraLoss`` (``_ChoiceLoss``): the same subset, batch order, optimiser, schedule and logit
loss as any other training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle
from ..errors import CandidateError
from .cache import TeacherCache
from .losses import FeatureCapture, as_feature_map, cka_loss
from .trainer import (
    TrainConfig,
    TrainResult,
    predict_logits,
    stratified_subset,
    train_student,
)

__all__ = [
    "DISTANCES",
    "TRANSFORMS",
    "DistillerChoice",
    "DistillerLoss",
    "DistillerTree",
    "MctsNode",
    "MctsResult",
    "TeacherKnowledge",
    "distiller_reward",
    "feature_distance",
    "last_feature_layer",
    "mcts_search",
    "search_distiller",
    "select_child",
    "train_with_distiller",
    "transform_features",
    "ucb_score",
]

#: Feature transforms (Auto-KD Table 1): identity, spatial attention (AT), random spatial mask
#: (MGD), multi-scale pooling pyramid, channel-wise rows (f^{C,NHW}, ICKD/CWD), sample-wise
#: batch similarity (f^{N,N}, SP).
TRANSFORMS: tuple[str, ...] = ("none", "attention", "mask", "multiscale", "channel", "sample")
#: Distances between the transformed rows.
DISTANCES: tuple[str, ...] = ("l2", "kl", "pearson", "cka")
#: Transforms whose output does not depend on the channel count, so no 1x1 adapter is learned.
_CHANNEL_AGNOSTIC = frozenset({"attention", "sample"})
#: Output sizes of the multi-scale pyramid (capped at the map's own size).
_PYRAMID = (1, 2, 4)


# ----------------------------------------------------------------------------------------------
# the space as data


@dataclass(frozen=True)
class DistillerChoice:
    """One distiller: a root -> leaf path of the Auto-KD tree.

    Attributes:
        transform: a name in ``TRANSFORMS``.
        distance: a name in ``DISTANCES``.
        weight: weight ``W_f`` of the feature term.
        temperature: temperature of the logit KD term and of the feature "kl" distance.
    """

    transform: str = "none"
    distance: str = "l2"
    weight: float = 1.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; choose from {TRANSFORMS}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; choose from {DISTANCES}")
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "temperature", float(self.temperature))

    @property
    def key(self) -> tuple[str, str, float, float]:
        """The path as a hashable tuple (transform, distance, weight, temperature)."""
        return (self.transform, self.distance, self.weight, self.temperature)

    def describe(self) -> str:
        """Compact name, e.g. ``attention+kl w5 t4``."""
        return f"{self.transform}+{self.distance} w{self.weight:g} t{self.temperature:g}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillerChoice:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class DistillerTree:
    """The tree-structured distiller space: one level per component, in this order.

    Defaults follow Auto-KD Table 1 (weights ``W_f`` in {1, 5, 25} of its {1, 5, 25, 50}: 50
    overwhelms CE for the small students kd-compile trains; temperatures {1, 2, 4, 8}), so the
    full tree has 6 * 4 * 3 * 4 = 288 leaves.

    Attributes:
        transforms, distances, weights, temperatures: the options of each level.
    """

    transforms: tuple[str, ...] = TRANSFORMS
    distances: tuple[str, ...] = DISTANCES
    weights: tuple[float, ...] = (1.0, 5.0, 25.0)
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def __post_init__(self) -> None:
        for name, opts in self.levels:
            if not opts:
                raise ValueError(f"level {name!r} of the distiller tree has no options")
            if len(set(opts)) != len(opts):
                raise ValueError(f"level {name!r} has duplicate options: {opts}")
        # validates every option once, here, instead of at the first leaf that uses it
        for t in self.transforms:
            DistillerChoice(transform=t)
        for d in self.distances:
            DistillerChoice(distance=d)
        for w in self.weights:
            DistillerChoice(weight=w)
        for tau in self.temperatures:
            DistillerChoice(temperature=tau)

    @property
    def levels(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(field name of ``DistillerChoice``, options) from root to leaves."""
        return [
            ("transform", tuple(self.transforms)),
            ("distance", tuple(self.distances)),
            ("weight", tuple(float(w) for w in self.weights)),
            ("temperature", tuple(float(t) for t in self.temperatures)),
        ]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def size(self) -> int:
        """Number of leaves (distillers)."""
        return math.prod(len(o) for _, o in self.levels)

    def choice(self, path: Sequence[Any]) -> DistillerChoice:
        """The distiller of a full path (one option per level)."""
        if len(path) != self.depth:
            raise ValueError(f"a full path has {self.depth} options, got {len(path)}")
        return DistillerChoice(**{name: v for (name, _), v in zip(self.levels, path, strict=True)})

    def leaves(self, prefix: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every full path that starts with ``prefix``, in tree order."""
        rest = [opts for _, opts in self.levels[len(prefix) :]]
        return [tuple(prefix) + tail for tail in itertools.product(*rest)]

    def to_dict(self) -> dict[str, Any]:
        return {name: list(opts) for name, opts in self.levels}


# ----------------------------------------------------------------------------------------------
# transforms, distances and the loss of one choice


def _pool_to(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return f if tuple(f.shape[-2:]) == size else F.adaptive_avg_pool2d(f, size)


def transform_features(kind: str, f: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One Auto-KD feature transform, as a matrix whose rows the distance compares.

    Args:
        kind: a name in ``TRANSFORMS``.
        f: aligned feature map (N, C, H, W).
        mask: for "mask": a {0, 1} tensor broadcastable to ``f`` (e.g. (N, 1, H, W)); the same
            mask must be used for student and teacher.

    Returns:
        (R, D) rows:

        * none: (N, C*H*W), the flattened map.
        * attention: (N, H*W), ``normalize(mean_c f**2)`` (attention transfer).
        * mask: (N, C*H*W), the flattened ``f * mask``.
        * multiscale: (N, C * sum_s s_h*s_w), ``f`` average-pooled to 1x1, 2x2 and 4x4
          (each capped at (H, W)), concatenated.
        * channel: (C, N*H*W), one row per channel (Auto-KD's ``f^{C,NHW}``).
        * sample: (N, N), ``normalize_rows(F F^T)`` of the flattened map (SP's Gram).
    """
    n, c, h, w = f.shape
    if kind == "none":
        return f.reshape(n, -1)
    if kind == "attention":
        return F.normalize(f.pow(2).mean(dim=1).reshape(n, -1), dim=1)
    if kind == "mask":
        if mask is None:
            raise ValueError("the mask transform needs a mask")
        return (f * mask).reshape(n, -1)
    if kind == "multiscale":
        sizes = dict.fromkeys((min(s, h), min(s, w)) for s in _PYRAMID)
        return torch.cat([_pool_to(f, sz).reshape(n, -1) for sz in sizes], dim=1)
    if kind == "channel":
        return f.transpose(0, 1).reshape(c, -1)
    if kind == "sample":
        flat = f.reshape(n, -1)
        return F.normalize(flat @ flat.t(), dim=1)
    raise ValueError(f"unknown transform {kind!r}; choose from {TRANSFORMS}")


def feature_distance(kind: str, s: torch.Tensor, t: torch.Tensor, tau: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """Distance between transformed student rows ``s`` and teacher rows ``t``.

    Args:
        kind: "l2": ``mean((s - t)**2)`` over all elements; "kl": ``tau**2 * mean_r
            KL(softmax(t_r / tau) || softmax(s_r / tau))``; "pearson": ``mean_r (1 -
            pearson(s_r, t_r))``; "cka": ``1 - linear CKA`` with rows as examples.
        s: (R, D) student rows; gradients flow into it.
        t: (R, D) teacher rows (for "cka" any (R, D')); detached here.
        tau: temperature of "kl".
        eps: keeps constant rows from dividing by zero (pearson, cka).

    Returns:
        0-d tensor; 0 when ``s == t`` (for "pearson"/"cka" up to ``eps``, and provided the rows
        are not constant).
    """
    t = t.detach()
    if kind == "l2":
        return F.mse_loss(s, t)
    if kind == "kl":
        log_ps = F.log_softmax(s / tau, dim=1)
        log_pt = F.log_softmax(t / tau, dim=1)
        return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * (tau * tau)
    if kind == "pearson":
        sc = s - s.mean(dim=1, keepdim=True)
        tc = t - t.mean(dim=1, keepdim=True)
        corr = (sc * tc).sum(dim=1) / (sc.norm(dim=1) * tc.norm(dim=1) + eps)
        return (1.0 - corr).mean()
    if kind == "cka":
        return cka_loss(s, t, eps=eps)
    raise ValueError(f"unknown distance {kind!r}; choose from {DISTANCES}")


def _map_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shp = as_feature_map(torch.empty(1, *shape, device="meta")).shape[1:]
    return (int(shp[0]), int(shp[1]), int(shp[2]))


class DistillerLoss(nn.Module):
    """The feature term ``W_f * D_f(T_f<f_S, f_T>)`` of one ``DistillerChoice``.

    Alignment first (Auto-KD: "a pooling layer to align feature scales and 1x1 Conv to align
    filter numbers"): both maps are adaptive-average-pooled to the smaller spatial size, and a
    learned 1x1 conv (no bias) maps student to teacher channels when they differ, except for
    the channel-agnostic "attention" and "sample" transforms. The adapter is trained with the
    student and dropped afterwards. The "mask" transform draws a fresh spatial Bernoulli(0.5)
    mask every call from the module's own seeded generator (same mask for both networks).

    Args:
        choice: the distiller.
        student_shape: one student feature's shape without the batch dim: (C, H, W), tokens
            (L, C) or a vector (C,).
        teacher_shape: the teacher's, likewise.
        seed: seed of the mask generator.
    """

    def __init__(
        self,
        choice: DistillerChoice,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.choice = choice
        cs, hs, ws = _map_shape(student_shape)
        ct, ht, wt = _map_shape(teacher_shape)
        self.size: tuple[int, int] = (min(hs, ht), min(ws, wt))
        self.adapter: nn.Module | None = None
        if cs != ct and choice.transform not in _CHANNEL_AGNOSTIC:
            self.adapter = nn.Conv2d(cs, ct, kernel_size=1, bias=False)
        self._gen = torch.Generator().manual_seed(seed)

    def align(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, ...) student and teacher features -> aligned maps (N, C', h, w), teacher detached."""
        fs = _pool_to(as_feature_map(fs), self.size)
        ft = _pool_to(as_feature_map(ft.detach()).to(fs.dtype), self.size)
        if self.adapter is not None:
            fs = self.adapter(fs)
        return fs, ft

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """Args: fs student features (N, ...); ft teacher features (N, ...), detached.

        Returns:
            0-d weighted loss.
        """
        fs, ft = self.align(fs, ft)
        mask = None
        if self.choice.transform == "mask":
            n, _, h, w = fs.shape
            mask = (torch.rand(n, 1, h, w, generator=self._gen) < 0.5).to(fs.device, fs.dtype)
        s = transform_features(self.choice.transform, fs, mask=mask)
        t = transform_features(self.choice.transform, ft, mask=mask)
        d = feature_distance(self.choice.distance, s, t, tau=self.choice.temperature)
        return self.choice.weight * d

    def extra_repr(self) -> str:
        return f"{self.choice.describe()}, size={self.size}"


# ----------------------------------------------------------------------------------------------
# Monte Carlo tree search


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
    tree: DistillerTree, prefix: tuple[Any, ...], seen: set[tuple[Any, ...]], rng: random.Random
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
    space: DistillerTree,
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


# ----------------------------------------------------------------------------------------------
# teacher knowledge computed once (Auto-KD's offline processing)


def last_feature_layer(model: nn.Module, sample: torch.Tensor | None = None) -> str:
    """Name of the module whose output is the model's last feature map (before pooling).

    kd-compile students (and teachers built by a kd-compile space) name their stage outputs in
    ``model.feature_names``; the last one is used. Other models are probed with ``sample`` (a
    normalised batch (N, C, H, W)): the last module in execution order with a 4-D output.

    Raises:
        ValueError: no ``feature_names`` and no sample, or no module gives a 4-D output.
    """
    names = getattr(model, "feature_names", None)
    if names:
        return str(list(names)[-1])
    if sample is None:
        raise ValueError(f"{type(model).__name__} has no feature_names; pass a sample batch or a layer name")
    order: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                order.append(name)

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample[:2])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not order:
        raise ValueError(f"no module of {type(model).__name__} outputs a 4-D feature map")
    return order[-1]


def _pool_feature(f: torch.Tensor, pool: int | None) -> torch.Tensor:
    if pool is None or f.dim() != 4 or (f.shape[-2] <= pool and f.shape[-1] <= pool):
        return f
    return F.adaptive_avg_pool2d(f, (min(pool, f.shape[-2]), min(pool, f.shape[-1])))


def _features_and_logits(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    pool: int | None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits (N, K) and ``layer`` features (N, ...) of ``model`` on normalised x."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    try:
        with torch.inference_mode(), FeatureCapture(model, [layer]) as cap:
            for start in range(0, x.shape[0], batch_size):
                out = model(x[start : start + batch_size].to(device))
                logits.append(out.float().cpu())
                feats.append(_pool_feature(cap.features[layer], pool).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


@dataclass
class TeacherKnowledge:
    """Everything the distiller search needs from the teacher, computed once.

    Attributes:
        layer: teacher module name whose features are distilled (its last feature map).
        train_logits: float32 (N, K), aligned with ``data.x_train``.
        train_features: float32 (N, C, h, w) teacher features on ``data.x_train``.
        gap_index: int64 (G,) indices into ``data.x_val`` of the samples the representation
            gap is measured on (a fixed stratified subset).
        gap_features: float32 (G, C, h, w) teacher features on those samples.
        feature_pool: maps larger than this were average-pooled to it (None: full size).
        val_logits: float32 (M, K) teacher logits on ``data.x_val``.
    """

    layer: str
    train_logits: torch.Tensor
    train_features: torch.Tensor
    gap_index: torch.Tensor
    gap_features: torch.Tensor
    feature_pool: int | None = 4
    val_logits: torch.Tensor | None = None

    def logit_cache(self) -> TeacherCache:
        """The teacher logits as a ``TeacherCache`` for ``train_student``."""
        if self.val_logits is None:
            raise ValueError("this TeacherKnowledge holds no val logits; build it with build()")
        return TeacherCache(
            train_logits=self.train_logits,
            val_logits=self.val_logits,
            teacher_val_acc=float("nan"),
        )

    @classmethod
    def build(
        cls,
        teacher: nn.Module | None,
        data: DataBundle,
        *,
        cache: TeacherCache | None = None,
        layer: str | None = None,
        feature_pool: int | None = 4,
        gap_samples: int = 256,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 256,
    ) -> TeacherKnowledge:
        """Run the teacher once (or reuse ``cache``) over the train set and a val subset.

        Args:
            teacher: the teacher (always needed: the reward's gap uses its val features;
                with a ``cache`` that holds the train logits and ``layer`` features at the same
                pooling, it only runs on the ``gap_samples`` val images).
            data: the bundle.
            cache: reused for the train logits (and features, when it holds them).
            layer: teacher feature layer; default ``last_feature_layer(teacher, ...)``.
            feature_pool: average-pool maps larger than this (memory: the features of the whole
                train set are held); None keeps full size.
            gap_samples: val samples the representation gap is measured on.
            seed: seed of the stratified val subset.
            device: where the teacher runs.
            batch_size: inference batch size.

        Raises:
            ValueError: no teacher, or a cache not aligned with ``data``.
        """
        if teacher is None:
            raise ValueError(
                "distilling with an Auto-KD distiller needs the teacher module (teacher=) for its feature maps"
            )
        x_val = data.normalize(data.x_val)
        layer = layer or last_feature_layer(teacher, x_val[:2].to(device))
        orig = next(iter(teacher.parameters()), torch.empty(0)).device
        teacher.to(device)
        try:
            frac = min(1.0, gap_samples / max(1, data.x_val.shape[0]))
            gap_index = stratified_subset(data.y_val, frac, seed)
            _, gap_feats = _features_and_logits(teacher, x_val[gap_index], layer, feature_pool, batch_size, device)
            cached = cache is not None and layer in cache.train_features and cache.feature_pool == feature_pool
            if cache is not None:
                cache.check_aligned(data)
            if cached:
                assert cache is not None
                logits = cache.train_logits.float()
                feats = _pool_feature(cache.train_features[layer].float(), feature_pool)
            else:
                t_logits, feats = _features_and_logits(
                    teacher, data.normalize(data.x_train), layer, feature_pool, batch_size, device
                )
                logits = cache.train_logits.float() if cache is not None else t_logits
            val_logits = (
                cache.val_logits.float() if cache is not None else predict_logits(teacher, x_val, batch_size, device)
            )
        finally:
            teacher.to(orig)
        return cls(
            layer=layer,
            train_logits=logits.contiguous(),
            train_features=feats.contiguous(),
            gap_index=gap_index,
            gap_features=gap_feats.contiguous(),
            feature_pool=feature_pool,
            val_logits=val_logits.contiguous(),
        )


# ----------------------------------------------------------------------------------------------
# training with a DistillerLoss, and the proxy reward


class _ChoiceLoss:
    """A ``DistillerLoss`` on one student layer against cached teacher features, as an
    ``ExtraLoss`` for ``train_student``."""

    def __init__(self, choice: DistillerChoice, layer: str, knowledge: TeacherKnowledge, seed: int):
        self.choice = choice
        self.student_layers = (layer,)
        self.knowledge = knowledge
        self.seed = seed
        self.loss: DistillerLoss | None = None
        self.t_feats = knowledge.train_features

    def setup(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.Module:
        (shape,) = shapes.values()
        t_shape = tuple(self.knowledge.train_features.shape[1:])
        self.loss = DistillerLoss(self.choice, shape, t_shape, seed=self.seed)
        self.t_feats = self.knowledge.train_features.to(device)
        return self.loss

    def __call__(self, features: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        assert self.loss is not None
        (layer,) = self.student_layers
        return self.loss(features[layer], self.t_feats[index.to(self.t_feats.device)])


def _student_layer(model: nn.Module, data: DataBundle, layer: str | None) -> str:
    if layer is not None:
        return layer
    return last_feature_layer(model, data.normalize(data.x_val[:2]))


def train_with_distiller(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    cache: TeacherCache | None,
    teacher: nn.Module | None,
    choice: DistillerChoice,
    *,
    knowledge: TeacherKnowledge | None = None,
    student_layer: str | None = None,
    teacher_layer: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with logit KD plus the feature distiller ``choice``.

    ``loss = KDLoss(cfg.alpha, choice.temperature, kind=cfg.logit_loss)(s, y, t) +
    DistillerLoss(choice)(f_S, f_T)`` on the student's last feature map and the teacher's
    (``knowledge.layer``); ``cfg.tau`` and ``cfg.distiller`` are ignored (the choice sets the
    temperature and the feature term). ``cfg.use_kd=False`` trains with CE only.

    Args:
        model: the student (trained in place, left in eval mode on ``cfg.device``).
        data: the bundle.
        cfg: the training configuration.
        cache: offline teacher logits (and features) aligned with ``data``; may be None.
        teacher: the teacher; needed unless ``knowledge`` is given.
        choice: the distiller.
        knowledge: teacher knowledge from ``TeacherKnowledge.build`` (reuse it across calls).
        student_layer: student module to distil; default its last feature map.
        teacher_layer: teacher module; default its last feature map (ignored with
            ``knowledge``).
        progress: called with the fraction of steps done.

    Returns:
        TrainResult (``val_acc`` on the full val set).

    Raises:
        CandidateError: non-finite loss.
        ValueError: neither ``knowledge`` nor ``teacher``.
    """
    if knowledge is None:
        knowledge = TeacherKnowledge.build(
            teacher, data, cache=cache, layer=teacher_layer, seed=cfg.seed, device=cfg.device
        )
    if not cfg.use_kd:
        return train_student(model, data, dataclasses.replace(cfg, distiller=None), progress=progress)
    layer = _student_layer(model, data, student_layer)
    term = _ChoiceLoss(choice, layer, knowledge, cfg.seed)
    try:
        return train_student(
            model,
            data,
            dataclasses.replace(cfg, tau=choice.temperature, distiller=None),
            knowledge.logit_cache(),
            progress,
            extra_loss=term,
        )
    except CandidateError as exc:
        raise CandidateError(f"{exc} with distiller {choice.describe()}") from exc


def _reward_details(
    student_builder: Callable[[], nn.Module],
    data: DataBundle,
    knowledge: TeacherKnowledge,
    choice: DistillerChoice,
    train_cfg: TrainConfig,
    gap_weight: float,
    student_layer: str | None,
) -> dict[str, Any]:
    with torch.random.fork_rng():
        # every candidate starts from the same initial weights: only the distiller differs
        torch.manual_seed(train_cfg.seed)
        model = student_builder()
    try:
        res = train_with_distiller(
            model,
            data,
            train_cfg,
            None,
            None,
            choice,
            knowledge=knowledge,
            student_layer=student_layer,
        )
    except CandidateError as exc:
        return {"reward": -math.inf, "error": str(exc)}
    layer = _student_layer(model, data, student_layer)
    device = torch.device(train_cfg.device)
    x_val = data.normalize(data.x_val)
    logits, _ = _features_and_logits(model, x_val, layer, None, device=device)
    val_ce = float(F.cross_entropy(logits, data.y_val))
    _, s_gap = _features_and_logits(model, x_val[knowledge.gap_index], layer, knowledge.feature_pool, device=device)
    gap = float(cka_loss(s_gap, knowledge.gap_features))
    reward = -val_ce - gap_weight * gap
    if not math.isfinite(reward):
        reward = -math.inf
    return {
        "reward": reward,
        "val_ce": val_ce,
        "gap": gap,
        "val_acc": res.val_acc,
        "seconds": res.seconds,
    }


def distiller_reward(
    student_builder: Callable[[], nn.Module],
    data: DataBundle,
    cache_or_teacher: TeacherKnowledge | nn.Module,
    choice: DistillerChoice,
    train_cfg: TrainConfig,
    gap_weight: float = 0.1,
    *,
    student_layer: str | None = None,
) -> float:
    """Proxy reward of a distiller: ``-(val CE) - gap_weight * (1 - CKA(f_S, f_T))``.

    A fresh student (``student_builder()`` under ``torch.manual_seed(train_cfg.seed)``, so
    every distiller starts from the same weights) is trained with ``train_with_distiller``
    under ``train_cfg`` (set a small ``epochs``/``data_fraction`` for a proxy); then the val
    cross-entropy over the whole val set and the linear-CKA distance between the student's
    and the teacher's last feature maps on ``knowledge.gap_index`` are measured (Auto-KD
    Eq. 3: test loss plus representation gap).

    Args:
        student_builder: builds an untrained student.
        data: the bundle.
        cache_or_teacher: ``TeacherKnowledge`` (computed once, reused; the search's way) or
            the teacher module (its knowledge is then computed on every call).
        choice: the distiller.
        train_cfg: the proxy training configuration.
        gap_weight: weight of the representation gap.
        student_layer: student module to distil; default its last feature map.

    Returns:
        The reward (higher is better); ``-inf`` when the training diverged.
    """
    knowledge = (
        cache_or_teacher
        if isinstance(cache_or_teacher, TeacherKnowledge)
        else TeacherKnowledge.build(cache_or_teacher, data, seed=train_cfg.seed, device=train_cfg.device)
    )
    return float(
        _reward_details(student_builder, data, knowledge, choice, train_cfg, gap_weight, student_layer)["reward"]
    )


def search_distiller(
    student_builder: Callable[[], nn.Module],
    data: DataBundle,
    teacher: nn.Module,
    cache: TeacherCache | None,
    *,
    iterations: int = 8,
    epochs: float = 0.5,
    data_fraction: float = 0.3,
    seed: int = 0,
    tree: DistillerTree | None = None,
    train_cfg: TrainConfig | None = None,
    gap_weight: float = 0.1,
    c: float = 1.4,
    student_layer: str | None = None,
    teacher_layer: str | None = None,
    knowledge: TeacherKnowledge | None = None,
    progress: Callable[[int, DistillerChoice, float], None] | None = None,
) -> tuple[DistillerChoice, dict[str, Any]]:
    """Search the Auto-KD distiller tree for one student by MCTS on proxy rewards.

    The teacher's knowledge (train logits and features, val features for the gap) is computed
    once (``TeacherKnowledge.build``, reusing ``cache``'s logits); each MCTS iteration trains a
    fresh student for ``epochs`` on a stratified ``data_fraction`` of the train set and scores
    it with ``distiller_reward``.

    Args:
        student_builder: builds an untrained student (called once per evaluated distiller).
        data: the bundle.
        teacher: the teacher.
        cache: offline teacher logits aligned with ``data`` (optional).
        iterations: MCTS iterations (about one proxy training each).
        epochs: proxy training epochs.
        data_fraction: proxy training subset.
        seed: seed of the search, the proxy subset and the student init.
        tree: the distiller space; default ``DistillerTree()``.
        train_cfg: base training configuration (its epochs, data_fraction and seed are
            replaced by the proxy's; early stopping and per-epoch evaluation are turned off).
        gap_weight: weight of the representation gap in the reward.
        c: UCB1 exploration constant.
        student_layer, teacher_layer: layers to distil (default: last feature maps).
        knowledge: precomputed teacher knowledge (skips ``TeacherKnowledge.build``).
        progress: called after each iteration with (iteration index, choice, reward).

    Returns:
        (best distiller, report) with report keys: iterations, evaluations, rewards (one dict
        per iteration: iteration, choice, describe, reward, cached, and val_ce, gap, val_acc,
        seconds for evaluated ones), best, best_reward, teacher_layer, tree, proxy (the proxy
        TrainConfig as a dict), seconds.
    """
    t0 = time.perf_counter()
    tree = tree or DistillerTree()
    base = train_cfg or TrainConfig()
    proxy = dataclasses.replace(
        base,
        epochs=epochs,
        data_fraction=data_fraction,
        seed=seed,
        early_stop_patience=None,
        eval_every_epoch=False,
        distiller=None,
    )
    if knowledge is None:
        knowledge = TeacherKnowledge.build(
            teacher, data, cache=cache, layer=teacher_layer, seed=seed, device=proxy.device
        )
    details: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []

    def reward_fn(choice: DistillerChoice) -> float:
        d = _reward_details(student_builder, data, knowledge, choice, proxy, gap_weight, student_layer)
        details[choice.key] = d
        return float(d["reward"])

    def on_result(choice: DistillerChoice, reward: float, cached: bool) -> None:
        row: dict[str, Any] = {
            "iteration": len(rows),
            "choice": choice.to_dict(),
            "describe": choice.describe(),
            "reward": reward,
            "cached": cached,
        }
        if not cached:
            row.update({k: v for k, v in details[choice.key].items() if k != "reward"})
        rows.append(row)
        if progress is not None:
            progress(row["iteration"], choice, reward)

    result = mcts_search(reward_fn, tree, iterations, seed=seed, c=c, on_result=on_result)
    report = {
        "iterations": iterations,
        "evaluations": result.evaluations,
        "rewards": rows,
        "best": result.best.to_dict(),
        "best_describe": result.best.describe(),
        "best_reward": result.best_reward,
        "teacher_layer": knowledge.layer,
        "tree": tree.to_dict(),
        "proxy": proxy.to_dict(),
        "gap_weight": gap_weight,
        "seconds": time.perf_counter() - t0,
    }
    return result.best, report
