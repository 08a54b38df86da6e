"""Tests for kd_compile.distill.autokd: the distiller tree, its losses against hand-computed
values, MCTS (UCB1, caching, determinism, finding the best leaf) and the training glue."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache, TrainConfig, train_student
from kd_compile.distill.autokd import (
    DISTANCES,
    TRANSFORMS,
    DistillerChoice,
    DistillerLoss,
    DistillerTree,
    MctsNode,
    TeacherKnowledge,
    distiller_reward,
    feature_distance,
    last_feature_layer,
    mcts_search,
    search_distiller,
    select_child,
    train_with_distiller,
    transform_features,
    ucb_score,
)
from kd_compile.students import create_space

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# the space as data


def test_choice_round_trip_and_validation() -> None:
    ch = DistillerChoice("attention", "kl", 5, 2)
    assert DistillerChoice.from_dict(ch.to_dict()) == ch
    assert ch.to_dict() == {
        "transform": "attention",
        "distance": "kl",
        "weight": 5.0,
        "temperature": 2.0,
    }
    assert ch.describe() == "attention+kl w5 t2"
    with pytest.raises(ValueError, match="transform"):
        DistillerChoice(transform="fourier")
    with pytest.raises(ValueError, match="distance"):
        DistillerChoice(distance="l1")
    with pytest.raises(ValueError, match="temperature"):
        DistillerChoice(temperature=0.0)


def test_tree_enumerates_every_path() -> None:
    tree = DistillerTree(
        transforms=("none", "sample"),
        distances=("l2", "kl", "cka"),
        weights=(1.0,),
        temperatures=(1.0, 4.0),
    )
    assert tree.size == 12
    leaves = tree.leaves()
    assert len(set(leaves)) == 12
    assert tree.leaves(("sample", "kl")) == [("sample", "kl", 1.0, 1.0), ("sample", "kl", 1.0, 4.0)]
    assert tree.choice(("sample", "kl", 1.0, 4.0)) == DistillerChoice("sample", "kl", 1.0, 4.0)
    assert DistillerTree().size == len(TRANSFORMS) * len(DISTANCES) * 3 * 4
    with pytest.raises(ValueError, match="no options"):
        DistillerTree(weights=())
    with pytest.raises(ValueError):
        DistillerTree(transforms=("none", "bogus"))


# ---------------------------------------------------------------------------------------------
# transforms and distances against hand-computed values


def test_transforms_hand_computed() -> None:
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    assert torch.equal(transform_features("none", f), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # pyramid: 1x1 (mean 2.5), 2x2 (the map itself; the 4x4 level is capped at 2x2)
    assert torch.allclose(
        transform_features("multiscale", f), torch.tensor([[2.5, 1.0, 2.0, 3.0, 4.0]])
    )
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert torch.equal(
        transform_features("mask", f, mask=mask), torch.tensor([[1.0, 0.0, 0.0, 4.0]])
    )

    g = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    a = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])  # mean over channels of f**2
    assert torch.allclose(transform_features("attention", g), (a / a.norm()).unsqueeze(0))

    h = torch.tensor([[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]])  # (2, 2, 1, 1)
    # one row per channel over (sample, position)
    assert torch.equal(transform_features("channel", h), torch.tensor([[1.0, 3.0], [2.0, 4.0]]))
    gram = torch.tensor([[5.0, 11.0], [11.0, 25.0]])
    assert torch.allclose(transform_features("sample", h), gram / gram.norm(dim=1, keepdim=True))


def test_distances_hand_computed() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[2.0, 4.0, 6.0]])
    assert feature_distance("l2", s, t).item() == pytest.approx((1 + 4 + 9) / 3)
    assert feature_distance("pearson", s, t).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distance("pearson", s, t.flip(1)).item() == pytest.approx(2.0, abs=1e-6)
    # KL(softmax(t / 2) || softmax(s / 2)) * 2**2, by hand
    pt = [math.exp(v / 2) for v in (2.0, 4.0, 6.0)]
    ps = [math.exp(v / 2) for v in (1.0, 2.0, 3.0)]
    pt = [v / sum(pt) for v in pt]
    ps = [v / sum(ps) for v in ps]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert feature_distance("kl", s, t, tau=2.0).item() == pytest.approx(4 * kl, rel=1e-5)
    # CKA is invariant to isotropic scaling: (x, 3x) -> distance 0; orthogonal centred Grams -> 1
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert feature_distance("cka", x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.tensor([[1.0], [1.0], [-2.0]])
    # centred x is x; K = x x^T and L = y y^T have <K, L>_F = (x^T y)^2 = 0 -> CKA 0
    assert feature_distance("cka", x, y).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_loss_zero_on_identical_features_and_scaled_by_weight(
    transform: str, distance: str
) -> None:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(4, 3, 4, 4, generator=gen)
    loss = DistillerLoss(DistillerChoice(transform, distance, 5.0, 2.0), (3, 4, 4), (3, 4, 4))
    assert loss.adapter is None
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(4, 3, 4, 4, generator=gen)
    w5 = DistillerLoss(DistillerChoice(transform, distance, 5.0, 2.0), (3, 4, 4), (3, 4, 4), seed=3)
    w1 = DistillerLoss(DistillerChoice(transform, distance, 1.0, 2.0), (3, 4, 4), (3, 4, 4), seed=3)
    v5, v1 = w5(f, other).item(), w1(f, other).item()
    assert v1 > 1e-4
    assert v5 == pytest.approx(5 * v1, rel=1e-5)


def test_alignment_pools_and_adapts_channels_only_where_needed() -> None:
    fs, ft = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)
    hint = DistillerLoss(DistillerChoice("none", "l2"), (4, 6, 6), (8, 3, 3))
    assert isinstance(hint.adapter, torch.nn.Conv2d) and hint.adapter.weight.shape == (8, 4, 1, 1)
    a_s, a_t = hint.align(fs, ft)
    assert a_s.shape == a_t.shape == (2, 8, 3, 3)
    with torch.no_grad():
        want = F.mse_loss(hint.adapter(F.adaptive_avg_pool2d(fs, 3)), ft)
    assert hint(fs, ft).item() == pytest.approx(want.item(), rel=1e-6)
    for agnostic in ("attention", "sample"):
        assert DistillerLoss(DistillerChoice(agnostic, "l2"), (4, 6, 6), (8, 3, 3)).adapter is None
    # a vector feature (N, C) is a 1x1 map
    vec = DistillerLoss(DistillerChoice("none", "cka"), (16,), (8, 3, 3))
    assert vec(torch.randn(5, 16), torch.randn(5, 8, 3, 3)).dim() == 0


def test_gradients_reach_student_and_adapter_not_teacher() -> None:
    for transform in TRANSFORMS:
        fs = torch.randn(3, 4, 4, 4, requires_grad=True)
        ft = torch.randn(3, 6, 4, 4, requires_grad=True)
        loss = DistillerLoss(DistillerChoice(transform, "l2"), (4, 4, 4), (6, 4, 4))
        loss(fs, ft).backward()
        assert ft.grad is None, transform
        assert fs.grad is not None and fs.grad.abs().sum() > 0, transform
        if loss.adapter is not None:
            assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0


def test_mask_is_seeded_and_shared() -> None:
    f = torch.randn(2, 3, 4, 4)
    a = DistillerLoss(DistillerChoice("mask", "l2"), (3, 4, 4), (3, 4, 4), seed=7)
    b = DistillerLoss(DistillerChoice("mask", "l2"), (3, 4, 4), (3, 4, 4), seed=7)
    g = torch.randn(2, 3, 4, 4)
    assert a(f, g).item() == b(f, g).item()
    # the masked loss equals the L2 over the kept positions only (the same mask on both sides)
    gen = torch.Generator().manual_seed(7)
    m = (torch.rand(2, 1, 4, 4, generator=gen) < 0.5).float()
    c = DistillerLoss(DistillerChoice("mask", "l2"), (3, 4, 4), (3, 4, 4), seed=7)
    assert c(f, g).item() == pytest.approx(F.mse_loss(f * m, g * m).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# MCTS


def test_ucb_prefers_unvisited_children() -> None:
    assert ucb_score(0.0, 0, 10, 1.4) == math.inf
    # UCB1: scaled mean + c * sqrt(2 ln N / n)
    assert ucb_score(3.0, 4, 10, 1.4, lo=0.0, hi=1.0) == pytest.approx(
        0.75 + 1.4 * math.sqrt(2 * math.log(10) / 4)
    )
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
    tree = DistillerTree(
        transforms=("none", "sample"), distances=("l2",), weights=(1.0,), temperatures=(1.0,)
    )

    def reward(ch: DistillerChoice) -> float:
        return float("nan") if ch.transform == "none" else -1.0

    res = mcts_search(reward, tree, iterations=4, seed=0)
    assert res.best.transform == "sample" and res.best_reward == -1.0
    assert math.isfinite(res.root.total)


# ---------------------------------------------------------------------------------------------
# training glue (random teacher: these check mechanics, not accuracy)


@pytest.fixture(scope="module")
def tiny() -> tuple[DataBundle, object, object, TeacherCache]:
    gen = torch.Generator().manual_seed(0)
    n, k = 160, 4
    y = torch.arange(n) % k
    # class-dependent blobs so that a few steps already learn something
    x = torch.rand(n, 1, 8, 8, generator=gen) * 120
    for c in range(k):
        x[y == c, :, 2 * c : 2 * c + 2, :] += 130
    x = x.clamp(0, 255).to(torch.uint8)
    data = DataBundle(
        "tiny", x[:128], y[:128], x[128:], y[128:], k, [str(i) for i in range(k)], (0.3,), (0.3,)
    )
    space = create_space("cnn", input_shape=(1, 8, 8), num_classes=k, max_depth=3)
    tconf = space.validate({**space.default(), "depth": 2, "w1": 16, "w2": 32})
    sconf = space.validate({**space.default(), "depth": 2, "w1": 8, "w2": 8})
    torch.manual_seed(0)
    teacher = space.build(tconf)
    cache = TeacherCache.build(teacher, data)
    return data, teacher, (lambda: space.build(sconf)), cache


def test_weight_zero_reproduces_train_student(tiny) -> None:
    data, teacher, builder, cache = tiny
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, tau=2.0, seed=3)
    torch.manual_seed(0)
    ref = builder()
    r_ref = train_student(ref, data, cfg, cache)
    torch.manual_seed(0)
    mine = builder()
    r = train_with_distiller(
        mine, data, cfg, cache, teacher, DistillerChoice("none", "l2", 0.0, 2.0)
    )
    # the same subset, batches, optimiser and logit loss: bit-identical weights
    assert r.steps == r_ref.steps and r.val_acc == r_ref.val_acc
    for (k, a), (_, b) in zip(ref.state_dict().items(), mine.state_dict().items()):
        assert torch.equal(a, b), k
    torch.manual_seed(0)
    other = builder()
    train_with_distiller(other, data, cfg, cache, teacher, DistillerChoice("none", "l2", 5.0, 2.0))
    assert not torch.equal(other.fc.weight, ref.fc.weight)


def test_teacher_knowledge_and_reward(tiny) -> None:
    data, teacher, builder, cache = tiny
    assert last_feature_layer(teacher) == "layers.l2"
    know = TeacherKnowledge.build(teacher, data, cache=cache, gap_samples=16)
    assert know.layer == "layers.l2"
    assert know.train_features.shape[0] == data.x_train.shape[0]
    assert know.gap_features.shape[0] == know.gap_index.shape[0] == 16
    assert torch.equal(know.train_logits, cache.train_logits)
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0)
    ch = DistillerChoice("attention", "kl", 1.0, 4.0)
    r1 = distiller_reward(builder, data, know, ch, cfg)
    r2 = distiller_reward(builder, data, know, ch, cfg)
    assert r1 == r2 and math.isfinite(r1)
    # reward = -CE - 0.1 * gap with gap in [0, 1]: within 0.1 of -CE, and below it
    r0 = distiller_reward(builder, data, know, ch, cfg, gap_weight=0.0)
    assert r1 <= r0 <= r1 + 0.1 + 1e-9


def test_search_distiller_report(tiny) -> None:
    data, teacher, builder, cache = tiny
    tree = DistillerTree(
        transforms=("none", "sample"), distances=("l2", "cka"), weights=(1.0,), temperatures=(4.0,)
    )
    seen: list[int] = []
    best, report = search_distiller(
        builder,
        data,
        teacher,
        cache,
        iterations=3,
        epochs=1,
        data_fraction=0.5,
        tree=tree,
        train_cfg=TrainConfig(batch_size=32),
        progress=lambda i, ch, r: seen.append(i),
    )
    assert seen == [0, 1, 2]
    assert report["iterations"] == 3 and report["evaluations"] == 3
    rows = report["rewards"]
    assert all({"val_ce", "gap", "val_acc"} <= set(r) for r in rows)
    assert report["best_reward"] == max(r["reward"] for r in rows)
    assert DistillerChoice.from_dict(report["best"]) == best
    assert report["proxy"]["epochs"] == 1 and report["proxy"]["data_fraction"] == 0.5
