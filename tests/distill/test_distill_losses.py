"""Logit distillation losses (kd_compile.distill.losses) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_compile.distill import KDLoss, dist_loss, kd_loss, standardize_logits

torch.set_num_threads(1)


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
    torch.testing.assert_close(standardize_logits(z), torch.tensor([[-r, 0.0, r]]), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    base = kd_loss(s, t, 2.0, standardize=True)
    # an affine change of either logits does not change the standardised loss
    assert kd_loss(3.0 * s + 5.0, 0.5 * t - 2.0, 2.0, standardize=True).item() == pytest.approx(base.item(), rel=1e-4)
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
    assert KDLoss(0.5, 4.0, kind="dist")(s, y, t).item() == pytest.approx(0.5 * ce + 0.5 * d, rel=1e-6)
    with pytest.raises(ValueError):
        KDLoss(kind="nope")
