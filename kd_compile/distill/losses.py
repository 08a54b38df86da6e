"""Distillation losses: logit KD (Hinton), logit standardisation, DIST, and feature distillers.

Conventions used throughout:

* Logits are float tensors of shape (N, K): N samples, K classes.
* A loss returns a 0-d tensor unless ``reduction="none"`` asks for one value per sample (N,).
* The Hinton KD term already carries the ``tau**2`` factor, so that its gradient has the same
  order of magnitude as the cross-entropy term for every temperature (Hinton et al. 2015;
  TRADE Eq. 1). ``KDLoss`` combines ``(1 - alpha) * CE + alpha * KD``.

Feature distillers (FitNets hint, attention transfer, NST, similarity-preserving, CKA) take
feature maps (N, C, H, W) or token sequences (N, L, C) captured by forward hooks
(``FeatureCapture``), aligned by ``FeatureAligner`` (adaptive pooling to the smaller spatial
size, then a learned 1x1 conv from student to teacher channels where a loss needs equal
channel counts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["batchmean", "mean", "sum", "none"]

__all__ = [
    "FEATURE_LOSSES",
    "LOGIT_LOSSES",
    "DistillerSpec",
    "FeatureAligner",
    "FeatureCapture",
    "FeatureDistiller",
    "FeaturePair",
    "KDLoss",
    "as_feature_map",
    "at_loss",
    "attention_map",
    "cka_loss",
    "dist_loss",
    "feature_loss",
    "hint_loss",
    "kd_loss",
    "nst_loss",
    "pearson_distance",
    "sp_loss",
    "standardize_logits",
]

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


# ----------------------------------------------------------------------------------------------
# feature capture


class FeatureCapture:
    """Capture the outputs of named submodules with forward hooks.

    Use as a context manager; hooks are removed on exit. After each forward pass
    ``features[name]`` holds that module's output (the first element when it returns a tuple).
    Outputs are kept as they are (with their autograd graph), so a student's captured features
    can carry gradients into a feature loss.

    Args:
        model: the network.
        names: module names as in ``model.named_modules()``.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            sample = [n for n in modules if n][:12]
            raise ValueError(f"no module named {missing} in {type(model).__name__}; some names: {sample}")
        self._modules = [(n, modules[n]) for n in self.names]

    def _hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.features[name] = out  # type: ignore[assignment]

        return hook

    def __enter__(self) -> Self:
        for name, module in self._modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()


# ----------------------------------------------------------------------------------------------
# feature distillers
#
# Every function takes student and teacher features of one layer pair. Maps are (N, C, H, W);
# token sequences (N, L, C) and vectors (N, C) are turned into maps by ``as_feature_map``.


