"""Offline teacher: teacher logits (and chosen feature maps) computed once, reused by every
candidate of a search (Auto-KD's "offline processing"; MF-KD's precomputed teacher outputs).

``TeacherCache.build`` runs the teacher once over the normalised train and val sets, in eval
mode under ``torch.inference_mode``, and keeps float32 logits aligned with the order of
``data.x_train`` / ``data.x_val`` so that the trainer can index them by sample index. With a
``cache_dir`` the arrays are written as ``.npy`` files and later opened memory-mapped, keyed by
a hash of the teacher's state_dict and of the data (plus an augmentation seed where the caller
uses one), so a second run (or a resumed run) does not run the teacher again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle
from .capture import FeatureCapture

__all__ = ["CACHE_VERSION", "TeacherCache", "data_fingerprint", "module_fingerprint"]

# bump when the layout or the meaning of the stored arrays changes: old entries are then
# ignored instead of misread
CACHE_VERSION = 1


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        # a byte view works for every dtype (bf16 has no numpy equivalent)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def module_fingerprint(module: nn.Module) -> str:
    """Hex digest of a module's class name and state_dict (parameters and buffers).

    Args:
        module: the teacher.

    Returns:
        A 32-hex-digit blake2b digest; equal modules (same class, same weights and buffers)
        give equal digests.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _hash_tensor(h, t)
        else:  # extra state
            h.update(repr(t).encode())
    return h.hexdigest()


