"""Teacher knowledge for streamed data: an FKD-style top-k soft-label cache, or the online teacher.

A ``TeacherCache`` holds float32 logits for every in-memory sample; with a streamed ImageFolder
(``data.stream``) neither the images nor one logit row per class and sample fit that scheme, and
every epoch sees new random crops. ``TopKCache`` stores, per (train sample, augmented view), the
teacher's top-k logits in fp16, their class indices, the probability mass of the other classes
and the view's seed, in memory-mapped ``.npy`` files on disk (FKD, Shen & Xing, ECCV 2022). A
student trained from it replays exactly the cached crops (the loader re-derives each crop from
the stored seed), and ``soft_logits`` turns a row back into dense logits whose softmax puts the
cached probabilities on the top-k classes and spreads the remaining mass evenly over the others.

``OnlineTeacher`` is the alternative: the teacher runs on the device next to the student on
every batch. ``stream_knowledge`` picks one (the cache when the trainings' total epochs are
enough to pay for building it) and reports the choice, the cache's size on disk, its build time
and the estimated speed-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.stream import StreamedData, view_seed

__all__ = ["DEFAULT_TOPK", "MAX_VIEWS", "OnlineTeacher", "TopKCache", "stream_knowledge", "streamed_accuracy"]

#: Logits kept per (sample, view).
DEFAULT_TOPK = 10
#: Most views cached per sample; trainings with more epochs reuse them in turn (as FKD does).
MAX_VIEWS = 32
_FILES = ("seeds.npy", "index.npy", "values.npy", "rest.npy")


def _device_of(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def streamed_accuracy(
    model: nn.Module, data: StreamedData, split: str = "val", *, device: str | torch.device | None = None,
    batch_size: int = 256,
) -> float:  # fmt: skip
    """Top-1 accuracy of ``model`` on a streamed split (evaluation transforms, in order)."""
    if data.size(split) == 0:
        return float("nan")
    dev = _device_of(device)
    was = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for xb, yb, _, _ in data.loader(split, batch_size=batch_size, pin_memory=dev.type == "cuda"):
                x = data.normalize_batch(xb.to(dev, non_blocking=True))
                out = model(x.contiguous(memory_format=torch.channels_last))
                correct += int((out.argmax(1).cpu() == yb).sum())
    finally:
        model.train(was)
    return correct / data.size(split)


@dataclass
class OnlineTeacher:
    """The teacher itself, run on every training batch (no cache).

    Attributes:
        module: the teacher (in eval mode while it teaches).
        teacher_val_acc: its top-1 accuracy on the streamed val split.
        summary: what was decided and why (for the report).
    """

    module: nn.Module
    teacher_val_acc: float
    summary: dict[str, Any] = field(default_factory=dict)


class TopKCache:
    """Per (train sample, view): top-k teacher logits (fp16), their classes, the rest mass, the seed.

    Arrays (memory-mapped, read lazily): ``seeds`` int64 (N, V), ``index`` int16/int32 (N, V, k),
    ``values`` float16 (N, V, k), ``rest`` float32 (N, V). Row i is train sample i of the
    streamed data; view v is the crop of epoch v (epochs past V reuse view ``epoch % V``).
    Pickles as its folder (the workers of a search reopen the memory maps).
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self._open()

    def _open(self) -> None:
        self.seeds = np.load(self.folder / "seeds.npy", mmap_mode="r")
        self.index = np.load(self.folder / "index.npy", mmap_mode="r")
        self.values = np.load(self.folder / "values.npy", mmap_mode="r")
        self.rest = np.load(self.folder / "rest.npy", mmap_mode="r")

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self.meta = Path(state["folder"]), state["meta"]
        self._open()

    @property
    def views(self) -> int:
        return int(self.seeds.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def teacher_val_acc(self) -> float:
        return float(self.meta["teacher_val_acc"])

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.meta.get("summary", {}))

    def disk_bytes(self) -> int:
        return sum((self.folder / f).stat().st_size for f in _FILES)

    def view_seeds(self, index: np.ndarray, epoch: int) -> np.ndarray:
        """The stored seeds of ``index``'s views for ``epoch`` (int64)."""
        return np.asarray(self.seeds[np.asarray(index), epoch % self.views])

    def soft_logits(self, index: np.ndarray | torch.Tensor, epoch: int) -> torch.Tensor:
        """Dense float32 (B, K) logits whose softmax is the cached soft label of each view.

        The top-k classes get their cached logits; the other K - k classes share the rest mass
        evenly (their logit is ``log(rest / (K - k))`` on the top-k logits' log-softmax scale),
        so ``softmax(out / tau)`` is a renormalised, temperature-ready teacher distribution.
        """
        ix = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        v = epoch % self.views
        cls = torch.from_numpy(np.asarray(self.index[ix, v]).astype(np.int64))
        val = torch.from_numpy(np.asarray(self.values[ix, v]).astype(np.float32))
        rest = torch.from_numpy(np.asarray(self.rest[ix, v]).astype(np.float64))
        return dense_from_topk(cls, val, rest, self.num_classes)

    @staticmethod
    def key(teacher_fp: str, data: StreamedData, views: int, k: int) -> str:
        """Hex key of a cache: teacher weights, file list, labels, preprocessing, recipe, views, k."""
        h = hashlib.sha256()
        h.update(teacher_fp.encode())
        for part in ("train",):
            h.update(np.ascontiguousarray(data.files[part]).tobytes())
            h.update(np.ascontiguousarray(data.labels[part]).tobytes())
        rec = [data.root, list(data.input_shape), data.interpolation, data.crop_pct, list(data.mean), list(data.std),
               repr(data.augment), data.seed, views, k, 1]  # fmt: skip
        h.update(json.dumps(rec).encode())
        return h.hexdigest()[:24]

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        data: StreamedData,
        *,
        views: int,
        k: int = DEFAULT_TOPK,
        device: str | torch.device | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 256,
        teacher_fp: str | None = None,
    ) -> TopKCache:
        """Run the teacher over ``views`` augmented passes of the train split and store its top-k.

        Reuses a complete cache with the same key under ``cache_dir``. A build writes into a
        ``.partial`` folder beside it, renamed into place at the end, so nothing half-written is
        ever read as a cache; each view finished is flushed and recorded there
        (``progress.json``), so a build that was killed or failed goes on from the views it had
        finished (the teacher's passes over a large train split are hours). The ``.partial``
        folder is locked while a build writes to it; a second build of the same cache at the same
        time writes a private folder of its own (the first to finish is the one kept).

        Args:
            teacher: the teacher (any device; run on ``device`` in eval mode, then left there).
            data: the streamed data (its train split and train recipe).
            views: augmented views per sample (the most epochs of any training, capped).
            k: logits kept per view (min(k, K)).
            device: where the teacher runs.
            cache_dir: parent folder of the cache (default: a temporary folder).
            batch_size: teacher batch size.
            teacher_fp: a fingerprint of the teacher's weights (default: computed).
        """
        from .cache import module_fingerprint

        dev = _device_of(device)
        views = max(1, min(int(views), MAX_VIEWS))
        num_classes = int(data.num_classes)
        k = max(1, min(int(k), num_classes))
        fp = teacher_fp or module_fingerprint(teacher)
        if cache_dir is None:
            import tempfile

            cache_dir = Path(tempfile.mkdtemp(prefix="kd-topk-"))
        folder = Path(cache_dir) / f"topk-{cls.key(fp, data, views, k)}"
        done = cls._complete(folder)
        if done is not None:
            return done
        n = data.size("train")
        idx_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        shape = {"n": n, "views": views, "k": k, "index_dtype": np.dtype(idx_dtype).name}
        with _BuildFolder(folder, shape) as build:
            done = cls._complete(folder)  # finished by another build between the first look and the lock
            if done is not None:
                return done
            t0 = time.perf_counter()
            tmp = build.path
            mode = "r+" if build.finished else "w+"
            mm = np.lib.format.open_memmap
            seeds = mm(tmp / "seeds.npy", mode=mode, dtype=np.int64, shape=(n, views))
            index = mm(tmp / "index.npy", mode=mode, dtype=idx_dtype, shape=(n, views, k))
            values = mm(tmp / "values.npy", mode=mode, dtype=np.float16, shape=(n, views, k))
            rest = mm(tmp / "rest.npy", mode=mode, dtype=np.float32, shape=(n, views))
            was = teacher.training
            teacher.to(dev).eval()
            try:
                with torch.inference_mode():
                    for v in range(views):
                        if v in build.finished:
                            continue
                        order = [[(i, view_seed(data.seed, i, v)) for i in range(s, min(n, s + batch_size))]
                                 for s in range(0, n, batch_size)]  # fmt: skip
                        loader = data.loader("train", batch_size=batch_size, batches=order, train=True,
                                             pin_memory=dev.type == "cuda")  # fmt: skip
                        for xb, _, ib, sb in loader:
                            x = data.normalize_batch(xb.to(dev, non_blocking=True))
                            logits = teacher(x.contiguous(memory_format=torch.channels_last)).float()
                            top, cls_ix, mass = topk_of(logits, k)
                            rows = ib.numpy()
                            seeds[rows, v] = sb.numpy()
                            index[rows, v] = cls_ix.cpu().numpy().astype(idx_dtype)
                            values[rows, v] = top.cpu().numpy().astype(np.float16)
                            rest[rows, v] = mass.cpu().numpy().astype(np.float32)
                        for a in (seeds, index, values, rest):
                            a.flush()
                        build.view_done(v, time.perf_counter() - t0)
            finally:
                teacher.train(was)
            del seeds, index, values, rest
            meta = {"num_classes": num_classes, "k": k, "views": views, "n": n, "build_seconds": build.seconds,
                    "teacher_val_acc": float("nan")}  # fmt: skip
            if build.resumed_views:
                meta["resumed_views"] = build.resumed_views
            build.publish(meta)
        done = cls._complete(folder)
        assert done is not None, folder
        return done

    @classmethod
    def _complete(cls, folder: Path) -> TopKCache | None:
        """The complete cache in ``folder``, or None (none there; a damaged one is removed)."""
        if (folder / "meta.json").is_file():
            try:
                return cls(folder, json.loads((folder / "meta.json").read_text()))
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
        return None

    def set_meta(self, **kw: Any) -> None:
        """Record more about the cache (teacher accuracy, the decision) next to its arrays."""
        self.meta.update(kw)
        try:
            (self.folder / "meta.json").write_text(json.dumps(self.meta))
        except OSError:
            pass


