"""The budgeted trainer (kd_compile.distill.trainer): subsets, determinism, budgets, failures,
feature terms, mixed precision."""

from __future__ import annotations

import pytest
import torch
from distill_support import SmallCNN, make_cnn
from torch import nn

from kd_compile.data import DataBundle
from kd_compile.distill import (
    DistillerSpec,
    FeatureSpec,
    TeacherCache,
    TrainConfig,
    evaluate,
    predict_logits,
    stratified_subset,
    train_student,
)
from kd_compile.distill.trainer import amp_dtype
from kd_compile.errors import CandidateError

torch.set_num_threads(1)


def test_stratified_subset_is_fixed_and_stratified(digits: DataBundle) -> None:
    a = stratified_subset(digits.y_train, 0.2, seed=3)
    b = stratified_subset(digits.y_train, 0.2, seed=3)
    c = stratified_subset(digits.y_train, 0.2, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    full = torch.bincount(digits.y_train, minlength=10)
    sub = torch.bincount(digits.y_train[a], minlength=10)
    assert torch.equal(sub, torch.round(full.double() * 0.2).long())
    assert torch.equal(stratified_subset(digits.y_train, 1.0, 0), torch.arange(1400))


def test_training_is_deterministic_and_learns(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=4.5, batch_size=64, seed=7, data_fraction=0.5, orth_weight=1e-3, lr=1e-2, tau=1.0)
    m1, m2 = make_cnn(16, dropout=0.1), make_cnn(16, dropout=0.1)
    r1 = train_student(m1, digits, cfg, cache)
    r2 = train_student(m2, digits, cfg, cache)
    assert r1.val_acc == r2.val_acc
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    # 700 samples, 64 a batch: 10 steps an epoch (last partial batch dropped) -> 45 steps
    assert r1.steps == 45 and r1.epochs_run == pytest.approx(4.5)
    assert [h["step"] for h in r1.history] == [10, 20, 30, 40, 45]
    assert r1.val_acc > 0.4  # chance is 0.1
    r3 = train_student(make_cnn(16, dropout=0.1), digits, cfg.__class__(**{**cfg.to_dict(), "seed": 8}), cache)
    assert r3.val_acc != r1.val_acc or r3.train_acc != r1.train_acc


def test_kd_uses_teacher_logits(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=0.5, batch_size=64, seed=0)
    r_kd = train_student(m_kd := make_cnn(8), digits, cfg, cache)
    # shuffled teacher logits must change the result: the cache really is read, by index
    bad = TeacherCache.from_logits(cache.train_logits.flip(0), cache.val_logits, digits.y_val)
    train_student(m_bad := make_cnn(8), digits, cfg, bad)
    assert not torch.equal(m_kd.head.weight, m_bad.head.weight)
    # the online teacher gives (up to rounding of differently batched teacher runs) the same
    r_on = train_student(make_cnn(8), digits, cfg, teacher=teacher)
    assert abs(r_on.val_acc - r_kd.val_acc) <= 0.02
    with pytest.raises(ValueError):
        train_student(make_cnn(8), digits, cfg)


def test_budgets_progress_and_early_stop(digits: DataBundle) -> None:
    seen: list[float] = []
    r = train_student(
        make_cnn(8),
        digits,
        TrainConfig(epochs=0.25, use_kd=False, batch_size=32),
        progress=seen.append,
    )
    assert r.steps == round(0.25 * (1400 // 32)) == 11
    assert seen == sorted(seen) and seen[-1] == 1.0
    r = train_student(make_cnn(8), digits, TrainConfig(epochs=50, use_kd=False, max_seconds=0.0))
    assert r.steps == 1 and r.stopped == "time"
    r = train_student(
        make_cnn(8),
        digits,
        TrainConfig(epochs=30, use_kd=False, lr=1e-9, early_stop_patience=2, batch_size=256),
    )
    # with no learning the accuracy cannot improve after the first epoch: stop after 3
    assert r.stopped == "early_stop" and r.steps == 3 * (1400 // 256)
    assert all("val_acc" in h for h in r.history) and len(r.history) == 3


def test_nan_loss_raises_candidate_error(digits: DataBundle) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.flatten(1)) * float("nan")

    with pytest.raises(CandidateError):
        train_student(Broken(), digits, TrainConfig(epochs=1, use_kd=False))


def test_predict_logits_and_evaluate(digits: DataBundle, teacher: SmallCNN) -> None:
    xv, yv = digits.val_tensors()
    teacher.train()
    logits = predict_logits(teacher, xv, batch_size=100)
    assert teacher.training  # mode restored
    assert logits.shape == (397, 10) and logits.dtype == torch.float32
    acc = evaluate(teacher, xv, yv, batch_size=1000)
    assert acc == pytest.approx(float((logits.argmax(1) == yv).float().mean()))
    with pytest.raises(TypeError):
        predict_logits(teacher, digits.x_val)
    teacher.eval()


def test_train_with_feature_distiller(tmp_path, digits: DataBundle, teacher: SmallCNN) -> None:
    spec = DistillerSpec(
        "kl",
        (
            FeatureSpec.named("hint", student="block", teacher="block", weight=1.0),
            FeatureSpec.named("nst_approx", student="stem", teacher="proj", weight=5.0),
        ),
    )
    cfg = TrainConfig(epochs=1, batch_size=64, seed=0, tau=1.0, distiller=spec)
    cache = TeacherCache.build(teacher, digits, cache_dir=tmp_path, feature_layers=spec.teacher_layers)
    r1 = train_student(m1 := make_cnn(8), digits, cfg, cache)
    r2 = train_student(m2 := make_cnn(8), digits, cfg, cache)
    assert r1.val_acc == r2.val_acc and torch.equal(m1.head.weight, m2.head.weight)
    assert not m1.stem[0]._forward_hooks  # capture hooks removed after training
    # the feature terms change training
    train_student(m3 := make_cnn(8), digits, TrainConfig(epochs=1, batch_size=64, seed=0, tau=1.0), cache)
    assert not torch.equal(m1.head.weight, m3.head.weight)
    # online teacher features give a working run too; a cache without features needs a teacher
    r_on = train_student(make_cnn(8), digits, cfg, teacher=teacher)
    assert r_on.steps == r1.steps
    with pytest.raises(ValueError, match="no features"):
        train_student(make_cnn(8), digits, cfg, TeacherCache.build(teacher, digits))


def test_amp_settings() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None  # CPU stays fp32
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError):
        amp_dtype("fp16", cpu)
    with pytest.raises(ValueError):
        TrainConfig(amp="half")


def test_bf16_autocast_training_runs_on_cpu(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=1e-2)
    full = train_student(make_cnn(16), digits, cfg, cache)
    half = train_student(make_cnn(16), digits, TrainConfig.from_dict({**cfg.to_dict(), "amp": "bf16"}), cache)
    assert half.val_acc > 0.4 and abs(half.val_acc - full.val_acc) < 0.15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_amp_and_compile(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, device="cuda", compile=True)
    r = train_student(make_cnn(16), digits, cfg, cache)
    assert r.val_acc > 0.4
