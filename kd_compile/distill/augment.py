"""Seeded, replayable data augmentation for offline distillation.

An offline teacher cache holds the teacher's outputs for fixed inputs. To train a student on
augmented images *and* keep the cache, the augmented images must be reproducible: the same
seed must give the same pixels, so the teacher's outputs computed once on them stay aligned with
what the student sees (the Auto-KD paper: "apply the same data augmentation techniques used
during training to ensure spatial alignment").

``augment_images`` draws every random choice from a ``torch.Generator`` seeded by the caller,
so a view is a pure function of (images, seed, options). ``augmented_bundle`` appends
``views`` augmented copies of the training set to a ``DataBundle`` (view ``k`` uses seed
``derive_seed(seed, k)``); the result is an ordinary bundle, so ``TeacherCache.build(teacher,
bundle, augment_seed=seed)`` caches the teacher on exactly those images, and regenerating the
bundle with the same seed (another process, another run) replays them bit for bit. Training
then samples the original and augmented rows alike; an epoch over the bundle is ``views + 1``
passes over the original images, each in a different view.

Augmentations (integer pixel arithmetic on uint8 images, so replay is exact on every machine):
random translation by up to ``max_shift`` pixels (edge-replicated), optional horizontal flip
(only for data where it keeps the label; never for characters), and random erasing of a
rectangle (cutout) with probability ``erase_p``.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ..data import DataBundle

__all__ = ["augment_images", "augmented_bundle", "derive_seed"]


def derive_seed(seed: int, view: int) -> int:
    """A 63-bit seed for augmented view ``view`` (1-based) of base seed ``seed``."""
    digest = hashlib.sha256(f"kd-compile-augment|{seed}|{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def augment_images(
    x: torch.Tensor,
    seed: int,
    *,
    max_shift: int = 2,
    hflip: bool = False,
    erase_p: float = 0.0,
    erase_frac: float = 0.25,
) -> torch.Tensor:
    """One random view of each image, deterministic in ``seed``.

    Args:
        x: uint8 (N, C, H, W) images.
        seed: seed of every random choice.
        max_shift: translate by an integer in [-max_shift, max_shift] pixels along each axis;
            uncovered pixels repeat the edge.
        hflip: flip half of the images left-right.
        erase_p: probability of erasing one rectangle per image (set to the image's mean).
        erase_frac: the erased rectangle's sides are at most this fraction of the image's.

    Returns:
        uint8 (N, C, H, W), a new tensor.

    Raises:
        TypeError: ``x`` is not a uint8 4-D tensor.
        ValueError: a negative ``max_shift`` or a probability outside [0, 1].
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise TypeError(f"augment_images expects uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if not 0.0 <= erase_p <= 1.0 or not 0.0 < erase_frac <= 1.0:
        raise ValueError(f"erase_p must be in [0, 1] and erase_frac in (0, 1], got {erase_p}, {erase_frac}")
    n, _c, h, w = x.shape
    gen = torch.Generator().manual_seed(int(seed))
    out = x.clone()
    if n == 0:
        return out
    if max_shift > 0:
        s = max_shift
        padded = F.pad(x.float(), (s, s, s, s), mode="replicate").to(torch.uint8)
        dy = torch.randint(0, 2 * s + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * s)
        out = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        out = out.gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    if erase_p > 0:
        hit = torch.rand(n, generator=gen) < erase_p
        eh = (torch.rand(n, generator=gen) * erase_frac * h).long().clamp(min=1)
        ew = (torch.rand(n, generator=gen) * erase_frac * w).long().clamp(min=1)
        y0 = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
        x0 = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
        yy = torch.arange(h)[None, :]
        xx = torch.arange(w)[None, :]
        in_y = (yy >= y0[:, None]) & (yy < (y0 + eh)[:, None])
        in_x = (xx >= x0[:, None]) & (xx < (x0 + ew)[:, None])
        box = (in_y[:, :, None] & in_x[:, None, :] & hit[:, None, None])[:, None]  # (N, 1, H, W)
        fill = out.float().mean(dim=(1, 2, 3), keepdim=True).round().to(torch.uint8)
        out = torch.where(box, fill.expand_as(out), out)
    return out.contiguous()


def augmented_bundle(
    data: DataBundle,
    views: int,
    seed: int,
    *,
    max_shift: int = 2,
    hflip: bool = False,
    erase_p: float = 0.0,
) -> DataBundle:
    """``data`` with ``views`` seeded augmented copies of its training set appended.

    Row ``i + k * N`` of the new training set is view ``k`` (``k = 0``: the original) of
    original row ``i``; validation data are unchanged. The same (data, views, seed, options)
    always give the same bundle, so a ``TeacherCache`` built on it (pass
    ``augment_seed=seed``) stays valid across runs.

    Raises:
        ValueError: ``views < 0``.
    """
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    if views == 0:
        return data
    xs = [data.x_train]
    for k in range(1, views + 1):
        xs.append(augment_images(data.x_train, derive_seed(seed, k), max_shift=max_shift, hflip=hflip, erase_p=erase_p))
    meta = {
        **data.meta,
        "augment": {"views": views, "seed": seed, "max_shift": max_shift, "hflip": hflip, "erase_p": erase_p},
    }
    return data.replace(
        name=f"{data.name}+aug{views}@{seed}",
        x_train=torch.cat(xs),
        y_train=data.y_train.repeat(views + 1),
        meta=meta,
    )
