"""Feature distillers as modules (kd_compile.distill.distiller): alignment, adapters, masks,
weights, DistillerSpec; and feature capture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distill_support import make_cnn
from torch import nn

from kd_compile.distill import DistillerChoice, DistillerSpec, FeatureSpec, TrainConfig
from kd_compile.distill.capture import FeatureCapture
from kd_compile.distill.distiller import FeatureAligner, FeatureDistiller, FeatureLoss
from kd_compile.distill.features import ROW_DISTANCES, TRANSFORMS

torch.set_num_threads(1)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("distance", ROW_DISTANCES)
def test_loss_zero_on_identical_features_and_scaled_by_weight(transform: str, distance: str) -> None:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(4, 3, 4, 4, generator=gen)
    loss = FeatureLoss(DistillerChoice(transform, distance, 5.0, 2.0).spec(), (3, 4, 4), (3, 4, 4))
    assert loss.adapter is None
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(4, 3, 4, 4, generator=gen)
    w5 = FeatureLoss(DistillerChoice(transform, distance, 5.0, 2.0).spec(), (3, 4, 4), (3, 4, 4), seed=3)
    w1 = FeatureLoss(DistillerChoice(transform, distance, 1.0, 2.0).spec(), (3, 4, 4), (3, 4, 4), seed=3)
    v5, v1 = w5(f, other).item(), w1(f, other).item()
    assert v1 > 1e-4
    assert v5 == pytest.approx(5 * v1, rel=1e-5)


def test_alignment_pools_and_adapts_channels_only_where_needed() -> None:
    fs, ft = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)
    hint = FeatureLoss(DistillerChoice("none", "l2").spec(), (4, 6, 6), (8, 3, 3))
    assert isinstance(hint.adapter, torch.nn.Conv2d) and hint.adapter.weight.shape == (8, 4, 1, 1)
    a_s, a_t = hint.align(fs, ft)
    assert a_s.shape == a_t.shape == (2, 8, 3, 3)
    with torch.no_grad():
        want = F.mse_loss(hint.adapter(F.adaptive_avg_pool2d(fs, 3)), ft)
    assert hint(fs, ft).item() == pytest.approx(want.item(), rel=1e-6)
    for agnostic in ("attention", "sample"):
        assert FeatureLoss(DistillerChoice(agnostic, "l2").spec(), (4, 6, 6), (8, 3, 3)).adapter is None
    # a vector feature (N, C) is a 1x1 map
    vec = FeatureLoss(DistillerChoice("none", "cka").spec(), (16,), (8, 3, 3))
    assert vec(torch.randn(5, 16), torch.randn(5, 8, 3, 3)).dim() == 0


def test_gradients_reach_student_and_adapter_not_teacher() -> None:
    for transform in TRANSFORMS:
        fs = torch.randn(3, 4, 4, 4, requires_grad=True)
        ft = torch.randn(3, 6, 4, 4, requires_grad=True)
        loss = FeatureLoss(DistillerChoice(transform, "l2").spec(), (4, 4, 4), (6, 4, 4))
        loss(fs, ft).backward()
        assert ft.grad is None, transform
        assert fs.grad is not None and fs.grad.abs().sum() > 0, transform
        if loss.adapter is not None:
            assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0


def test_mask_is_seeded_and_shared() -> None:
    f = torch.randn(2, 3, 4, 4)
    a = FeatureLoss(DistillerChoice("mask", "l2").spec(), (3, 4, 4), (3, 4, 4), seed=7)
    b = FeatureLoss(DistillerChoice("mask", "l2").spec(), (3, 4, 4), (3, 4, 4), seed=7)
    g = torch.randn(2, 3, 4, 4)
    assert a(f, g).item() == b(f, g).item()
    # the masked loss equals the L2 over the kept positions only (the same mask on both sides)
    gen = torch.Generator().manual_seed(7)
    m = (torch.rand(2, 1, 4, 4, generator=gen) < 0.5).float()
    c = FeatureLoss(DistillerChoice("mask", "l2").spec(), (3, 4, 4), (3, 4, 4), seed=7)
    assert c(f, g).item() == pytest.approx(F.mse_loss(f * m, g * m).item(), rel=1e-6)


def test_feature_aligner_and_capture() -> None:
    al = FeatureAligner("hint", (4, 8, 8), (8, 4, 4))
    assert isinstance(al.adapter, nn.Conv2d) and al.adapter.in_channels == 4
    fs, ft = al(torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4))
    assert fs.shape == ft.shape == (2, 8, 4, 4)
    al = FeatureAligner("at", (4, 8, 8), (8, 4, 4))
    assert al.adapter is None and al.size == (4, 4)
    al = FeatureAligner("sp", (4, 8, 8), (8, 4, 4))
    fs, ft = al(torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4))
    assert fs.shape == (2, 4, 8, 8) and ft.shape == (2, 8, 4, 4)
    m = make_cnn(8)
    with FeatureCapture(m, ["stem", "block.0"]) as cap:
        m(torch.randn(3, 1, 8, 8))
        assert cap.features["stem"].shape == (3, 8, 8, 8)
        assert cap.features["block.0"].shape == (3, 8, 4, 4)
    assert not m.stem._forward_hooks  # hooks removed
    with pytest.raises(ValueError, match="no module named"):
        FeatureCapture(m, ["nope"])


def test_distiller_spec_round_trip() -> None:
    spec = DistillerSpec(
        "dist",
        (
            FeatureSpec.named("at", student="block", teacher="block", weight=50.0),
            FeatureSpec.named("nst_approx", student="block", teacher="block", channel_frac=0.5),
        ),
    )
    cfg = TrainConfig(distiller=spec, epochs=0.5)
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and isinstance(back.distiller, DistillerSpec)
    assert DistillerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        FeatureSpec.named("nope", student="a", teacher="b")


def test_alignment_of_each_preset() -> None:
    """hint adapts channels, at/nst only pool, sp/cka compare N x N structures as captured."""
    s_shape, t_shape = (4, 8, 8), (8, 4, 4)
    expect = {"hint": (True, (4, 4)), "at": (False, (4, 4)), "nst": (False, (4, 4)), "sp": (False, None)}
    expect["cka"] = (False, None)
    for name, (adapter, size) in expect.items():
        loss = FeatureLoss(name, s_shape, t_shape)
        assert (loss.adapter is not None, loss.aligner.size) == (adapter, size), name
        assert loss(torch.randn(3, *s_shape), torch.randn(3, *t_shape)).dim() == 0
    # Auto-KD's none+cka aligns fully (pool + adapter); the cka preset leaves the maps alone
    assert FeatureLoss(DistillerChoice("none", "cka").spec(), s_shape, t_shape).adapter is not None


def test_feature_distiller_is_the_sum_of_its_terms() -> None:
    spec = DistillerSpec(
        "kl",
        (
            FeatureSpec.named("hint", student="a", teacher="b", weight=2.0),
            FeatureSpec("mask", "pearson", weight=0.5, student="a", teacher="c"),
        ),
    )
    shapes_s, shapes_t = {"a": (4, 6, 6)}, {"b": (8, 3, 3), "c": (4, 6, 6)}
    torch.manual_seed(0)
    dist = FeatureDistiller(spec, shapes_s, shapes_t, seed=5)
    torch.manual_seed(0)
    hint = FeatureLoss(spec.pairs[0], (4, 6, 6), (8, 3, 3), seed=5)
    mask = FeatureLoss(spec.pairs[1], (4, 6, 6), (4, 6, 6), seed=6)
    fs = {"a": torch.randn(3, 4, 6, 6)}
    ft = {"b": torch.randn(3, 8, 3, 3), "c": torch.randn(3, 4, 6, 6)}
    want = hint(fs["a"], ft["b"]) + mask(fs["a"], ft["c"])
    assert dist(fs, ft).item() == pytest.approx(want.item(), rel=1e-6)
    assert spec.student_layers == ["a"] and spec.teacher_layers == ["b", "c"]
    with pytest.raises(ValueError, match="layer names"):
        DistillerSpec("kl", (FeatureSpec.named("hint"),))