def data_fingerprint(data: DataBundle) -> str:
    """Hex digest of a bundle's content: images, labels, split and normalisation.

    The content is hashed, not just the name, so a regenerated or re-split dataset with the
    same name never reuses stale logits.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.name}|{data.num_classes}|{tuple(data.mean)}|{tuple(data.std)}|".encode())
    for t in (data.x_train, data.y_train, data.x_val, data.y_val):
        _hash_tensor(h, t)
    return h.hexdigest()


def _feature_file(layer: str, pool: int | None) -> str:
    # layer names contain dots and may contain characters unsafe in file names
    digest = hashlib.blake2b(f"{layer}|{pool}".encode(), digest_size=6).hexdigest()
    safe = "".join(c if c.isalnum() else "_" for c in layer)[:40]
    return f"feat-{safe}-{digest}.npy"


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    # write-then-rename so a concurrent reader never sees a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_npy(path: Path) -> torch.Tensor:
    # copy-on-write mapping: pages are read lazily, and the array is writable so torch does
    # not warn; writes (there are none) would never reach the file
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def _pool(feat: torch.Tensor, pool: int | None) -> torch.Tensor:
    if pool is None or feat.dim() != 4:
        return feat
    return F.adaptive_avg_pool2d(feat, pool)


@dataclass
class TeacherCache:
    """Teacher outputs over a DataBundle, aligned with its sample order.

    Attributes:
        train_logits: float32 (N, K), row i is the teacher's logits for ``data.x_train[i]``.
        val_logits: float32 (M, K), row i for ``data.x_val[i]``.
        teacher_val_acc: teacher top-1 accuracy on the val set, in [0, 1].
        teacher_train_acc: teacher top-1 accuracy on the train set, in [0, 1].
        train_features: layer name -> float32 (N, C, H, W) (or (N, L, C) for tokens) teacher
            feature maps on the train set, for feature distillation; optionally average-pooled
            to ``feature_pool`` x ``feature_pool``.
        key: the cache key (hex) when built with a key or a cache_dir, else None.
        path: the folder the arrays live in (memory-mapped), or None when held in memory.
        feature_pool: the spatial size features were pooled to (None: full size).
        meta: free-form provenance (teacher/data fingerprints, augmentation seed, reused).
    """

    train_logits: torch.Tensor
    val_logits: torch.Tensor
    teacher_val_acc: float
    teacher_train_acc: float = float("nan")
    train_features: dict[str, torch.Tensor] = field(default_factory=dict)
    key: str | None = None
    path: Path | None = None
    feature_pool: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return int(self.train_logits.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.train_logits.shape[1])

    def check_aligned(self, data: DataBundle) -> None:
        """Raise ValueError unless the cache has one row per train/val sample and class."""
        if self.train_logits.shape != (
            data.x_train.shape[0],
            data.num_classes,
        ) or self.val_logits.shape != (data.x_val.shape[0], data.num_classes):
            raise ValueError(
                f"teacher cache (train {tuple(self.train_logits.shape)}, val "
                f"{tuple(self.val_logits.shape)}) does not match data {data.name!r} "
                f"(train {data.x_train.shape[0]}, val {data.x_val.shape[0]}, "
                f"{data.num_classes} classes)"
            )

    @staticmethod
    def make_key(
        teacher: nn.Module,
        data: DataBundle,
        *,
        key: str | None = None,
        augment_seed: int | None = None,
    ) -> str:
        """The cache key: hash of (teacher identity, data content, augmentation seed, version).

        Args:
            teacher: hashed by class name and state_dict unless ``key`` is given.
            data: hashed by content (``data_fingerprint``).
            key: caller-known teacher identity (e.g. the checkpoint's sha256); skips hashing
                the teacher's weights, which is the slow part for a large teacher.
            augment_seed: seed of the augmentation the caller applied, if any.
        """
        teacher_id = key if key is not None else module_fingerprint(teacher)
        h = hashlib.blake2b(digest_size=16)
        h.update(f"v{CACHE_VERSION}|{teacher_id}|{data_fingerprint(data)}|{augment_seed}".encode())
        return h.hexdigest()

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        data: DataBundle,
        *,
        batch_size: int = 256,
        device: str = "cpu",
        cache_dir: Path | str | None = None,
        key: str | None = None,
        feature_layers: Sequence[str] = (),
        feature_pool: int | None = None,
        augment_seed: int | None = None,
    ) -> TeacherCache:
        """Run the teacher once over train and val (or reuse a stored run).

        Args:
            teacher: the teacher; put in eval mode for the run, its mode is restored after.
            data: the bundle; logits follow the order of ``data.x_train`` / ``data.x_val``.
            batch_size: inference batch size.
            device: where the teacher runs ("cpu", "cuda", ...); it is moved back after.
            cache_dir: folder for stored entries; None keeps everything in memory.
            key: teacher identity used instead of hashing its weights (see ``make_key``).
            feature_layers: teacher module names (``model.named_modules()``) whose outputs on
                the train set are stored for feature distillation.
            feature_pool: adaptive-average-pool stored 4-D feature maps to this spatial size
                (saves memory; None keeps full size).
            augment_seed: recorded in the key and meta when the bundle holds augmented data.

        Returns:
            The cache; with ``cache_dir`` its arrays are memory-mapped from disk.
        """
        entry_key = (
            cls.make_key(teacher, data, key=key, augment_seed=augment_seed)
            if (cache_dir is not None or key is not None)
            else None
        )
        layers = list(dict.fromkeys(feature_layers))
        folder: Path | None = None
        meta: dict[str, Any] = {"augment_seed": augment_seed, "data": data.name, "reused": False}
        if cache_dir is not None:
            assert entry_key is not None
            folder = Path(cache_dir) / f"teacher-{entry_key}"
            stored = cls._load(folder, layers, feature_pool)
            if stored is not None:
                stored.check_aligned(data)
                return stored

        have_logits = folder is not None and (folder / "meta.json").exists()
        train_logits, feats = _run_teacher(teacher, data, data.x_train, batch_size, device, layers, feature_pool)
        val_logits, _ = _run_teacher(teacher, data, data.x_val, batch_size, device, [], None)
        cache = cls(
            train_logits=train_logits,
            val_logits=val_logits,
            teacher_val_acc=_accuracy(val_logits, data.y_val),
            teacher_train_acc=_accuracy(train_logits, data.y_train),
            train_features=feats,
            key=entry_key,
            feature_pool=feature_pool,
            meta=meta,
        )
        if folder is not None:
            cache._store(folder, write_logits=not have_logits)
            stored = cls._load(folder, layers, feature_pool)
            assert stored is not None
            stored.meta["reused"] = False
            return stored
        return cache

    def _store(self, folder: Path, *, write_logits: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if write_logits or not meta:
            _save_npy_atomic(folder / "train_logits.npy", self.train_logits.numpy())
            _save_npy_atomic(folder / "val_logits.npy", self.val_logits.numpy())
            meta = {
                "version": CACHE_VERSION,
                "key": self.key,
                "teacher_val_acc": self.teacher_val_acc,
                "teacher_train_acc": self.teacher_train_acc,
                "train_shape": list(self.train_logits.shape),
                "val_shape": list(self.val_logits.shape),
                "augment_seed": self.meta.get("augment_seed"),
                "data": self.meta.get("data"),
                "features": {},
            }
        for layer, feat in self.train_features.items():
            fname = _feature_file(layer, self.feature_pool)
            _save_npy_atomic(folder / fname, feat.numpy())
            meta["features"][f"{layer}|{self.feature_pool}"] = fname
        # meta.json is written last: its presence marks the logits as complete
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, meta_path)

    @classmethod
    def _load(cls, folder: Path, layers: Sequence[str], pool: int | None) -> TeacherCache | None:
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            return None
        if meta.get("version") != CACHE_VERSION:
            return None
        feats: dict[str, torch.Tensor] = {}
        for layer in layers:
            fname = meta["features"].get(f"{layer}|{pool}")
            if fname is None or not (folder / fname).exists():
                return None  # a requested feature map is missing: recompute
            feats[layer] = _load_npy(folder / fname)
        return cls(
            train_logits=_load_npy(folder / "train_logits.npy"),
            val_logits=_load_npy(folder / "val_logits.npy"),
            teacher_val_acc=float(meta["teacher_val_acc"]),
            teacher_train_acc=float(meta["teacher_train_acc"]),
            train_features=feats,
            key=meta["key"],
            path=folder,
            feature_pool=pool,
            meta={
                "augment_seed": meta.get("augment_seed"),
                "data": meta.get("data"),
                "reused": True,
            },
        )

    @classmethod
    def from_logits(
        cls,
        train_logits: torch.Tensor,
        val_logits: torch.Tensor,
        y_val: torch.Tensor,
        y_train: torch.Tensor | None = None,
    ) -> TeacherCache:
        """A cache from precomputed logits (N, K) and (M, K), e.g. produced elsewhere."""
        train_logits = train_logits.detach().float().cpu().contiguous()
        val_logits = val_logits.detach().float().cpu().contiguous()
        return cls(
            train_logits=train_logits,
            val_logits=val_logits,
            teacher_val_acc=_accuracy(val_logits, y_val),
            teacher_train_acc=_accuracy(train_logits, y_train) if y_train is not None else float("nan"),
        )


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def _run_teacher(
    teacher: nn.Module,
    data: DataBundle,
    x_uint8: torch.Tensor,
    batch_size: int,
    device: str,
    layers: Iterable[str],
    pool: int | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Teacher logits (N, K) float32 and pooled features over ``x_uint8`` (N, C, H, W)."""
    layers = list(layers)
    was_training = teacher.training
    orig_device = next(iter(teacher.parameters()), torch.empty(0)).device
    teacher.eval().to(device)
    outs: list[torch.Tensor] = []
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    try:
        with torch.inference_mode(), FeatureCapture(teacher, layers) as cap:
            for start in range(0, x_uint8.shape[0], batch_size):
                # normalise per batch with the bundle's own transform, exactly what
                # ``data.train_tensors()`` gives, without holding the whole float copy twice
                xb = data.normalize(x_uint8[start : start + batch_size]).to(device)
                outs.append(teacher(xb).float().cpu())
                for name in layers:
                    feats[name].append(_pool(cap.features[name], pool).float().cpu())
    finally:
        teacher.to(orig_device).train(was_training)
    k = data.num_classes
    logits = torch.cat(outs) if outs else torch.empty(0, k)
    return logits.contiguous(), {n: torch.cat(v).contiguous() for n, v in feats.items() if v}
