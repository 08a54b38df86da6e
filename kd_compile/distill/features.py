"""The feature-distillation vocabulary: one way to name every feature distiller.

A feature distiller compares a student feature map ``f_S`` with a teacher feature map ``f_T``
(Auto-KD's feature term, Eq. 1 of Li et al., ICCV 2023):

    weight * D(T(align(f_S)), T(f_T))

``align`` brings the student map to a comparable layout (pooling, a learned 1x1 adapter; see
``distiller.FeatureAligner``), the *transform* ``T`` turns each map into rows, and the
*distance* ``D`` compares the rows. ``FeatureSpec`` names one such term; the classic feature
losses are its presets (``FEATURE_PRESETS``):

============  =====================  =========  ==================================================
preset        transform + distance   align      paper
============  =====================  =========  ==================================================
hint          none + l2              full       FitNets (Romero et al. 2015)
at            attention + l2         full       attention transfer (Zagoruyko & Komodakis 2017)
sp            sample + l2            none       similarity-preserving KD (Tung & Mori 2019)
cka           none + cka             none       linear CKA (Kornblith et al. 2019)
nst           none + nst             pool       neuron selectivity transfer (Huang & Wang 2017)
nst_approx    none + nst (70% ch.)   pool       MF-KD's channel-subsampled NST (Eq. 8)
============  =====================  =========  ==================================================

NST compares each sample's *set of channels* (an MMD), which no row transform expresses, so
"nst" is a distance of the same registry that reads the aligned map itself and pairs with the
"none" transform only. Auto-KD's search space (``autokd.space``) draws its transforms and
distances from the names defined here.

This module holds the names (``TRANSFORMS``, ``DISTANCES``, ``ALIGNMENTS``), the math
(``transform_features``, ``feature_distance`` with the distances ``cka_loss`` and
``nst_loss``), the spec (``FeatureSpec``, ``FEATURE_PRESETS``) and ``feature_loss``, a spec's
value on features that are already aligned. The classic loss functions (``hint_loss``,
``at_loss``, ``sp_loss``) are kept as one-line presets of it. The trainable modules (alignment
with adapters, whole distillers) are in ``distiller.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .losses import kd_loss, pearson_distance

__all__ = [
    "ALIGNMENTS",
    "CHANNEL_AGNOSTIC",
    "DISTANCES",
    "FEATURE_PRESETS",
    "MAP_DISTANCES",
    "ROW_DISTANCES",
    "TRANSFORMS",
    "FeatureSpec",
    "as_feature_map",
    "at_loss",
    "attention_map",
    "cka_loss",
    "feature_distance",
    "feature_loss",
    "hint_loss",
    "nst_loss",
    "pool_to",
    "sp_loss",
    "to_spec",
    "transform_features",
]

#: Feature transforms (Auto-KD Table 1): identity, spatial attention (AT), random spatial mask
#: (MGD), multi-scale pooling pyramid, channel-wise rows (f^{C,NHW}, ICKD/CWD), sample-wise
#: batch similarity (f^{N,N}, SP).
TRANSFORMS: tuple[str, ...] = ("none", "attention", "mask", "multiscale", "channel", "sample")
#: Distances between transformed rows; every transform pairs with every one of them.
ROW_DISTANCES: tuple[str, ...] = ("l2", "kl", "pearson", "cka")
#: Distances that read the aligned maps (N, C, H, W) themselves, with the "none" transform.
MAP_DISTANCES: tuple[str, ...] = ("nst",)
#: Every distance.
DISTANCES: tuple[str, ...] = ROW_DISTANCES + MAP_DISTANCES
#: How the two maps are aligned before the transform: "full" pools both to the smaller spatial
#: size and learns a 1x1 conv from student to teacher channels when the counts differ (unless
#: the transform is channel-agnostic); "pool" only pools; "none" leaves the maps as captured.
ALIGNMENTS: tuple[str, ...] = ("full", "pool", "none")
#: Transforms whose output does not depend on the channel count: "full" learns no adapter.
CHANNEL_AGNOSTIC = frozenset({"attention", "sample"})
#: Output sizes of the multi-scale pyramid (capped at the map's own size).
_PYRAMID = (1, 2, 4)


# ----------------------------------------------------------------------------------------------
# layout


def as_feature_map(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as is; tokens (N, L, C) -> (N, C, L, 1); vectors (N, C) -> (N, C, 1, 1)."""
    if f.dim() == 4:
        return f
    if f.dim() == 3:
        return f.transpose(1, 2).unsqueeze(-1)
    if f.dim() == 2:
        return f[:, :, None, None]
    raise ValueError(f"cannot use a feature of shape {tuple(f.shape)} for distillation")


