"""Offline teacher: teacher logits (and chosen feature maps) computed once, reused by every
candidate of a search (Auto-KD's "offline processing"; MF-KD's precomputed teacher outputs).

``TeacherCache.build`` runs the teacher once over the normalised train and val sets, in eval
mode under ``torch.inference_mode``, and keeps float32 logits aligned with the order of
``data.x_train`` / ``data.x_val`` so that the trainer can index them by sample index. With a
``cache_dir`` the arrays are written as ``.npy`` files and later opened memory-mapped, keyed by
a hash of the teacher's state_dict and of the data (plus an augmentation seed where the caller
uses one), so a second run (or a resumed run) does not run the teacher again.

The cache heals itself: a stored entry is checked before it is used (meta.json readable, each
file's size, dtype, shape and checksum as recorded), and one that fails is discarded and rebuilt
with a one-line warning. Files are written to a temporary name and renamed into place, and a
write that fails (full disk, read-only or missing folder) leaves no temporary file behind and
keeps the outputs in memory for this run, with a warning, instead of stopping it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
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

__all__ = ["CACHE_VERSION", "CacheWarning", "TeacherCache", "data_fingerprint", "module_fingerprint"]

# bump when the layout or the meaning of the stored arrays changes: old entries are then
# ignored instead of misread
CACHE_VERSION = 2

# files up to this size are checked against their recorded checksum on every load (a few
# hundred MB of logits hash in well under a second); larger ones by size, dtype and shape only
_HASH_LIMIT = 1 << 30


class CacheWarning(UserWarning):
    """A stored teacher-cache entry was damaged and rebuilt, or could not be written."""


def _warn(text: str) -> None:
    warnings.warn(text.replace("\n", " "), CacheWarning, stacklevel=3)


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def _save_npy_atomic(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write ``array`` to ``path`` through a temporary file renamed into place (a concurrent or
    later reader never sees a half-written file; the temporary file is removed on any failure).

    Returns:
        What ``_load_npy`` checks the file against: size in bytes, dtype, shape, checksum.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
            f.flush()
            os.fsync(f.fileno())
        info = {
            "bytes": os.path.getsize(tmp),
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "blake2b": _file_digest(Path(tmp)),
        }
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return info


def _load_npy(path: Path, info: Any = None) -> torch.Tensor:
    """Memory-map a stored array, checked against ``info`` (from ``_save_npy_atomic``).

    Raises:
        ValueError: the file is missing, truncated, padded, or its dtype, shape or checksum
            differ from what was recorded.
    """
    if info is not None:
        if not isinstance(info, dict):
            raise ValueError(f"{path.name}: no file record")
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise ValueError(f"{path.name}: {size} bytes, expected {info.get('bytes')}")
        if size <= _HASH_LIMIT and _file_digest(path) != info.get("blake2b"):
            raise ValueError(f"{path.name}: checksum mismatch")
    # copy-on-write mapping: pages are read lazily, and the array is writable so torch does
    # not warn; writes (there are none) would never reach the file
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if info is not None and (str(array.dtype) != info.get("dtype") or list(array.shape) != info.get("shape")):
        want = f"{info.get('dtype')} {info.get('shape')}"
        raise ValueError(f"{path.name}: {array.dtype} {list(array.shape)}, expected {want}")
    return torch.from_numpy(array)


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
        stored_meta: dict[str, Any] | None = None
        if cache_dir is not None:
            assert entry_key is not None
            folder = Path(cache_dir) / f"teacher-{entry_key}"
            stored_meta = _read_meta(folder, entry_key)
            if stored_meta is not None:
                try:
                    stored = cls._load(folder, stored_meta, layers, feature_pool)
                    if stored is not None:
                        stored.check_aligned(data)
                        return stored
                except (ValueError, OSError, KeyError, TypeError) as exc:
                    _discard(folder, f"is damaged ({exc})")
                    stored_meta = None

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
        if folder is None:
            return cache
        try:
            cache._store(folder, stored_meta)
            stored = cls._load(folder, _read_meta(folder, entry_key) or {}, layers, feature_pool)
            if stored is None:
                raise ValueError("meta.json is missing after writing it")
            stored.check_aligned(data)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            # a full disk, a read-only folder or a file where the folder should be: this run
            # keeps the outputs in memory; nothing half-written is left for the next one
            _warn(f"teacher cache: cannot write {folder} ({_reason(exc)}); keeping the teacher's outputs in memory")
            if stored_meta is None:
                shutil.rmtree(folder, ignore_errors=True)
            return cache
        stored.meta["reused"] = False
        return stored

    def _store(self, folder: Path, stored_meta: dict[str, Any] | None) -> None:
        """Write the logits (unless ``stored_meta``, a checked entry, already holds them) and
        the feature maps, then meta.json, whose presence marks the entry as complete."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = stored_meta
        if meta is None:
            # an entry without a verified meta.json is rewritten whole
            (folder / "meta.json").unlink(missing_ok=True)
            meta = {
                "version": CACHE_VERSION,
                "key": self.key,
                "teacher_val_acc": self.teacher_val_acc,
                "teacher_train_acc": self.teacher_train_acc,
                "augment_seed": self.meta.get("augment_seed"),
                "data": self.meta.get("data"),
                "files": {
                    "train_logits.npy": _save_npy_atomic(folder / "train_logits.npy", self.train_logits.numpy()),
                    "val_logits.npy": _save_npy_atomic(folder / "val_logits.npy", self.val_logits.numpy()),
                },
                "features": {},
            }
        for layer, feat in self.train_features.items():
            fname = _feature_file(layer, self.feature_pool)
            meta["files"][fname] = _save_npy_atomic(folder / fname, feat.numpy())
            meta["features"][f"{layer}|{self.feature_pool}"] = fname
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".meta.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / "meta.json")
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any], layers: Sequence[str], pool: int | None) -> TeacherCache | None:
        """The stored entry checked file by file, or None when a requested feature map was
        never stored (the caller computes it and adds it to the entry).

        Raises:
            ValueError, KeyError, TypeError, OSError: the entry is damaged.
        """
        files = meta["files"]
        train_logits = _load_npy(folder / "train_logits.npy", files["train_logits.npy"])
        val_logits = _load_npy(folder / "val_logits.npy", files["val_logits.npy"])
        for name, t in (("train_logits", train_logits), ("val_logits", val_logits)):
            if t.dim() != 2 or t.dtype != torch.float32:
                raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected float32 (N, K)")
        feats: dict[str, torch.Tensor] = {}
        for layer in layers:
            fname = meta["features"].get(f"{layer}|{pool}")
            if fname is None:
                return None
            if not isinstance(fname, str) or Path(fname).name != fname or fname not in files:
                raise ValueError(f"bad feature file name {fname!r}")
            feats[layer] = _load_npy(folder / fname, files[fname])
        return cls(
            train_logits=train_logits,
            val_logits=val_logits,
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


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (text or type(exc).__name__).splitlines()[0]


def _discard(folder: Path, why: str) -> None:
    _warn(f"teacher cache entry {folder.name} {why}; discarding it and running the teacher again")
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists() and not folder.is_dir():
        folder.unlink(missing_ok=True)


def _read_meta(folder: Path, key: str) -> dict[str, Any] | None:
    """The entry's meta.json when it is present and well-formed; None when there is no entry
    (or one of an older layout). A damaged one is discarded, with a warning."""
    meta_path = folder / "meta.json"
    try:
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        _discard(folder, f"has an unreadable meta.json ({_reason(exc)})")
        return None
    if isinstance(meta, dict) and meta.get("version") != CACHE_VERSION and "version" in meta:
        shutil.rmtree(folder, ignore_errors=True)  # an older layout: silently replaced
        return None
    ok = (
        isinstance(meta, dict)
        and meta.get("key") == key
        and isinstance(meta.get("files"), dict)
        and isinstance(meta.get("features"), dict)
        and all(isinstance(meta["files"].get(n), dict) for n in ("train_logits.npy", "val_logits.npy"))
        and all(isinstance(meta.get(k), (int, float)) for k in ("teacher_val_acc", "teacher_train_acc"))
    )
    if not ok:
        _discard(folder, "has a meta.json that does not describe it")
        return None
    return meta


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
