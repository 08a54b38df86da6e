"""The feature-distillation vocabulary (kd_compile.distill.features): transforms, distances and
presets against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kd_compile.distill.features import (
    DISTANCES,
    FEATURE_PRESETS,
    ROW_DISTANCES,
    TRANSFORMS,
    FeatureSpec,
    at_loss,
    cka_loss,
    feature_distance,
    feature_loss,
    hint_loss,
    nst_loss,
    sp_loss,
    transform_features,
)

torch.set_num_threads(1)


def test_transforms_hand_computed() -> None:
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    assert torch.equal(transform_features("none", f), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # pyramid: 1x1 (mean 2.5), 2x2 (the map itself; the 4x4 level is capped at 2x2)
    assert torch.allclose(transform_features("multiscale", f), torch.tensor([[2.5, 1.0, 2.0, 3.0, 4.0]]))
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert torch.equal(transform_features("mask", f, mask=mask), torch.tensor([[1.0, 0.0, 0.0, 4.0]]))

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


def test_feature_losses_hand_computed() -> None:
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


# ---------------------------------------------------------------------------------------------
# one vocabulary: the classic losses are presets of FeatureSpec


def test_presets_are_specs_of_the_vocabulary() -> None:
    assert DISTANCES == ROW_DISTANCES + ("nst",)
    table = {name: (p.transform, p.distance, p.align, p.channel_frac) for name, p in FEATURE_PRESETS.items()}
    assert table == {
        "hint": ("none", "l2", "full", 1.0),
        "at": ("attention", "l2", "full", 1.0),
        "sp": ("sample", "l2", "none", 1.0),
        "cka": ("none", "cka", "none", 1.0),
        "nst": ("none", "nst", "pool", 1.0),
        "nst_approx": ("none", "nst", "pool", 0.7),
    }
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 6, 3, 3, generator=g)
    same_c = torch.randn(5, 4, 3, 3, generator=g)
    # the classic functions are the presets (on already aligned maps), value for value
    assert hint_loss(fs, same_c).item() == feature_loss("hint", fs, same_c).item()
    assert hint_loss(fs, same_c).item() == pytest.approx(((fs - same_c) ** 2).mean().item(), rel=1e-6)
    assert at_loss(fs, ft).item() == feature_loss("at", fs, ft).item()
    assert sp_loss(fs, ft).item() == feature_loss("sp", fs, ft).item()
    assert cka_loss(fs, ft).item() == feature_loss("cka", fs, ft).item()
    assert nst_loss(fs, ft).item() == feature_loss("nst", fs, ft).item()
    # SP is the sample transform under the l2 distance: ||G_s - G_t||_F^2 / N^2
    gs, gt = transform_features("sample", fs), transform_features("sample", ft)
    assert sp_loss(fs, ft).item() == pytest.approx(((gs - gt) ** 2).sum().item() / 25, rel=1e-6)
    # the weight scales the term; "kl" is Hinton's KD on the rows
    assert feature_loss(FeatureSpec.named("at", weight=3.0), fs, ft).item() == pytest.approx(
        3.0 * at_loss(fs, ft).item(), rel=1e-6
    )
    s, t = transform_features("attention", fs), transform_features("attention", ft)
    kl = feature_loss(FeatureSpec("attention", "kl", tau=2.0), fs, ft)
    assert kl.item() == feature_distance("kl", s, t, tau=2.0).item()


def test_named_specs_and_validation() -> None:
    at = FeatureSpec.named("at", student="layers.l3", teacher="layers.l3", weight=100)
    assert (at.transform, at.distance, at.weight, at.preset) == ("attention", "l2", 100.0, "at")
    assert at.describe() == "at w100 layers.l3->layers.l3"
    custom = FeatureSpec.named("channel+kl", tau=4)
    assert custom == FeatureSpec("channel", "kl", tau=4.0) and custom.preset is None
    assert custom.describe() == "channel+kl w1 t4"
    # the Auto-KD choice none+l2 (full alignment) is the FitNets hint
    assert FeatureSpec("none", "l2", tau=4.0).preset == "hint"
    assert FeatureSpec.from_dict(at.to_dict()) == at
    # the former FeaturePair layout: {"student", "teacher", "kind", "weight"}
    legacy = {"student": "a", "teacher": "b", "kind": "nst_approx", "weight": 5.0}
    assert FeatureSpec.from_dict(legacy) == FeatureSpec.named("nst_approx", student="a", teacher="b", weight=5.0)
    for bad in ("nope", "fourier+l2", "none+l1"):
        with pytest.raises(ValueError):
            FeatureSpec.named(bad)
    with pytest.raises(ValueError, match="whole maps"):
        FeatureSpec("attention", "nst")
    with pytest.raises(ValueError, match="alignment"):
        FeatureSpec(align="stretch")
    for kw in ({"weight": -1.0}, {"tau": 0.0}, {"channel_frac": 0.0}):
        with pytest.raises(ValueError):
            FeatureSpec(**kw)
    assert set(TRANSFORMS) == {"none", "attention", "mask", "multiscale", "channel", "sample"}
