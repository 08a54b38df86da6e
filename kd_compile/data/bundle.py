"""The in-memory dataset (``DataBundle``) and the shaping every loader's output goes through.

Loaders return a ``RawData`` (numpy, uint8 NCHW images, int64 labels); ``finish_bundle`` checks
it, adapts it to the requested shape and computes the normalisation, so every source ends in the
same validated ``DataBundle``. ``stratified_split`` is the one seeded train/val split used where
a source brings none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kd_compile.errors import DataError

from .preprocess import INTERPOLATIONS, center_crop_box, scaled_size

__all__ = [
    "VAL_FRACTION",
    "DataBundle",
    "RawData",
    "adapt_images",
    "channel_stats",
    "finish_bundle",
    "stratified_split",
]

#: Share of each class that goes to val when a source has no split of its own.
VAL_FRACTION = 0.2


@dataclass
class DataBundle:
    """A dataset split into train and val.

    Attributes:
        name: the spec it was loaded from (``glyphs``, ``digits``, a path).
        x_train: uint8 tensor (N, C, H, W).
        y_train: int64 tensor (N,).
        x_val: uint8 tensor (M, C, H, W).
        y_val: int64 tensor (M,).
        num_classes: number of classes.
        class_names: one name per class.
        mean, std: per-channel normalisation applied to x / 255.
        meta: free-form (generator seed, resolution, source).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 train images and their int64 labels."""
        return self.normalize(self.x_train), self.y_train

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 val images and their int64 labels."""
        return self.normalize(self.x_val), self.y_val

    def hint(self) -> dict[str, Any]:
        """What a teacher checkpoint stores so the same data can be loaded without --data."""
        return {"spec": self.name, "meta": dict(self.meta)}

    def replace(self, **kw: Any) -> DataBundle:
        """A copy with the given fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **kw)


@dataclass
class RawData:
    """What each loader returns before the common checks (numpy, uint8 NCHW, int64)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str] | None
    meta: dict[str, Any]


def finish_bundle(
    raw: RawData,
    *,
    image_size: int | tuple[int, int] | None,
    channels: int | None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> DataBundle:
    """Validate a loader's output, adapt its shape and wrap it as a ``DataBundle``.

    Args:
        raw: the loader's arrays, names and meta.
        image_size: resize to (image_size, image_size) or (H, W); ``None`` keeps the size.
        channels: 1 or 3 to convert channels; ``None`` keeps them.
        interpolation: resize filter (``preprocess.INTERPOLATIONS``).
        crop_pct: centre-crop fraction; below 1, resize to ``image_size / crop_pct`` and crop.

    Returns:
        The bundle, with per-channel mean/std of the (adapted) train images and
        ``meta["input_shape"]`` set.

    Raises:
        DataError: an empty train or val split, or fewer than two classes in train.
    """
    name = raw.name
    if len(raw.x_train) == 0:
        raise DataError(f"dataset is empty: {name} has no training images")
    if len(raw.x_val) == 0:
        raise DataError(f"{name}: the validation split is empty")
    present = np.unique(np.concatenate([raw.y_train, raw.y_val]))
    if len(np.unique(raw.y_train)) < 2:
        raise DataError(
            f"{name}: need at least 2 classes, found {len(np.unique(raw.y_train))} in train"
        )
    num_classes = int(present.max()) + 1
    names = raw.class_names
    if names is not None and len(names) >= num_classes:
        num_classes = len(names)
    else:
        names = [str(i) for i in range(num_classes)]

    x_train = torch.from_numpy(np.ascontiguousarray(raw.x_train))
    x_val = torch.from_numpy(np.ascontiguousarray(raw.x_val))
    x_train, x_val = (
        adapt_images(x, image_size, channels, interpolation=interpolation, crop_pct=crop_pct)
        for x in (x_train, x_val)
    )
    mean, std = channel_stats(x_train)
    meta = dict(raw.meta)
    meta["input_shape"] = [int(s) for s in x_train.shape[1:]]
    if image_size is not None and (interpolation != "bilinear" or crop_pct < 1.0):
        # recorded so that a data hint built from this bundle prepares images the same way
        meta["interpolation"], meta["crop_pct"] = interpolation, float(crop_pct)
    return DataBundle(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(raw.y_train.astype(np.int64)),
        x_val=x_val,
        y_val=torch.from_numpy(raw.y_val.astype(np.int64)),
        num_classes=num_classes,
        class_names=list(names),
        mean=mean,
        std=std,
        meta=meta,
    )


def adapt_images(
    x: torch.Tensor,
    image_size: int | tuple[int, int] | None,
    channels: int | None,
    *,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C', H', W'): resize, centre crop and channel conversion.

    Args:
        x: uint8 images (N, C, H, W).
        image_size: target side S or (H', W') (antialiased when shrinking, except ``nearest``);
            ``None`` keeps H, W.
        channels: 3 repeats a gray channel, 1 takes ITU-R 601 luminance; ``None`` keeps C.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        crop_pct: below 1, resize to ``preprocess.scaled_size`` and centre-crop the target
            (timm's evaluation transform); 1 resizes straight to the target.

    Returns:
        Contiguous uint8 images.
    """
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise DataError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    if channels is not None and x.shape[1] != channels:
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = _chunked(x, lambda c: (c.float() * w).sum(1, keepdim=True))
    if image_size is None:
        return x.contiguous()
    target = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    src = (int(x.shape[2]), int(x.shape[3]))
    scaled = scaled_size(src, target, crop_pct)
    if src != scaled:
        down = scaled[0] < src[0] or scaled[1] < src[1]
        mode = "nearest-exact" if interpolation == "nearest" else interpolation
        kw: dict[str, Any] = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": down}
        x = _chunked(x, lambda c: F.interpolate(c.float(), size=scaled, mode=mode, **kw))
    if scaled != target:
        top, left = center_crop_box(scaled, target)
        x = x[:, :, top : top + target[0], left : left + target[1]]
    return x.contiguous()


def _chunked(
    x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096
) -> torch.Tensor:
    """Apply a float op to uint8 x in chunks (bounded memory) and round back to uint8."""
    parts = [
        fn(x[i : i + chunk]).round_().clamp_(0, 255).to(torch.uint8)
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of x/255 over uint8 (N, C, H, W), in float64 chunks.

    Returns:
        (mean, std), each rounded to 6 decimals; a constant channel gets std 1.
    """
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), 4096):
        v = x[i : i + 4096].to(torch.float64) / 255.0
        s += v.sum((0, 2, 3))
        s2 += (v * v).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    # A constant channel would divide by zero; leave it unscaled instead.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(v), 6) for v in std)


def stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded 80/20 split per class -> (train_idx, val_idx), each sorted.

    Classes with one sample stay in train; at least one sample goes to val.

    Args:
        y: int labels (N,).
        seed: split seed (mixed with a constant so it differs from generator streams).
    """
    rng = np.random.default_rng([seed, 7919])
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(len(idx) * VAL_FRACTION) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    tr, va = np.concatenate(train), np.concatenate(val)
    if len(va) == 0 and len(tr) > 1:
        va, tr = tr[:1], tr[1:]
    return np.sort(tr), np.sort(va)
