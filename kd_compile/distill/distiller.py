"""Feature distillers as trainable modules: alignment, one term, and a whole distiller.

``FeatureLoss`` realises one ``features.FeatureSpec`` on a (student, teacher) feature pair: it
aligns the two maps (``FeatureAligner``, whose 1x1 adapter is trained with the student and
dropped afterwards), draws the "mask" transform's masks from its own seeded generator, and
returns the weighted term. ``DistillerSpec`` is what ``TrainConfig.distiller`` holds (a logit
loss plus feature terms on named layer pairs) and ``FeatureDistiller`` is the sum of its
``FeatureLoss`` terms. Auto-KD's searched distillers are ``FeatureLoss`` terms too
(``autokd.search``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .features import CHANNEL_AGNOSTIC, FeatureSpec, as_feature_map, feature_loss, pool_to, to_spec
from .losses import LOGIT_LOSSES

__all__ = ["DistillerSpec", "FeatureAligner", "FeatureDistiller", "FeatureLoss", "map_shape"]


def map_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of one sample's feature of ``shape`` (maps, tokens or vectors, batch dim
    excluded) once ``as_feature_map`` has turned it into a map."""
    # a meta tensor gives the converted shape without allocating anything
    shp = as_feature_map(torch.empty(1, *shape, device="meta")).shape[1:]
    return (int(shp[0]), int(shp[1]), int(shp[2]))


class FeatureAligner(nn.Module):
    """Brings a student feature to the teacher feature's layout as the spec's ``align`` asks.

    "full" and "pool": both maps are adaptive-average-pooled to the smaller of the two spatial
    sizes (pooling the larger one loses least; Auto-KD: "a pooling layer to align feature
    scales"). "full" also learns a 1x1 conv (no bias) from student to teacher channels when the
    counts differ and the transform is not channel-agnostic ("and 1x1 Conv to align filter
    numbers"). "none": the maps as captured.

    Args:
        spec: the term (or a name for ``FeatureSpec.named``).
        student_shape: one student feature's shape without the batch dim: (C, H, W), tokens
            (L, C) or a vector (C,).
        teacher_shape: the teacher's, likewise.

    Attributes:
        size: the common spatial size both maps are pooled to (None: no pooling).
        adapter: the learned 1x1 conv, or None.
    """

    def __init__(self, spec: FeatureSpec | str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        spec = to_spec(spec)
        cs, hs, ws = map_shape(student_shape)
        ct, ht, wt = map_shape(teacher_shape)
        self.size: tuple[int, int] | None = None if spec.align == "none" else (min(hs, ht), min(ws, wt))
        self.adapter: nn.Module | None = None
        if spec.align == "full" and cs != ct and spec.transform not in CHANNEL_AGNOSTIC:
            self.adapter = nn.Conv2d(cs, ct, kernel_size=1, bias=False)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, ...) student and teacher features -> the aligned maps (N, C', h, w); the teacher's
        detached and in the student's dtype."""
        fs = pool_to(as_feature_map(fs), self.size)
        ft = pool_to(as_feature_map(ft.detach()).to(fs.dtype), self.size)
        if self.adapter is not None:
            fs = self.adapter(fs)
        return fs, ft


class FeatureLoss(nn.Module):
    """One feature term ``weight * D(T(align(f_S)), T(f_T))`` with its alignment.

    The "mask" transform draws a fresh spatial Bernoulli(0.5) mask every call from the module's
    own seeded generator (the same mask for both networks). The "nst" distance's channel
    subsets come from torch's global RNG, which ``train_student`` seeds.

    Args:
        spec: the term (or a name for ``FeatureSpec.named``); its layer names are not used here.
        student_shape: one student feature's shape without the batch dim: (C, H, W), tokens
            (L, C) or a vector (C,).
        teacher_shape: the teacher's, likewise.
        seed: seed of the mask generator.
    """

    def __init__(
        self,
        spec: FeatureSpec | str,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.spec = to_spec(spec)
        self.aligner = FeatureAligner(self.spec, student_shape, teacher_shape)
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def adapter(self) -> nn.Module | None:
        """The learned 1x1 channel adapter, or None."""
        return self.aligner.adapter

    def align(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, ...) student and teacher features -> aligned maps (N, C', h, w), teacher detached."""
        return self.aligner(fs, ft)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """Args: fs student features (N, ...); ft teacher features (N, ...), detached.

        Returns:
            0-d weighted loss.
        """
        fs, ft = self.aligner(fs, ft)
        mask = None
        if self.spec.transform == "mask":
            n, _, h, w = fs.shape
            mask = (torch.rand(n, 1, h, w, generator=self._gen) < 0.5).to(fs.device, fs.dtype)
        return feature_loss(self.spec, fs, ft, mask=mask)

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, size={self.aligner.size}"


@dataclass(frozen=True)
class DistillerSpec:
    """A distiller: the logit loss plus feature terms on named layer pairs.

    ``loss = KDLoss(kind=logit)(s, y, t) + sum_pairs FeatureLoss(pair)(f_S, f_T)``; alpha and
    tau of the logit loss come from ``TrainConfig``.

    Attributes:
        logit: "kl", "kl_std", "dist" or "none" (CE only plus the feature terms).
        pairs: the feature terms, each naming its ``student`` and ``teacher`` module (dicts,
            e.g. from JSON, are read with ``FeatureSpec.from_dict``).
    """

    logit: str = "kl"
    pairs: tuple[FeatureSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.logit not in LOGIT_LOSSES:
            raise ValueError(f"unknown logit loss {self.logit!r}; choose from {LOGIT_LOSSES}")
        # accept lists/dicts (e.g. from JSON) and store a hashable tuple of FeatureSpec
        pairs = tuple(p if isinstance(p, FeatureSpec) else FeatureSpec.from_dict(p) for p in self.pairs)
        for p in pairs:
            if p.student is None or p.teacher is None:
                raise ValueError(f"a DistillerSpec term needs student and teacher layer names: {p.describe()}")
        object.__setattr__(self, "pairs", pairs)

    @property
    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(str(p.student) for p in self.pairs))

    @property
    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(str(p.teacher) for p in self.pairs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillerSpec:
        return cls(logit=d.get("logit", "kl"), pairs=tuple(FeatureSpec.from_dict(p) for p in d.get("pairs", ())))


class FeatureDistiller(nn.Module):
    """The feature terms of a ``DistillerSpec`` with their aligners (learned adapters).

    Args:
        spec: the distiller.
        student_shapes: student layer name -> one sample's feature shape (C, H, W), (L, C) or
            (C,) (as captured, batch dim excluded).
        teacher_shapes: teacher layer name -> shape, likewise.
        seed: seed of the "mask" transforms' generators (term i uses ``seed + i``).
    """

    def __init__(
        self,
        spec: DistillerSpec,
        student_shapes: dict[str, Sequence[int]],
        teacher_shapes: dict[str, Sequence[int]],
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.terms = nn.ModuleList(
            FeatureLoss(p, student_shapes[str(p.student)], teacher_shapes[str(p.teacher)], seed=seed + i)
            for i, p in enumerate(spec.pairs)
        )

    def forward(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the feature terms (0-d) over batch features (N, ...)."""
        total: torch.Tensor | None = None
        for pair, term in zip(self.spec.pairs, self.terms, strict=True):
            value = term(student_feats[str(pair.student)], teacher_feats[str(pair.teacher)])
            total = value if total is None else total + value
        if total is None:
            raise ValueError("the distiller has no feature pairs")
        return total