def pool_to(f: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Adaptive-average-pool a map (N, C, H, W) to ``size``; as is when it has that size or
    ``size`` is None."""
    if size is None or tuple(f.shape[-2:]) == size:
        return f
    return F.adaptive_avg_pool2d(f, size)


# ----------------------------------------------------------------------------------------------
# transforms


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of Zagoruyko & Komodakis: (N, C, H, W) -> L2-normalised (N, H*W) rows
    of ``mean_c |f|^p``."""
    # |f|^2 == f^2 exactly; without abs() the gradient also stays free of a sign() factor
    a = f.pow(2) if p == 2 else f.abs().pow(p)
    return F.normalize(a.mean(dim=1).flatten(1), dim=1)


def transform_features(kind: str, f: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One feature transform, as a matrix whose rows the distance compares.

    Args:
        kind: a name in ``TRANSFORMS``.
        f: aligned feature map (N, C, H, W).
        mask: for "mask": a {0, 1} tensor broadcastable to ``f`` (e.g. (N, 1, H, W)); the same
            mask must be used for student and teacher.

    Returns:
        (R, D) rows:

        * none: (N, C*H*W), the flattened map.
        * attention: (N, H*W), ``normalize(mean_c f**2)`` (attention transfer).
        * mask: (N, C*H*W), the flattened ``f * mask``.
        * multiscale: (N, C * sum_s s_h*s_w), ``f`` average-pooled to 1x1, 2x2 and 4x4
          (each capped at (H, W)), concatenated.
        * channel: (C, N*H*W), one row per channel (Auto-KD's ``f^{C,NHW}``).
        * sample: (N, N), ``normalize_rows(F F^T)`` of the flattened map (SP's Gram).
    """
    n, c, h, w = f.shape
    if kind == "none":
        return f.reshape(n, -1)
    if kind == "attention":
        return attention_map(f)
    if kind == "mask":
        if mask is None:
            raise ValueError("the mask transform needs a mask")
        return (f * mask).reshape(n, -1)
    if kind == "multiscale":
        sizes = dict.fromkeys((min(s, h), min(s, w)) for s in _PYRAMID)
        return torch.cat([pool_to(f, sz).reshape(n, -1) for sz in sizes], dim=1)
    if kind == "channel":
        return f.transpose(0, 1).reshape(c, -1)
    if kind == "sample":
        flat = f.reshape(n, -1)
        return F.normalize(flat @ flat.t(), dim=1)
    raise ValueError(f"unknown transform {kind!r}; choose from {TRANSFORMS}")


# ----------------------------------------------------------------------------------------------
# distances


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


def feature_distance(
    kind: str,
    s: torch.Tensor,
    t: torch.Tensor,
    tau: float = 1.0,
    eps: float = 1e-8,
    *,
    channel_frac: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Distance between student rows ``s`` and teacher rows ``t`` (for "nst": aligned maps).

    Args:
        kind: a name in ``DISTANCES``: "l2": ``mean((s - t)**2)`` over all elements; "kl":
            ``tau**2 * mean_r KL(softmax(t_r / tau) || softmax(s_r / tau))`` (``kd_loss`` on the
            rows); "pearson": ``mean_r (1 - pearson(s_r, t_r))``; "cka": ``1 - linear CKA`` with
            rows as examples; "nst": ``nst_loss`` on maps (N, C, H, W).
        s: (R, D) student rows; gradients flow into it.
        t: (R, D) teacher rows (for "cka" any (R, D')); detached here.
        tau: temperature of "kl".
        eps: keeps constant rows from dividing by zero (pearson, cka).
        channel_frac: channel fraction of "nst".
        generator: RNG of "nst"'s channel subsets (default: torch's global RNG).

    Returns:
        0-d tensor; 0 when ``s == t`` (for "pearson"/"cka" up to ``eps``, and provided the rows
        are not constant).
    """
    t = t.detach()
    if kind == "l2":
        return F.mse_loss(s, t)
    if kind == "kl":
        return kd_loss(s, t, tau)
    if kind == "pearson":
        return pearson_distance(s, t, dim=1, eps=eps).mean()
    if kind == "cka":
        return cka_loss(s, t, eps=eps)
    if kind == "nst":
        return nst_loss(s, t, channel_frac=channel_frac, generator=generator)
    raise ValueError(f"unknown distance {kind!r}; choose from {DISTANCES}")


# ----------------------------------------------------------------------------------------------
# the spec


@dataclass(frozen=True)
class FeatureSpec:
    """One feature-distillation term: ``weight * D(T(align(f_S)), T(f_T))`` on a layer pair.

    Name one by its parts (``FeatureSpec("attention", "kl", weight=5, tau=4)``) or by name
    (``FeatureSpec.named("at", student="layers.l3", teacher="layers.l3", weight=100)``, or
    ``FeatureSpec.named("attention+kl", tau=4)``).

    Attributes:
        transform: a name in ``TRANSFORMS``.
        distance: a name in ``DISTANCES`` (a map distance, "nst", only with transform "none").
        weight: the term's weight in the total loss.
        tau: temperature of the "kl" distance.
        align: a name in ``ALIGNMENTS``.
        channel_frac: fraction of channels the "nst" distance draws per call (1: exact).
        student: student module name (``named_modules()``); None leaves the choice to the
            caller (Auto-KD uses the student's last feature map; ``DistillerSpec`` needs names).
        teacher: teacher module name, likewise.
    """

    transform: str = "none"
    distance: str = "l2"
    weight: float = 1.0
    tau: float = 1.0
    align: str = "full"
    channel_frac: float = 1.0
    student: str | None = None
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; choose from {TRANSFORMS}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; choose from {DISTANCES}")
        if self.distance in MAP_DISTANCES and self.transform != "none":
            raise ValueError(f"the {self.distance!r} distance compares whole maps: use it with transform 'none'")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {self.align!r}; choose from {ALIGNMENTS}")
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 < self.channel_frac <= 1.0:
            raise ValueError(f"channel_frac must be in (0, 1], got {self.channel_frac}")
        for name in ("weight", "tau", "channel_frac"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def named(cls, name: str, **fields: Any) -> FeatureSpec:
        """The spec called ``name``, with ``fields`` overridden.

        Args:
            name: a key of ``FEATURE_PRESETS`` ("hint", "at", "sp", "cka", "nst", "nst_approx")
                or "transform+distance" (e.g. "attention+kl"; alignment "full").
            fields: any other field (weight, tau, student, teacher, ...).

        Raises:
            ValueError: an unknown name or field value.
        """
        if name in FEATURE_PRESETS:
            base = FEATURE_PRESETS[name]
        elif "+" in name:
            transform, distance = name.split("+", 1)
            base = cls(transform.strip(), distance.strip())
        else:
            raise ValueError(
                f"unknown feature distiller {name!r}: name a preset ({', '.join(FEATURE_PRESETS)}) "
                f"or transform+distance, e.g. attention+kl (transforms {TRANSFORMS}, distances {DISTANCES})"
            )
        return dataclasses.replace(base, **fields)

    @property
    def preset(self) -> str | None:
        """The preset this term is (ignoring weight, tau and layers), or None."""
        for name, p in FEATURE_PRESETS.items():
            if (p.transform, p.distance, p.align, p.channel_frac) == (
                self.transform,
                self.distance,
                self.align,
                self.channel_frac,
            ):
                return name
        return None

    def describe(self) -> str:
        """Compact name, e.g. ``at w100 layers.l3->layers.l3`` or ``attention+kl w5 t4``."""
        text = self.preset or f"{self.transform}+{self.distance}"
        text += f" w{self.weight:g}" + (f" t{self.tau:g}" if self.distance == "kl" else "")
        if self.student is not None or self.teacher is not None:
            text += f" {self.student or 'last'}->{self.teacher or 'last'}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``; also reads the former ``{"student", "teacher", "kind",
        "weight"}`` layout, ``kind`` being a preset name."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in names}
        if "kind" in d:
            return cls.named(d["kind"], **fields)
        return cls(**fields)


#: The classic feature losses as specs (see the module docstring for the table).
FEATURE_PRESETS: dict[str, FeatureSpec] = {
    "hint": FeatureSpec("none", "l2"),
    "at": FeatureSpec("attention", "l2"),
    "sp": FeatureSpec("sample", "l2", align="none"),
    "cka": FeatureSpec("none", "cka", align="none"),
    "nst": FeatureSpec("none", "nst", align="pool"),
    "nst_approx": FeatureSpec("none", "nst", align="pool", channel_frac=0.7),
}


def to_spec(spec: FeatureSpec | str) -> FeatureSpec:
    """``spec`` itself, or the spec a name stands for (``FeatureSpec.named``)."""
    return FeatureSpec.named(spec) if isinstance(spec, str) else spec


def feature_loss(
    spec: FeatureSpec | str,
    fs: torch.Tensor,
    ft: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The value of one term on features that are already aligned: ``weight * D(T(fs), T(ft))``.

    No pooling and no adapter here (``distiller.FeatureLoss`` adds them).

    Args:
        spec: the term, or a name for ``FeatureSpec.named``.
        fs: student features (N, ...); maps, tokens and vectors as ``as_feature_map`` takes them.
        ft: teacher features (N, ...), detached.
        mask: the "mask" transform's mask, broadcastable to the maps.
        generator: RNG of the "nst" distance's channel subsets (default: torch's global RNG).

    Returns:
        0-d tensor.
    """
    spec = to_spec(spec)
    fs, ft = as_feature_map(fs), as_feature_map(ft.detach())
    if spec.distance in MAP_DISTANCES:
        d = feature_distance(spec.distance, fs, ft, channel_frac=spec.channel_frac, generator=generator)
    else:
        s = transform_features(spec.transform, fs, mask=mask)
        t = transform_features(spec.transform, ft, mask=mask)
        d = feature_distance(spec.distance, s, t, tau=spec.tau)
    return spec.weight * d


# ----------------------------------------------------------------------------------------------
# the classic losses by their usual names (presets on aligned maps)


def hint_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FitNets hint (Romero et al. 2015), preset "hint": ``mean((fs - ft)**2)`` over all
    elements of maps already adapted to the teacher's channels and size; ``ft`` detached."""
    return feature_loss("hint", fs, ft)


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), preset "at" (for p = 2).

    Channel counts may differ; spatial sizes must match. ``mean((a_s - a_t)**2)`` over
    (N, H*W) with ``a = normalize(mean_c |f|^p)``, as in the reference implementation (which
    then multiplies by a weight of about 1e3; use ``FeatureSpec.weight`` for it).

    Args:
        fs: (N, Cs, H, W). ft: (N, Ct, H, W), detached.
    """
    return feature_distance("l2", attention_map(fs, p), attention_map(ft.detach(), p))


def sp_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), preset "sp".

    Batch similarity matrices ``G = normalize_rows(F F^T)`` (N, N) of the flattened features;
    the loss is ``||G_s - G_t||_F^2 / N^2``. Any channel count and spatial size.

    Args:
        fs: (N, ...) student features. ft: (N, ...) teacher features, detached.
    """
    return feature_loss("sp", fs, ft)
