"""How a teacher expects its images: the ``Preprocessing`` record and the resize-and-crop geometry.

``Preprocessing`` holds the input shape, the normalisation, the resize filter and the centre-crop
fraction a teacher was trained (and evaluated) with, each with the source it came from (an
option, the checkpoint, timm's ``pretrained_cfg``, the graph's example input, the data). The
loaders apply the geometry the same way whether images are PIL images (ImageFolder) or uint8
tensors (``.npz``, built-ins): ``crop_pct`` < 1 resizes to ``floor(size / crop_pct)`` (the
shorter side, keeping the aspect ratio, for a square target) and centre-crops ``size``, as
timm's evaluation transform does; ``crop_pct`` = 1 resizes straight to the target size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["INTERPOLATIONS", "Preprocessing", "center_crop_box", "scaled_size"]

#: Resize filters a teacher's preprocessing may name (timm's names).
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")

#: The fields whose source ``Preprocessing.sources`` records.
FIELDS: tuple[str, ...] = ("channels", "size", "mean", "std", "interpolation", "crop_pct")


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a teacher (the student then sees the same tensors).

    Attributes:
        input_shape: (C, H, W) the teacher is fed.
        mean, std: per-channel normalisation of ``x / 255``; ``None`` until the data's own
            statistics fill it (only when the teacher brings none).
        interpolation: resize filter, one of ``INTERPOLATIONS``.
        crop_pct: centre-crop fraction in (0, 1]; 1 resizes straight to the input size.
        sources: ``(field, source)`` pairs, one per entry of ``FIELDS``: where each value came
            from (``"--mean"``, ``"checkpoint"``, ``"timm pretrained_cfg"``, ``"data"``, ...).
    """

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the teacher's input."""
        return int(self.input_shape[1]), int(self.input_shape[2])

    def source(self, name: str) -> str | None:
        """Where field ``name`` (one of ``FIELDS``) came from, or ``None`` if not recorded."""
        return dict(self.sources).get(name)

    def with_stats(self, mean: tuple[float, ...], std: tuple[float, ...], source: str) -> Preprocessing:
        """Fill a missing mean/std (the teacher brings none) with ``mean``/``std`` from ``source``.

        A mean/std the teacher has is kept: a teacher is normalised the way it was trained.
        """
        if self.mean is not None and self.std is not None:
            return self
        src = dict(self.sources)
        kw: dict[str, Any] = {}
        if self.mean is None:
            kw["mean"], src["mean"] = tuple(float(v) for v in mean), source
        if self.std is None:
            kw["std"], src["std"] = tuple(float(v) for v in std), source
        return dataclasses.replace(self, sources=tuple(src.items()), **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``Teacher.meta["preprocessing"]``, reports and checkpoints)."""
        return {
            "input_shape": [int(v) for v in self.input_shape],
            "mean": None if self.mean is None else [float(v) for v in self.mean],
            "std": None if self.std is None else [float(v) for v in self.std],
            "interpolation": self.interpolation,
            "crop_pct": float(self.crop_pct),
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``."""
        return cls(
            input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
            mean=None if d.get("mean") is None else tuple(float(v) for v in d["mean"]),
            std=None if d.get("std") is None else tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation") or "bilinear"),
            crop_pct=float(d.get("crop_pct") or 1.0),
            sources=tuple((str(k), str(v)) for k, v in dict(d.get("sources") or {}).items()),
        )


def scaled_size(src: tuple[int, int], target: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """(H, W) to resize an image of size ``src`` to before centre-cropping ``target``.

    Args:
        src: the image's (H, W).
        target: the crop's (H, W).
        crop_pct: the crop fraction in (0, 1]; 1 gives ``target`` itself.

    Returns:
        For a square target, the shorter side becomes ``floor(side / crop_pct)`` and the longer
        keeps the aspect ratio (timm's and torchvision's ``Resize(int)``); otherwise each side
        becomes ``floor(side / crop_pct)``.
    """
    th, tw = target
    if crop_pct >= 1.0:
        return th, tw
    if th != tw:
        return math.floor(th / crop_pct), math.floor(tw / crop_pct)
    s = math.floor(th / crop_pct)
    h, w = src
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def center_crop_box(src: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a centred ``target`` crop of a ``src`` image (torchvision's rounding)."""
    return int(round((src[0] - target[0]) / 2.0)), int(round((src[1] - target[1]) / 2.0))