def as_feature_map(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as is; tokens (N, L, C) -> (N, C, L, 1); vectors (N, C) -> (N, C, 1, 1)."""
    if f.dim() == 4:
        return f
    if f.dim() == 3:
        return f.transpose(1, 2).unsqueeze(-1)
    if f.dim() == 2:
        return f[:, :, None, None]
    raise ValueError(f"cannot use a feature of shape {tuple(f.shape)} for distillation")


def hint_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FitNets hint (Romero et al. 2015): mean squared error between aligned maps.

    Args:
        fs: student map (N, C, H, W), already adapted to the teacher's channels and size.
        ft: teacher map (N, C, H, W), detached.

    Returns:
        0-d tensor: ``mean((fs - ft)**2)`` over all elements.
    """
    return F.mse_loss(fs, ft.detach())


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of Zagoruyko & Komodakis: (N, C, H, W) -> L2-normalised (N, H*W)."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    Channel counts may differ; spatial sizes must match. ``mean((a_s - a_t)**2)`` over
    (N, H*W) with ``a = normalize(mean_c |f|^p)``, as in the reference implementation (which
    then multiplies by a weight of about 1e3; use ``FeaturePair.weight`` for it).

    Args:
        fs: (N, Cs, H, W). ft: (N, Ct, H, W), detached.
    """
    return (attention_map(fs, p) - attention_map(ft.detach(), p)).pow(2).mean()


def _poly_mmd(a: torch.Tensor, b: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    """MMD^2 between the channel sets a (N, Ca, D) and b (N, Cb, D), polynomial kernel."""

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.transpose(1, 2) + c).pow(degree).mean(dim=(1, 2))

    return (k(a, a) + k(b, b) - 2.0 * k(a, b)).mean()


def nst_loss(
    fs: torch.Tensor,
    ft: torch.Tensor,
    *,
    degree: int = 2,
    c: float = 0.0,
    channel_frac: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017): MMD^2 between channel distributions.

    Each channel's map, flattened over H*W and L2-normalised, is one sample; the loss is the
    squared MMD between the teacher's and the student's channel sets with the polynomial
    kernel ``k(x, y) = (x^T y + c)^degree`` (MF-KD Eq. 4; it uses c = 0, degree = 2), averaged
    over the batch. Channel counts may differ; spatial sizes must match.

    ``channel_frac < 1`` is MF-KD's approximation (Eq. 8): the MMD over a random subset of
    ``ceil(channel_frac * C)`` channels of each network, redrawn every call. The kernel
    matrices shrink by ``channel_frac**2``, so 0.7 costs about half the exact loss.

    Args:
        fs: (N, Cs, H, W). ft: (N, Ct, H, W), detached.
        degree, c: polynomial kernel parameters.
        channel_frac: fraction of channels used, in (0, 1].
        generator: RNG of the channel subsets (default: torch's global RNG).
    """
    if not 0.0 < channel_frac <= 1.0:
        raise ValueError(f"channel_frac must be in (0, 1], got {channel_frac}")
    s = F.normalize(fs.flatten(2), dim=2)
    t = F.normalize(ft.detach().flatten(2), dim=2)
    if channel_frac < 1.0:

        def pick(x: torch.Tensor) -> torch.Tensor:
            n = x.shape[1]
            k = max(1, math.ceil(channel_frac * n))
            idx = torch.randperm(n, generator=generator)[:k].to(x.device)
            return x.index_select(1, idx)

        s, t = pick(s), pick(t)
    return _poly_mmd(t, s, degree, c)


def sp_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    Batch similarity matrices ``G = normalize_rows(F F^T)`` (N, N) of the flattened features;
    the loss is ``||G_s - G_t||_F^2 / N^2``. Any channel count and spatial size.

    Args:
        fs: (N, ...) student features. ft: (N, ...) teacher features, detached.
    """
    n = fs.shape[0]
    a = fs.flatten(1)
    b = ft.detach().flatten(1)
    gs = F.normalize(a @ a.t(), dim=1)
    gt = F.normalize(b @ b.t(), dim=1)
    return (gs - gt).pow(2).sum() / (n * n)


def cka_loss(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - linear CKA`` (Kornblith et al. 2019) between flattened student and teacher features.

    With centred Gram matrices ``K = Xc Xc^T``, ``L = Yc Yc^T`` (N, N):
    ``CKA = <K, L>_F / (||K||_F ||L||_F)``; invariant to orthogonal transforms and isotropic
    scaling of either representation, so no adapter is needed. Any shapes with the same N.

    Args:
        fs: (N, ...) student features. ft: (N, ...) teacher features, detached.
    """
    x = fs.flatten(1).float()
    y = ft.detach().flatten(1).float()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    k = x @ x.t()
    l_ = y @ y.t()
    cka = (k * l_).sum() / (k.norm() * l_.norm() + eps)
    return 1.0 - cka


# what each loss needs aligned: "hint" equal channels and size, "at"/"nst" equal spatial size,
# "sp"/"cka" nothing (they compare N x N batch similarity structures)
FEATURE_LOSSES: dict[str, tuple[bool, bool]] = {
    # kind: (needs equal spatial size, needs equal channel count)
    "hint": (True, True),
    "at": (True, False),
    "nst": (True, False),
    "nst_approx": (True, False),
    "sp": (False, False),
    "cka": (False, False),
}


def feature_loss(
    kind: str,
    fs: torch.Tensor,
    ft: torch.Tensor,
    *,
    nst_channel_frac: float = 0.7,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch to one feature loss by name (see ``FEATURE_LOSSES``) on aligned maps."""
    if kind == "hint":
        return hint_loss(fs, ft)
    if kind == "at":
        return at_loss(fs, ft)
    if kind == "nst":
        return nst_loss(fs, ft)
    if kind == "nst_approx":
        return nst_loss(fs, ft, channel_frac=nst_channel_frac, generator=generator)
    if kind == "sp":
        return sp_loss(fs, ft)
    if kind == "cka":
        return cka_loss(fs, ft)
    raise ValueError(f"unknown feature loss {kind!r}; choose from {sorted(FEATURE_LOSSES)}")


class FeatureAligner(nn.Module):
    """Brings one student feature to the teacher feature's layout where a loss needs it.

    Spatial: both maps are adaptive-average-pooled to the smaller of the two sizes (pooling
    the larger one loses least). Channels: a learned 1x1 conv (no bias) maps student channels
    to teacher channels; it is trained with the student and thrown away afterwards.

    Args:
        kind: a key of ``FEATURE_LOSSES``.
        student_shape: one student feature map's shape (C, H, W) (batch dim excluded).
        teacher_shape: the teacher's (C, H, W).
    """

    def __init__(self, kind: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        if kind not in FEATURE_LOSSES:
            raise ValueError(f"unknown feature loss {kind!r}; choose from {sorted(FEATURE_LOSSES)}")
        need_size, need_channels = FEATURE_LOSSES[kind]
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        self.size: tuple[int, int] | None = None
        if need_size and (hs, ws) != (ht, wt):
            self.size = (min(hs, ht), min(ws, wt))
        self.adapter: nn.Module | None = None
        if need_channels and cs != ct:
            self.adapter = nn.Conv2d(cs, ct, kernel_size=1, bias=False)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, Cs, Hs, Ws), (N, Ct, Ht, Wt) -> the aligned pair."""
        if self.size is not None:
            if fs.shape[-2:] != self.size:
                fs = F.adaptive_avg_pool2d(fs, self.size)
            if ft.shape[-2:] != self.size:
                ft = F.adaptive_avg_pool2d(ft, self.size)
        if self.adapter is not None:
            fs = self.adapter(fs)
        return fs, ft


@dataclass(frozen=True)
class FeaturePair:
    """One feature-distillation term.

    Attributes:
        student: student module name (``named_modules()``) whose output is matched.
        teacher: teacher module name.
        kind: a key of ``FEATURE_LOSSES``: hint, at, nst, nst_approx, sp, cka.
        weight: the term's weight in the total loss.
    """

    student: str
    teacher: str
    kind: str = "hint"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_LOSSES:
            raise ValueError(f"unknown feature loss {self.kind!r}; choose from {sorted(FEATURE_LOSSES)}")


@dataclass(frozen=True)
class DistillerSpec:
    """A distiller: the logit loss plus feature terms on chosen layer pairs.

    ``loss = KDLoss(kind=logit)(s, y, t) + sum_pairs weight * feature_loss(aligned pair)``;
    alpha and tau come from ``TrainConfig``.

    Attributes:
        logit: "kl", "kl_std", "dist" or "none" (CE only plus the feature terms).
        pairs: the feature terms.
        nst_channel_frac: channel fraction of the "nst_approx" loss.
    """

    logit: str = "kl"
    pairs: tuple[FeaturePair, ...] = ()
    nst_channel_frac: float = 0.7

    def __post_init__(self) -> None:
        if self.logit not in LOGIT_LOSSES:
            raise ValueError(f"unknown logit loss {self.logit!r}; choose from {LOGIT_LOSSES}")
        # accept lists/dicts (e.g. from JSON) and store a hashable tuple of FeaturePair
        pairs = tuple(p if isinstance(p, FeaturePair) else FeaturePair(**p) for p in self.pairs)
        object.__setattr__(self, "pairs", pairs)

    @property
    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(p.student for p in self.pairs))

    @property
    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(p.teacher for p in self.pairs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillerSpec:
        return cls(
            logit=d.get("logit", "kl"),
            pairs=tuple(FeaturePair(**p) for p in d.get("pairs", ())),
            nst_channel_frac=d.get("nst_channel_frac", 0.7),
        )


class FeatureDistiller(nn.Module):
    """The feature terms of a ``DistillerSpec`` with their aligners (learned adapters).

    Args:
        spec: the distiller.
        student_shapes: student layer name -> one sample's feature shape (C, H, W), (L, C) or
            (C,) (as captured, batch dim excluded).
        teacher_shapes: teacher layer name -> shape, likewise.
    """

    def __init__(
        self,
        spec: DistillerSpec,
        student_shapes: dict[str, Sequence[int]],
        teacher_shapes: dict[str, Sequence[int]],
    ) -> None:
        super().__init__()
        self.spec = spec

        def map_shape(shape: Sequence[int]) -> tuple[int, int, int]:
            # a meta tensor gives the converted shape without allocating anything
            shp = as_feature_map(torch.empty(1, *shape, device="meta")).shape[1:]
            return (int(shp[0]), int(shp[1]), int(shp[2]))

        self.aligners = nn.ModuleList(
            FeatureAligner(p.kind, map_shape(student_shapes[p.student]), map_shape(teacher_shapes[p.teacher]))
            for p in spec.pairs
        )

    def forward(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the feature terms (0-d) over batch features (N, ...)."""
        total: torch.Tensor | None = None
        for pair, aligner in zip(self.spec.pairs, self.aligners, strict=True):
            fs = as_feature_map(student_feats[pair.student])
            ft = as_feature_map(teacher_feats[pair.teacher]).detach().to(fs.dtype)
            fs, ft = aligner(fs, ft)
            term = pair.weight * feature_loss(pair.kind, fs, ft, nst_channel_frac=self.spec.nst_channel_frac)
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the distiller has no feature pairs")
        return total
