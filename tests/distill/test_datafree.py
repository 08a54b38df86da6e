"""Tests for kd_compile.distill.datafree: BatchNorm-statistics inversion of a teacher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_compile.data import DataBundle, load_data
from kd_compile.distill import TrainConfig, evaluate, predict_logits, train_student
from kd_compile.distill.datafree import (
    BatchNormStatsLoss,
    balanced_targets,
    synthesize,
    total_variation,
)
from kd_compile.errors import DataError
from kd_compile.students import create_space

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits_teacher() -> tuple[nn.Module, DataBundle]:
    """A tiny conv-bn-relu teacher trained for a few seconds on scikit-learn's digits (12x12)."""
    data = load_data("digits", image_size=12)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=2)
    torch.manual_seed(0)
    model = space.build(space.validate({**space.default(), "depth": 2, "w1": 16, "w2": 32}))
    train_student(model, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2, use_kd=False, seed=0))
    xv, yv = data.val_tensors()
    assert evaluate(model, xv, yv) > 0.7  # a real teacher, not noise
    return model, data


def test_no_batchnorm_teacher_raises_data_error() -> None:
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(DataError, match="needs a teacher with BatchNorm layers") as exc:
        synthesize(teacher, (1, 8, 8), 10, n_images=20, steps=1)
    assert "\n" not in exc.value.line()
    # BatchNorm without running statistics has nothing to match either
    no_stats = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(DataError):
        BatchNormStatsLoss(no_stats)


def test_bn_statistics_loss_hand_computed() -> None:
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]], [[[4.0, 2.0]], [[-1.0, -1.0]]]])  # (2, 2, 1, 2)
    # channel 0: values 0, 2, 4, 2 -> mean 2, var 2; channel 1: 1, 1, -1, -1 -> mean 0, var 1
    want = torch.tensor([1.0, 1.0]).norm() + torch.tensor([0.0, 0.5]).norm()
    with BatchNormStatsLoss(nn.Sequential(bn)) as hook:
        bn(x)
        assert hook.loss().item() == pytest.approx(want.item())
        # matching statistics give zero
        bn.running_mean.copy_(torch.tensor([2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 1.0]))
        bn(x)
        assert hook.loss().item() == pytest.approx(0.0, abs=1e-6)
    assert not bn._forward_pre_hooks  # hooks removed on exit


def test_priors_and_targets() -> None:
    flat = torch.ones(1, 1, 3, 3)
    assert total_variation(flat).item() == 0.0
    ramp = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 2, 3)
    # horizontal steps of 1, none vertical
    assert total_variation(ramp).item() == pytest.approx(1.0)
    t = balanced_targets(25, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=10)
    assert counts.min() == 2 and counts.max() == 3 and int(counts.sum()) == 25
    with pytest.raises(ValueError, match="cover every class"):
        balanced_targets(5, 10, torch.Generator())


def test_synthesize_digits(digits_teacher) -> None:
    teacher, data = digits_teacher
    teacher.train()
    seen: list[float] = []
    syn = synthesize(
        teacher,
        data.input_shape,
        10,
        n_images=60,
        steps=100,
        batch_size=30,
        seed=1,
        mean=data.mean,
        std=data.std,
        progress=seen.append,
    )
    # bundle layout
    assert syn.name == "data-free" and syn.meta["data_free"] is True
    assert syn.x_train.dtype == syn.x_val.dtype == torch.uint8
    assert syn.x_train.shape[1:] == syn.x_val.shape[1:] == (1, 12, 12)
    assert syn.x_train.shape[0] + syn.x_val.shape[0] == 60 and syn.x_val.shape[0] == 6
    assert syn.y_train.dtype == torch.int64 and syn.mean == data.mean and syn.std == data.std
    assert seen[-1] == 1.0 and seen == sorted(seen)
    # the teacher is left as it was
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    # the BatchNorm statistics loss decreases over the steps
    hist = syn.meta["bn_loss_history"]
    assert len(hist) == 100 and hist[-1] < 0.5 * hist[0]
    # every class was assigned as a target (6 each), and the teacher (82% on real digits)
    # recognises most images as their target (chance: 10%; measured 75% at 100 steps)
    assert syn.meta["target_agreement"] >= 0.6
    # labels are the teacher's argmax on the quantised images the student will see
    x_all = torch.cat([syn.x_train, syn.x_val])
    y_all = torch.cat([syn.y_train, syn.y_val])
    assert torch.equal(predict_logits(teacher, syn.normalize(x_all)).argmax(1), y_all)
    assert len(set(y_all.tolist())) >= 8
    assert sum(syn.meta["class_counts"]) == 60
    # images are images, not saturated noise
    assert 0.05 < (x_all.float() / 255).std() and (x_all == 0).float().mean() < 0.9


def test_synthesize_deterministic(digits_teacher) -> None:
    teacher, data = digits_teacher
    kw = {"n_images": 12, "steps": 4, "batch_size": 12, "mean": data.mean, "std": data.std}
    a = synthesize(teacher, data.input_shape, 10, seed=3, **kw)
    b = synthesize(teacher, data.input_shape, 10, seed=3, **kw)
    c = synthesize(teacher, data.input_shape, 10, seed=4, **kw)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_train, c.x_train)
    with pytest.raises(ValueError, match="cover every class"):
        synthesize(teacher, data.input_shape, 10, n_images=6, steps=1)


def test_a_data_free_run_synthesises_its_images_once(tmp_path, monkeypatch):
    """The images are kept under the cache folder, keyed by the teacher's weights and the
    settings: a resumed or repeated run reuses them (no synthesis), another seed or teacher does
    not, and a damaged file is synthesised again."""
    from types import SimpleNamespace

    import torch.nn as nn

    from kd_compile.config import CompileConfig
    from kd_compile.inputs import synthesize_data, synthetic_cache_file

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).eval()  # fmt: skip
    tch = SimpleNamespace(module=net, input_shape=(1, 8, 8), num_classes=3, meta={})
    said: list[str] = []
    rep = SimpleNamespace(message=said.append, training=lambda what, f: None)
    cfg = CompileConfig(teacher="t.pt", synthetic_images=24, synthetic_steps=2)
    first = synthesize_data(tch, cfg, rep)
    assert not any("reused" in m for m in said)
    again = synthesize_data(tch, cfg, rep)
    assert any("synthesised before are reused" in m for m in said)
    for k in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(first, k), getattr(again, k)), k
    assert (again.mean, again.std, again.num_classes, again.name) == (first.mean, first.std, 3, "data-free")
    assert again.meta["data_free"] is True
    said.clear()
    other = synthesize_data(tch, CompileConfig(teacher="t.pt", synthetic_images=24, synthetic_steps=2, seed=1), rep)
    assert not any("reused" in m for m in said) and not torch.equal(other.x_train, first.x_train)
    settings = {"shape": (1, 8, 8), "num_classes": 3, "n_images": 24, "steps": 2, "seed": 0, "mean": None, "std": None}
    kept = synthetic_cache_file(net, settings)
    assert kept is not None and kept.is_file()
    kept.write_bytes(b"not a checkpoint")
    said.clear()
    healed = synthesize_data(tch, cfg, rep)
    assert not any("reused" in m for m in said) and torch.equal(healed.x_train, first.x_train)
