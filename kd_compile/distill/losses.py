"""Logit distillation losses: Hinton KD, logit standardisation, DIST, and ``KDLoss``.

This module's one job is the loss on the teacher's and the student's *logits*; feature
distillation (transforms, distances, presets such as FitNets or attention transfer) is the
vocabulary of ``features.py``.

Conventions used throughout:

* Logits are float tensors of shape (N, K): N samples, K classes.
* A loss returns a 0-d tensor unless ``reduction="none"`` asks for one value per sample (N,).
* The Hinton KD term already carries the ``tau**2`` factor, so that its gradient has the same
  order of magnitude as the cross-entropy term for every temperature (Hinton et al. 2015;
  TRADE Eq. 1). ``KDLoss`` combines ``(1 - alpha) * CE + alpha * KD``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["batchmean", "mean", "sum", "none"]

__all__ = [
    "LOGIT_LOSSES",
    "KDLoss",
    "dist_loss",
    "kd_loss",
    "pearson_distance",
    "standardize_logits",
]

#: Logit losses ``KDLoss`` (and ``DistillerSpec.logit``) accept.
LOGIT_LOSSES = ("kl", "kl_std", "dist", "none")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values (N,) the way ``reduction`` asks."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction in ("batchmean", "mean"):
        # per-sample values are already sums over classes, so "mean" over samples is the
        # mathematically correct KL ("batchmean" in torch's naming); both names accepted
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}; use batchmean, mean, sum or none")


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each sample's logits (Sun et al., CVPR 2024, "Logit Standardization in KD").

    The student then only has to match the teacher's logit *relations*, not their scale or
    shift, which a small student often cannot reproduce.

    Args:
        logits: (N, K).
        eps: added to the standard deviation so that constant logits do not divide by zero.

    Returns:
        (N, K): ``(z - mean(z)) / (std(z) + eps)`` per row, with the population standard
        deviation ``sqrt(mean((z - mean(z))**2))`` as in the paper's Eq. (the reference code
        uses the unbiased one; the difference is a constant factor sqrt(K/(K-1)) absorbed by
        the temperature).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float,
    reduction: Reduction = "batchmean",
    *,
    standardize: bool = False,
) -> torch.Tensor:
    """Hinton KD: ``tau**2 * KL(softmax(t / tau) || softmax(s / tau))``.

    Args:
        student_logits: (N, K); gradients flow into it.
        teacher_logits: (N, K); treated as a constant (detached).
        tau: temperature > 0.
        reduction: "batchmean"/"mean" (mean over samples of the per-sample KL, the true KL),
            "sum", or "none" for the per-sample values (N,).
        standardize: z-score both logits per sample before the temperature (Sun et al. 2024).

    Returns:
        0-d tensor, or (N,) for ``reduction="none"``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    s = student_logits.float()
    t = teacher_logits.detach().float()
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    log_ps = F.log_softmax(s / tau, dim=-1)
    log_pt = F.log_softmax(t / tau, dim=-1)
    # sum_k p_t (log p_t - log p_s), computed from log-probabilities so that a zero teacher
    # probability contributes exactly 0 instead of 0 * log 0 = nan
    per_sample = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
    return _reduce(per_sample * (tau * tau), reduction)


def pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """``1 - pearson_correlation(a, b)`` along ``dim``.

    Args:
        a, b: tensors of the same shape.
        dim: the axis the correlation is taken over.
        eps: keeps a constant vector from dividing by zero.

    Returns:
        The distances, with ``dim`` removed; each in [0, 2].
    """
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    cos = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
    return 1.0 - cos


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 1.0,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): relation matching with the Pearson distance.

    ``tau**2 * (beta * inter + gamma * intra)`` with ``p = softmax(z / tau)``:

    * inter-class: mean over samples of ``1 - pearson(p_s[i, :], p_t[i, :])``;
    * intra-class: mean over classes of ``1 - pearson(p_s[:, k], p_t[:, k])``.

    It asks the student to preserve the teacher's *ranking* of classes and samples rather than
    its exact probabilities, which helps when the teacher is much stronger than the student.

    Args:
        student_logits: (N, K).
        teacher_logits: (N, K), detached.
        tau: temperature > 0.
        beta: weight of the inter-class term.
        gamma: weight of the intra-class term (needs N >= 2 to be meaningful).

    Returns:
        0-d tensor.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    ps = F.softmax(student_logits.float() / tau, dim=-1)
    pt = F.softmax(teacher_logits.detach().float() / tau, dim=-1)
    inter = pearson_distance(ps, pt, dim=1).mean()
    intra = pearson_distance(ps, pt, dim=0).mean()
    return (tau * tau) * (beta * inter + gamma * intra)


class KDLoss(nn.Module):
    """Cross-entropy on labels plus a logit distillation term.

    Convention: ``loss = ce_weight * CE(s, y) + alpha * KD(s, t)`` with ``ce_weight = 1 - alpha``
    unless given, i.e. by default the convex combination ``(1 - alpha) * CE + alpha * KD`` of
    Hinton et al. and TRADE (Eq. 1; TRADE uses alpha = 0.7). KD carries the ``tau**2`` factor.
    Set ``ce_weight=1.0`` for the additive convention of DIST / logit-standardisation papers.

    Args:
        alpha: weight of the KD term, in [0, 1] for the convex convention.
        tau: temperature.
        ce_weight: weight of CE; ``None`` means ``1 - alpha``.
        kind: "kl" (Hinton), "kl_std" (KL on z-scored logits, Sun et al. 2024), "dist"
            (DIST Pearson relations) or "none" (CE only; teacher logits ignored).
        label_smoothing: passed to the cross-entropy.
        dist_beta, dist_gamma: DIST inter-/intra-class weights.
    """

    def __init__(
        self,
        alpha: float = 0.7,
        tau: float = 4.0,
        ce_weight: float | None = None,
        *,
        kind: str = "kl",
        label_smoothing: float = 0.0,
        dist_beta: float = 1.0,
        dist_gamma: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in LOGIT_LOSSES:
            raise ValueError(f"unknown logit loss {kind!r}; choose from {LOGIT_LOSSES}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.ce_weight = float(1.0 - alpha if ce_weight is None else ce_weight)
        self.kind = kind
        self.label_smoothing = float(label_smoothing)
        self.dist_beta = float(dist_beta)
        self.dist_gamma = float(dist_gamma)

    def distill_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The unweighted distillation term (0-d) for this loss's ``kind``."""
        if self.kind == "kl":
            return kd_loss(student_logits, teacher_logits, self.tau)
        if self.kind == "kl_std":
            return kd_loss(student_logits, teacher_logits, self.tau, standardize=True)
        if self.kind == "dist":
            return dist_loss(student_logits, teacher_logits, self.tau, beta=self.dist_beta, gamma=self.dist_gamma)
        return student_logits.new_zeros(())

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: student_logits (N, K); labels int64 (N,); teacher_logits (N, K) or None.

        Returns:
            0-d loss. Without teacher logits (or with ``kind="none"``) it is plain CE with
            weight 1, so that ``use_kd=False`` training is ordinary supervised training.
        """
        ce = F.cross_entropy(student_logits, labels, label_smoothing=self.label_smoothing)
        if teacher_logits is None or self.kind == "none":
            return ce
        return self.ce_weight * ce + self.alpha * self.distill_term(student_logits, teacher_logits)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha}, tau={self.tau}, ce_weight={self.ce_weight}"
