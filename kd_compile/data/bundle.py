"""The in-memory dataset (``DataBundle``) and the shaping every loader's output goes through.

Loaders return a ``RawData`` (numpy, uint8 NCHW images, int64 labels); ``finish_bundle`` checks
it, adapts it to the requested shape and computes the normalisation, so every source ends in the
same validated ``DataBundle``: train, val and a held-out test split. ``stratified_split`` is the one
seeded train/val/test split used where a source brings none (``VAL_FRACTION``/``TEST_FRACTION``,
70/15/15 per class); the streamed folder loader takes the same function and fractions.

Why three splits: the search, proxy early stopping, the distiller search and every other choice
select on val, so val accuracy is optimistic; test is read once, at the end, for the figures a
user decides from. The test part of a seeded split is drawn with a fixed seed (``TEST_SEED``),
so a run with another ``--seed`` (and the teacher, trained with its own) never trains on it.
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
    "TEST_FRACTION",
    "TEST_SEED",
    "VAL_FRACTION",
    "DataBundle",
    "RawData",
    "adapt_images",
    "channel_stats",
    "finish_bundle",
    "stratified_split",
]

#: Share of each class that goes to val when a source has no split of its own.
VAL_FRACTION = 0.15
#: Share of each class held out for test when a source has no test split of its own.
TEST_FRACTION = 0.15
#: Seed of the test part of every seeded split: fixed, so no run seed moves a test image into train.
TEST_SEED = 0


@dataclass
class DataBundle:
    """A dataset split into train, val (for every choice) and test (read once, at the end).

    Attributes:
        name: the spec it was loaded from (``glyphs``, ``digits``, a path).
        x_train: uint8 tensor (N, C, H, W).
        y_train: int64 tensor (N,).
        x_val: uint8 tensor (M, C, H, W).
        y_val: int64 tensor (M,).
        num_classes: number of classes.
        class_names: one name per class.
        mean, std: per-channel normalisation applied to x / 255.
        meta: free-form (generator seed, resolution, source, ``split``).
        x_test: uint8 tensor (T, C, H, W), or ``None`` where there is no test split (bundles made
            in code, data-free images); never used for a choice, only for the final figures.
        y_test: int64 tensor (T,), or ``None``.
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
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @property
    def has_test(self) -> bool:
        """Whether the bundle holds a non-empty test split."""
        return self.x_test is not None and self.y_test is not None and len(self.x_test) > 0

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

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 test images and their int64 labels (only for the final figures).

        Raises:
            DataError: the bundle has no test split (``has_test`` is False).
        """
        if not self.has_test:
            raise DataError(f"{self.name}: the data has no test split")
        return self.normalize(self.x_test), self.y_test  # type: ignore[arg-type]

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
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


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
        ``meta["input_shape"]`` set; the test split is adapted like the others.

    Raises:
        DataError: an empty train, val or (when given) test split, fewer than two classes in
            train, or test images of another shape than train's.
    """
    name = raw.name
    if len(raw.x_train) == 0:
        raise DataError(f"dataset is empty: {name} has no training images")
    if len(raw.x_val) == 0:
        raise DataError(f"{name}: the validation split is empty")
    has_test = raw.x_test is not None and raw.y_test is not None
    if has_test and len(raw.x_test) == 0:  # type: ignore[arg-type]
        raise DataError(f"{name}: the test split is empty")
    if has_test and raw.x_test.shape[1:] != raw.x_train.shape[1:]:  # type: ignore[union-attr]
        raise DataError(
            f"{name}: train images {raw.x_train.shape[1:]} and test images "
            f"{raw.x_test.shape[1:]} differ in shape"  # type: ignore[union-attr]
        )
    parts = [raw.y_train, raw.y_val] + ([raw.y_test] if has_test else [])
    present = np.unique(np.concatenate(parts))  # type: ignore[arg-type]
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
    x_test = y_test = None
    if has_test:
        x_test = adapt_images(
            torch.from_numpy(np.ascontiguousarray(raw.x_test)),
            image_size,
            channels,
            interpolation=interpolation,
            crop_pct=crop_pct,
        )
        y_test = torch.from_numpy(raw.y_test.astype(np.int64))  # type: ignore[union-attr]
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
        x_test=x_test,
        y_test=y_test,
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


def stratified_split(
    y: np.ndarray,
    seed: int,
    *,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-class split -> (train_idx, val_idx, test_idx), each sorted.

    The test part is drawn first, with the fixed ``TEST_SEED`` (so it is the same whatever
    ``seed`` is), then val from the rest with ``seed``. Each class gives ``round(n * fraction)``
    samples to a part; a class with one sample stays in train, and a part asked for
    (fraction > 0) gets at least one sample when train can spare it. Used by the digits, npz and
    folder loaders (and the streamed folder loader) wherever a source brings no split; a source
    that brings val but no test calls it with ``val_fraction=0``.

    Args:
        y: int labels (N,).
        seed: seed of the train/val part (mixed with a constant so it differs from generator
            streams).
        val_fraction: share of each class for val (0.15; 0 for none).
        test_fraction: share of each class for test (0.15; 0 for none).

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"split fractions must be in [0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
    y = np.asarray(y)
    test_rng = np.random.default_rng([TEST_SEED, 104729])
    rng = np.random.default_rng([seed, 7919])
    train, val, test = [], [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx = test_rng.permutation(members)
        k_te = round(len(idx) * test_fraction) if len(idx) > 1 else 0
        test.append(idx[:k_te])
        rest = rng.permutation(idx[k_te:])
        k_va = round(len(members) * val_fraction) if len(rest) > 1 else 0
        k_va = min(k_va, len(rest) - 1) if len(rest) > 1 else 0
        val.append(rest[:k_va])
        train.append(rest[k_va:])
    tr, va, te = (np.concatenate(p).astype(np.int64) for p in (train, val, test))
    # a part asked for but empty (every class too small): take one sample from train
    if test_fraction > 0 and len(te) == 0 and len(tr) > 1:
        te, tr = tr[-1:], tr[:-1]
    if val_fraction > 0 and len(va) == 0 and len(tr) > 1:
        va, tr = tr[:1], tr[1:]
    return np.sort(tr), np.sort(va), np.sort(te)
