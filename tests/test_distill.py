"""Tests for kd_compile.distill: losses against hand-computed values, the offline teacher cache,
and the budgeted trainer (determinism, budgets, failures)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_compile.data import DataBundle
from kd_compile.distill import (
    KDLoss,
    TeacherCache,
    TrainConfig,
    dist_loss,
    evaluate,
    kd_loss,
    orthogonal_modules,
    orthogonality_penalty,
    predict_logits,
    standardize_logits,
    stratified_subset,
    train_student,
)
from kd_compile.errors import CandidateError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# fixtures


def _digits_bundle() -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images * 15.0, dtype=torch.float32).clamp(0, 255).to(torch.uint8)
    x = x.unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return DataBundle(
        name="digits-test",
        x_train=x[:1400],
        y_train=y[:1400],
        x_val=x[1400:],
        y_val=y[1400:],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        mean=(0.3,),
        std=(0.4,),
    )


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return _digits_bundle()


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.proj = nn.Conv2d(width, 2 * width, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.proj(self.block(self.stem(x))))
        return self.head(self.drop(f.mean(dim=(2, 3))))


def _make(width: int = 16, seed: int = 0, dropout: float = 0.0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(width, dropout=dropout)


@pytest.fixture(scope="module")
def teacher(digits: DataBundle) -> SmallCNN:
    t = _make(32, seed=1)
    train_student(t, digits, TrainConfig(epochs=3, use_kd=False, batch_size=64, seed=1, lr=1e-2))
    return t


# ---------------------------------------------------------------------------------------------
# losses


def test_kd_loss_matches_hand_computed_kl() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    # tau = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    expect = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, tau=1.0).item() == pytest.approx(expect, rel=1e-6)
    # tau = 2: p_t = (sqrt3, 1) / (1 + sqrt3), and the tau^2 = 4 factor
    a = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    expect2 = 4.0 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert kd_loss(s, t, tau=2.0).item() == pytest.approx(expect2, rel=1e-6)


def test_kd_loss_reductions_and_reference() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    per = kd_loss(s, t, 3.0, reduction="none")
    assert per.shape == (5,)
    ref = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    assert kd_loss(s, t, 3.0).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_loss(s, t, 3.0, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-6)
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        kd_loss(s, t[:, :3], 3.0)


def test_kd_loss_gradient_is_tau_times_prob_difference() -> None:
    s = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0]])
    tau = 2.0
    kd_loss(s, t, tau).backward()
    expect = tau * (F.softmax(s.detach() / tau, 1) - F.softmax(t / tau, 1))
    torch.testing.assert_close(s.grad, expect)


def test_standardize_logits_and_invariance() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0]])
    r = math.sqrt(1.5)  # 1 / population std of (1, 2, 3) = 1 / sqrt(2/3)
    torch.testing.assert_close(
        standardize_logits(z), torch.tensor([[-r, 0.0, r]]), atol=1e-6, rtol=0
    )
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    base = kd_loss(s, t, 2.0, standardize=True)
    # an affine change of either logits does not change the standardised loss
    assert kd_loss(3.0 * s + 5.0, 0.5 * t - 2.0, 2.0, standardize=True).item() == pytest.approx(
        base.item(), rel=1e-4
    )
    assert kd_loss(3.0 * s, t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)


def test_dist_loss_hand_computed() -> None:
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # every row and every column of p_s is perfectly anti-correlated with p_t: each Pearson
    # distance is 2, so loss = tau^2 * (2 + 2)
    assert dist_loss(s, t, tau=1.0).item() == pytest.approx(4.0, rel=1e-5)
    assert dist_loss(s, t, tau=2.0).item() == pytest.approx(16.0, rel=1e-5)
    assert dist_loss(s, t, tau=1.0, beta=1.0, gamma=0.0).item() == pytest.approx(2.0, rel=1e-5)
    assert dist_loss(t, t, tau=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kdloss_convention() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(s, y).item()
    kd = kd_loss(s, t, 4.0).item()
    assert KDLoss(0.7, 4.0)(s, y, t).item() == pytest.approx(0.3 * ce + 0.7 * kd, rel=1e-6)
    assert KDLoss(0.7, 4.0, ce_weight=1.0)(s, y, t).item() == pytest.approx(ce + 0.7 * kd, rel=1e-6)
    assert KDLoss(0.7, 4.0)(s, y, None).item() == pytest.approx(ce, rel=1e-6)
    d = dist_loss(s, t, 4.0).item()
    assert KDLoss(0.5, 4.0, kind="dist")(s, y, t).item() == pytest.approx(
        0.5 * ce + 0.5 * d, rel=1e-6
    )
    with pytest.raises(ValueError):
        KDLoss(kind="nope")


# ---------------------------------------------------------------------------------------------
# orthogonality


def test_orthogonality_penalty_hand_computed() -> None:
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
    model = nn.Sequential(conv)
    # W W^T = [[1, 1], [1, 2]] -> minus I = [[0, 1], [1, 1]] -> squared Frobenius norm 3
    assert orthogonality_penalty(model).item() == pytest.approx(3.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).view(2, 3, 1, 1))
    assert orthogonality_penalty(model).item() == pytest.approx(0.0)
    # a tall matrix uses W^T W (2x2) instead of the rank-deficient 3x3 W W^T
    tall = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False))
    with torch.no_grad():
        tall[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 2, 1, 1))
    assert orthogonality_penalty(tall).item() == pytest.approx(0.0)


def test_orthogonal_modules_selection() -> None:
    class Mlp(nn.Module):  # the layout of timm.layers.Mlp (importing timm costs seconds)
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv3 = nn.Conv2d(4, 4, 3)
            self.dw1 = nn.Conv2d(4, 4, 1, groups=4)
            self.pw = nn.Conv2d(4, 8, 1)
            self.mlp = Mlp(8, 16)
            self.enc = nn.TransformerEncoderLayer(8, 2, 16)
            self.head = nn.Linear(8, 10)

    names = {n for n, _ in orthogonal_modules(Block())}
    assert names == {"pw", "mlp.fc1", "mlp.fc2", "enc.linear1", "enc.linear2"}
    assert orthogonality_penalty(nn.Sequential(nn.Linear(3, 3))).item() == 0.0


# ---------------------------------------------------------------------------------------------
# teacher cache


def test_cache_is_bit_identical_to_online_teacher(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits, batch_size=200)
    x, _ = digits.train_tensors()
    teacher.eval()
    with torch.inference_mode():
        for start in range(0, x.shape[0], 200):
            online = teacher(x[start : start + 200])
            assert torch.equal(cache.train_logits[start : start + 200], online)
        # a different batching still gives the same numbers up to rounding
        torch.testing.assert_close(cache.train_logits[:37], teacher(x[:37]), rtol=1e-5, atol=1e-5)
    assert cache.train_logits.dtype == torch.float32
    assert cache.train_logits.shape == (1400, 10) and cache.val_logits.shape == (397, 10)
    xv, yv = digits.val_tensors()
    assert cache.teacher_val_acc == pytest.approx(evaluate(teacher, xv, yv))
    assert cache.teacher_val_acc > 0.8
    assert teacher.training is False  # mode restored (it was eval after training)


def test_cache_dir_reuse_and_keys(tmp_path, digits: DataBundle, teacher: SmallCNN) -> None:
    calls = {"n": 0}

    def count(*_a: object) -> None:
        calls["n"] += 1

    h = teacher.register_forward_hook(count)
    try:
        first = TeacherCache.build(teacher, digits, cache_dir=tmp_path, feature_layers=["block"])
        n_first = calls["n"]
        assert n_first > 0 and first.meta["reused"] is False
        second = TeacherCache.build(teacher, digits, cache_dir=tmp_path, feature_layers=["block"])
        assert calls["n"] == n_first  # the teacher did not run again
    finally:
        h.remove()
    assert second.meta["reused"] is True and second.key == first.key
    assert second.path is not None and (second.path / "train_logits.npy").exists()
    assert torch.equal(second.train_logits, TeacherCache.build(teacher, digits).train_logits)
    assert second.train_features["block"].shape == (1400, 32, 4, 4)
    assert second.teacher_val_acc == first.teacher_val_acc
    # another teacher, other data, or an augmentation seed give another entry
    other = _make(32, seed=5)
    assert TeacherCache.make_key(other, digits) != first.key
    assert TeacherCache.make_key(teacher, digits, augment_seed=3) != first.key
    shifted = digits.replace(y_train=torch.roll(digits.y_train, 1))
    assert TeacherCache.make_key(teacher, shifted) != first.key


# ---------------------------------------------------------------------------------------------
# trainer


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
    cfg = TrainConfig(
        epochs=4.5, batch_size=64, seed=7, data_fraction=0.5, orth_weight=1e-3, lr=1e-2, tau=1.0
    )
    m1, m2 = _make(16, dropout=0.1), _make(16, dropout=0.1)
    r1 = train_student(m1, digits, cfg, cache)
    r2 = train_student(m2, digits, cfg, cache)
    assert r1.val_acc == r2.val_acc
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    # 700 samples, 64 a batch: 10 steps an epoch (last partial batch dropped) -> 45 steps
    assert r1.steps == 45 and r1.epochs_run == pytest.approx(4.5)
    assert [h["step"] for h in r1.history] == [10, 20, 30, 40, 45]
    assert r1.val_acc > 0.4  # chance is 0.1
    r3 = train_student(
        _make(16, dropout=0.1), digits, cfg.__class__(**{**cfg.to_dict(), "seed": 8}), cache
    )
    assert r3.val_acc != r1.val_acc or r3.train_acc != r1.train_acc


def test_kd_uses_teacher_logits(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=0.5, batch_size=64, seed=0)
    r_kd = train_student(m_kd := _make(8), digits, cfg, cache)
    # shuffled teacher logits must change the result: the cache really is read, by index
    bad = TeacherCache.from_logits(cache.train_logits.flip(0), cache.val_logits, digits.y_val)
    train_student(m_bad := _make(8), digits, cfg, bad)
    assert not torch.equal(m_kd.head.weight, m_bad.head.weight)
    # the online teacher gives (up to rounding of differently batched teacher runs) the same
    r_on = train_student(_make(8), digits, cfg, teacher=teacher)
    assert abs(r_on.val_acc - r_kd.val_acc) <= 0.02
    with pytest.raises(ValueError):
        train_student(_make(8), digits, cfg)


def test_budgets_progress_and_early_stop(digits: DataBundle) -> None:
    seen: list[float] = []
    r = train_student(
        _make(8),
        digits,
        TrainConfig(epochs=0.25, use_kd=False, batch_size=32),
        progress=seen.append,
    )
    assert r.steps == round(0.25 * (1400 // 32)) == 11
    assert seen == sorted(seen) and seen[-1] == 1.0
    r = train_student(_make(8), digits, TrainConfig(epochs=50, use_kd=False, max_seconds=0.0))
    assert r.steps == 1 and r.stopped == "time"
    r = train_student(
        _make(8),
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


# ---------------------------------------------------------------------------------------------
# feature distillers


def test_feature_losses_hand_computed() -> None:
    from kd_compile.distill.losses import at_loss, cka_loss, hint_loss, nst_loss, sp_loss

    # hint: mean((0 - 1)^2, (0 - 3)^2) = 5
    assert hint_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 3.0]]]])).item() == 5.0
    # AT: a_s = normalize(1, 0) = (1, 0); a_t = normalize(0, 4) = (0, 1); mean sq diff = 1
    fs = torch.tensor([[[[1.0, 0.0]], [[-1.0, 0.0]]]])  # 2 channels, the sign is ignored
    assert at_loss(fs, torch.tensor([[[[0.0, 2.0]]]])).item() == pytest.approx(1.0)
    # NST, one channel each, kernel (x.y)^2: orthogonal maps -> 1 + 1 - 2 * 0 = 2
    t = torch.tensor([[[[3.0, 0.0]]]])
    assert nst_loss(torch.tensor([[[[0.0, 5.0]]]]), t).item() == pytest.approx(2.0)
    # at 45 degrees: k(s, t) = cos^2 = 0.5 -> 1 + 1 - 1 = 1; invariant to the map's scale
    assert nst_loss(torch.tensor([[[[2.0, 2.0]]]]), t).item() == pytest.approx(1.0)
    # SP: G_s = I; G_t rows (1, 1)/sqrt2 -> (2 (1 - 1/sqrt2)^2 + 2 (1/sqrt2)^2) / 4
    sp = sp_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert sp.item() == pytest.approx(1.0 - math.sqrt(2.0) / 2.0, rel=1e-6)
    # CKA: centred x = (1, -1, 0), y = (1, 1, -2) have x.y = 0 -> CKA 0 -> loss 1
    x = torch.tensor([[1.0], [-1.0], [0.0]])
    assert cka_loss(x, torch.tensor([[1.0], [1.0], [-2.0]])).item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 5, generator=g)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert cka_loss(a, 3.0 * a @ q + 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_nst_channel_subsampling() -> None:
    from kd_compile.distill.losses import nst_loss

    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 16, 3, 3, generator=g), torch.randn(4, 24, 3, 3, generator=g)
    exact = nst_loss(fs, ft)
    assert nst_loss(fs, ft, channel_frac=1.0).item() == exact.item()
    a = nst_loss(fs, ft, channel_frac=0.5, generator=torch.Generator().manual_seed(1))
    b = nst_loss(fs, ft, channel_frac=0.5, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item() and a.item() != pytest.approx(exact.item(), rel=1e-6)
    # MF-KD Eq. 8: the exact MMD over ceil(0.5 * C) random channels of each network (the
    # student's subset is drawn first, then the teacher's)
    gen = torch.Generator().manual_seed(1)
    idx_s = torch.randperm(16, generator=gen)[:8]
    idx_t = torch.randperm(24, generator=gen)[:12]
    assert a.item() == pytest.approx(nst_loss(fs[:, idx_s], ft[:, idx_t]).item(), rel=1e-6)
    assert nst_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_aligner_and_capture() -> None:
    from kd_compile.distill.losses import FeatureAligner, FeatureCapture

    al = FeatureAligner("hint", (4, 8, 8), (8, 4, 4))
    assert isinstance(al.adapter, nn.Conv2d) and al.adapter.in_channels == 4
    fs, ft = al(torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4))
    assert fs.shape == ft.shape == (2, 8, 4, 4)
    al = FeatureAligner("at", (4, 8, 8), (8, 4, 4))
    assert al.adapter is None and al.size == (4, 4)
    al = FeatureAligner("sp", (4, 8, 8), (8, 4, 4))
    fs, ft = al(torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4))
    assert fs.shape == (2, 4, 8, 8) and ft.shape == (2, 8, 4, 4)
    m = _make(8)
    with FeatureCapture(m, ["stem", "block.0"]) as cap:
        m(torch.randn(3, 1, 8, 8))
        assert cap.features["stem"].shape == (3, 8, 8, 8)
        assert cap.features["block.0"].shape == (3, 8, 4, 4)
    assert not m.stem._forward_hooks  # hooks removed
    with pytest.raises(ValueError, match="no module named"):
        FeatureCapture(m, ["nope"])


def test_distiller_spec_round_trip() -> None:
    from kd_compile.distill import DistillerSpec, FeaturePair

    spec = DistillerSpec("dist", (FeaturePair("block", "block", "at", 50.0),), nst_channel_frac=0.5)
    cfg = TrainConfig(distiller=spec, epochs=0.5)
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and isinstance(back.distiller, DistillerSpec)
    assert DistillerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        FeaturePair("a", "b", "nope")


def test_train_with_feature_distiller(tmp_path, digits: DataBundle, teacher: SmallCNN) -> None:
    from kd_compile.distill import DistillerSpec, FeaturePair

    spec = DistillerSpec(
        "kl",
        (
            FeaturePair("block", "block", "hint", 1.0),
            FeaturePair("stem", "proj", "nst_approx", 5.0),
        ),
    )
    cfg = TrainConfig(epochs=1, batch_size=64, seed=0, tau=1.0, distiller=spec)
    cache = TeacherCache.build(
        teacher, digits, cache_dir=tmp_path, feature_layers=spec.teacher_layers
    )
    r1 = train_student(m1 := _make(8), digits, cfg, cache)
    r2 = train_student(m2 := _make(8), digits, cfg, cache)
    assert r1.val_acc == r2.val_acc and torch.equal(m1.head.weight, m2.head.weight)
    assert not m1.stem[0]._forward_hooks  # capture hooks removed after training
    # the feature terms change training
    train_student(
        m3 := _make(8), digits, TrainConfig(epochs=1, batch_size=64, seed=0, tau=1.0), cache
    )
    assert not torch.equal(m1.head.weight, m3.head.weight)
    # online teacher features give a working run too; a cache without features needs a teacher
    r_on = train_student(_make(8), digits, cfg, teacher=teacher)
    assert r_on.steps == r1.steps
    with pytest.raises(ValueError, match="no features"):
        train_student(_make(8), digits, cfg, TeacherCache.build(teacher, digits))


# ---------------------------------------------------------------------------------------------
# sparse training, mixed precision


def test_dynamic_sparsity_masks_and_regrows() -> None:
    from kd_compile.distill.sparse import DynamicSparsity

    model = _make(16)
    sp = DynamicSparsity(model, 0.5, total_steps=100, seed=0, update_every=10, drop_frac=0.3)
    names = [n for n, _ in sp.params]
    assert "stem.0.weight" not in names and "block.0.weight" in names  # the stem stays dense
    assert sp.density() == pytest.approx(0.5, abs=0.01)
    w = dict(model.named_parameters())["block.0.weight"]
    assert torch.equal(w == 0, ~sp.masks["block.0.weight"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = sp.masks["block.0.weight"].clone()
    x = torch.randn(8, 1, 8, 8)
    for step in range(1, 11):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        sp.after_step(step, opt)
    after = sp.masks["block.0.weight"]
    assert sp.updates == 1 and not torch.equal(before, after)  # prune-and-regrow moved the mask
    assert int(after.sum()) == int(before.sum())  # ... at constant density
    assert bool((w[~after] == 0).all())
    with pytest.raises(ValueError):
        DynamicSparsity(model, 1.0, total_steps=10)


def test_sparse_training_keeps_density_and_learns(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=3, batch_size=64, seed=2, lr=1e-2, sparsity=0.5, sparse_update_every=5)
    m1, m2 = _make(16), _make(16)
    r1 = train_student(m1, digits, cfg, cache)
    r2 = train_student(m2, digits, cfg, cache)
    assert r1.val_acc == r2.val_acc  # deterministic on the CPU
    assert all(h["density"] == pytest.approx(0.5, abs=0.01) for h in r1.history)
    zeros = (m1.block[0].weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.5, abs=0.02) and (m1.stem[0].weight != 0).all()
    assert r1.val_acc > 0.25  # chance is 0.1


def test_amp_settings() -> None:
    from kd_compile.distill.trainer import amp_dtype

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
    full = train_student(_make(16), digits, cfg, cache)
    half = train_student(_make(16), digits, TrainConfig.from_dict({**cfg.to_dict(), "amp": "bf16"}), cache)
    assert half.val_acc > 0.4 and abs(half.val_acc - full.val_acc) < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_amp_and_compile(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, device="cuda", compile=True)
    r = train_student(_make(16), digits, cfg, cache)
    assert r.val_acc > 0.4
