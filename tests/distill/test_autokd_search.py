"""Auto-KD's training glue (kd_compile.distill.autokd.search / knowledge): training with a
choice, teacher knowledge, the reward and the search report (a random teacher: mechanics, not
accuracy)."""

from __future__ import annotations

import math

import pytest
import torch

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache, TrainConfig, train_student
from kd_compile.distill.autokd import (
    DistillerChoice,
    DistillerTree,
    TeacherKnowledge,
    distiller_reward,
    last_feature_layer,
    search_distiller,
    train_with_distiller,
)
from kd_compile.students import create_space

torch.set_num_threads(1)


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
    data = DataBundle("tiny", x[:128], y[:128], x[128:], y[128:], k, [str(i) for i in range(k)], (0.3,), (0.3,))
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
    r = train_with_distiller(mine, data, cfg, cache, teacher, DistillerChoice("none", "l2", 0.0, 2.0))
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
    tree = DistillerTree(transforms=("none", "sample"), distances=("l2", "cka"), weights=(1.0,), temperatures=(4.0,))
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


def test_a_search_given_the_evaluations_it_made_makes_the_same_choices_without_training(tiny):
    """What kd-compile's resume relies on: each trained distiller is reported to ``on_evaluated``;
    a search given those as ``known`` trains nothing and ends with the same choice and rewards."""
    data, teacher, builder, cache = tiny
    tree = DistillerTree(transforms=("none", "sample"), distances=("l2", "cka"), weights=(1.0,), temperatures=(4.0,))
    kw = {"iterations": 3, "epochs": 1, "data_fraction": 0.5, "tree": tree, "train_cfg": TrainConfig(batch_size=32)}
    evaluated: dict = {}
    best, report = search_distiller(builder, data, teacher, cache, **kw,
                                    on_evaluated=lambda ch, d: evaluated.setdefault(ch.key, d))  # fmt: skip
    assert len(evaluated) == report["evaluations"] >= 2

    def no_training():
        raise AssertionError("a known distiller was trained again")

    # one of them known: the rest are trained, and reported
    first = next(iter(evaluated))
    again: dict = {}
    best2, report2 = search_distiller(builder, data, teacher, cache, **kw, known={first: evaluated[first]},
                                      on_evaluated=lambda ch, d: again.setdefault(ch.key, d))  # fmt: skip
    assert first not in again and set(again) == set(evaluated) - {first}
    best3, report3 = search_distiller(no_training, data, teacher, cache, **kw, known=evaluated)
    for b, r in ((best2, report2), (best3, report3)):
        assert b == best and [x["reward"] for x in r["rewards"]] == [x["reward"] for x in report["rewards"]]