class _BuildFolder:
    """Where a ``TopKCache`` is built: ``<folder>.partial``, locked (``flock``) while a build
    writes to it and holding ``progress.json`` (the arrays' shapes, the views finished, the
    seconds spent); a private ``<folder>.tmp<pid>`` when another build holds the lock."""

    ARRAYS = ("seeds.npy", "index.npy", "values.npy", "rest.npy")

    def __init__(self, folder: Path, shape: dict[str, Any]) -> None:
        self.folder, self.shape = folder, shape
        self.finished: set[int] = set()
        self.resumed_views, self.seconds, self._spent = 0, 0.0, 0.0
        self._lock: Any = None

    def __enter__(self) -> _BuildFolder:
        from ..locks import try_lock

        partial = self.folder.with_name(self.folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        fh = try_lock(partial / ".lock")  # not held by the DataLoader workers it forks
        if fh is None:  # another process is building it: build a private copy
            self.path = self.folder.with_name(self.folder.name + f".tmp{os.getpid()}")
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True)
            return self
        self._lock, self.path = fh, partial
        try:
            progress = json.loads((partial / "progress.json").read_text())
        except (OSError, ValueError):
            progress = None
        have = all((partial / a).is_file() for a in self.ARRAYS)
        if isinstance(progress, dict) and progress.get("shape") == self.shape and have:
            self.finished = {int(v) for v in progress.get("finished", [])}
            self._spent = self.seconds = float(progress.get("seconds", 0.0))
            self.resumed_views = len(self.finished)
        else:  # another build's leftovers (or none): start afresh, keeping the lock file
            for name in (*self.ARRAYS, "progress.json"):
                (partial / name).unlink(missing_ok=True)
        return self

    def view_done(self, view: int, seconds: float) -> None:
        """Record ``view`` as finished (its arrays flushed first by the caller)."""
        self.finished.add(view)
        self.seconds = self._spent + seconds
        rec = {"shape": self.shape, "finished": sorted(self.finished), "seconds": self.seconds}
        tmp = self.path / "progress.json.tmp"
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, self.path / "progress.json")

    def publish(self, meta: dict[str, Any]) -> None:
        """Write ``meta.json`` and rename the build folder into place (another process's build,
        finished first, is kept instead)."""
        (self.path / "meta.json").write_text(json.dumps(meta))
        for name in ("progress.json", ".lock"):
            (self.path / name).unlink(missing_ok=True)
        try:
            self.path.rename(self.folder)
        except OSError:  # another process built it first: use theirs
            shutil.rmtree(self.path, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        from ..locks import release

        if self._lock is not None:
            release(self._lock)  # closing drops the flock
        if self.path.name.endswith(f".tmp{os.getpid()}"):
            shutil.rmtree(self.path, ignore_errors=True)  # a private copy not published


def topk_of(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-k logits, their classes, the softmax mass of the other classes) of (B, K) logits."""
    top, cls_ix = logits.topk(k, dim=1)
    p_top = torch.softmax(logits.double(), dim=1).gather(1, cls_ix).sum(1)
    return top, cls_ix, (1.0 - p_top).clamp_min(0.0)


def dense_from_topk(cls_ix: torch.Tensor, top: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense (B, K) logits from top-k logits, their classes and the rest mass (see ``soft_logits``)."""
    b, k = top.shape
    top = top.double()
    lse_top = torch.logsumexp(top, dim=1)
    others = num_classes - k
    out = torch.empty(b, num_classes, dtype=torch.float64)
    if others > 0:
        # log-probabilities of the top-k classes on the full distribution: p_top_i = exp(l_i - LSE),
        # LSE = lse_top - log(1 - rest); each other class gets rest / (K - k)
        kept = (1.0 - rest).clamp_min(1e-12)
        logp_top = top - lse_top[:, None] + torch.log(kept)[:, None]
        logp_rest = torch.log(rest.clamp_min(1e-30) / others)
        out[:] = logp_rest[:, None]
        out.scatter_(1, cls_ix, logp_top)
    else:
        out.scatter_(1, cls_ix, top - lse_top[:, None])
    return out.float()


def stream_knowledge(
    teacher: nn.Module,
    data: StreamedData,
    *,
    epochs_per_training: list[float],
    device: str | torch.device | None = None,
    cache_dir: Path | None = None,
    mode: str = "auto",
    k: int = DEFAULT_TOPK,
    message: Any = None,
) -> TopKCache | OnlineTeacher:
    """Choose and prepare the teacher's knowledge for streamed trainings.

    Building the cache costs ``V`` teacher passes over the train split (V = the most epochs of
    any one training, capped at ``MAX_VIEWS``); the online teacher costs one teacher pass per
    epoch of every training (``sum(epochs_per_training)``). ``auto`` builds the cache when it
    saves at least a quarter of those passes.

    Args:
        teacher: the teacher module.
        data: the streamed data.
        epochs_per_training: the (data-fraction weighted) epochs of each training that uses KD.
        device: where the teacher runs.
        cache_dir: parent folder of the cache.
        mode: ``auto``, ``cache`` or ``online``.
        k: top-k logits kept.
        message: ``message(str)`` to say what was chosen (e.g. the run's reporter).

    Returns:
        A ``TopKCache`` or an ``OnlineTeacher``; either has ``teacher_val_acc`` and ``summary``.
    """
    online_passes = float(sum(epochs_per_training))
    views = max(1, min(MAX_VIEWS, math.ceil(max(epochs_per_training, default=1.0) - 1e-9)))
    use_cache = mode == "cache" or (mode == "auto" and views <= 0.75 * online_passes)
    t0 = time.perf_counter()
    acc = streamed_accuracy(teacher.to(_device_of(device)), data, "val", device=device)
    eval_s = time.perf_counter() - t0
    n_train, n_val = data.size("train"), max(1, data.size("val"))
    pass_s = eval_s * n_train / n_val  # a teacher pass over the train split, estimated
    summary: dict[str, Any] = {
        "choice": "cache" if use_cache else "online",
        "online_teacher_passes": round(online_passes, 2),
        "cache_views": views,
    }
    if not use_cache:
        summary["estimated_online_teacher_seconds"] = round(pass_s * online_passes, 1)
        if message is not None:
            message(f"teacher knowledge: online teacher ({online_passes:.1f} teacher passes; a cache of {views} "
                    "views would not pay)")  # fmt: skip
        return OnlineTeacher(teacher, acc, summary)
    cache = TopKCache.build(teacher, data, views=views, k=k, device=device, cache_dir=cache_dir)
    build_s = float(cache.meta["build_seconds"])
    online_s = build_s / views * online_passes
    summary.update(
        disk_bytes=cache.disk_bytes(),
        build_seconds=round(build_s, 2),
        estimated_online_teacher_seconds=round(online_s, 1),
        speedup=round(online_s / build_s, 2) if build_s > 0 else None,
        folder=str(cache.folder),
        k=cache.meta["k"],
    )
    cache.set_meta(teacher_val_acc=acc, summary=summary)
    if message is not None:
        message(
            f"teacher knowledge: top-{cache.meta['k']} cache of {views} views x {n_train:,} images, "
            f"{cache.disk_bytes() / 2**20:.1f} MiB on disk, built in {build_s:.1f}s; teacher time saved "
            f"{online_s / max(build_s, 1e-9):.1f}x vs online ({online_passes:.1f} passes)"
        )
    return cache
