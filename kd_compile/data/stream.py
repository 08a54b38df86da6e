"""ImageFolder trees and tar shards streamed from disk: ``StreamedData`` and its ``DataLoader``s.

The in-memory path (``load_data`` -> ``DataBundle``) decodes every image into one uint8 tensor;
a million 224-px images would need about 150 GB. A ``StreamedData`` holds only the file list
and the labels (a few bytes per image); images are decoded by PIL per sample inside
``torch.utils.data.DataLoader`` worker processes and prepared with torchvision ``transforms.v2``:

* evaluation: resize + centre crop with the teacher's ``Preprocessing`` (size, filter,
  crop_pct), exactly as ``files.load_folder`` prepares the in-memory copy;
* training: ``RandomResizedCrop`` + horizontal flip (``StreamAugment``; configurable, off-able),
  seeded per (sample index, epoch) by ``view_seed`` so a run is replayable and a teacher's
  outputs on a view can be cached (``distill.topk_cache``) and replayed exactly.

Batches are uint8 (B, C, H, W); normalising on the device (``StreamedData.normalize_batch``)
keeps host-to-device copies four times smaller. Unreadable images are skipped and counted when
the index is built (``open_stream``); more than ``MAX_BAD_FRACTION`` of them is a ``DataError``.
The splits are train/val/test: the tree's own ``train/``, ``val/`` and ``test/`` folders (test
carved from train when absent), or one tree split per class with the same seeded stratified
split (``bundle.stratified_split``, same fractions) as the in-memory loader.

Samples come from one of two sources, behind the same decode and transforms: image files under
``root`` (an ImageFolder), or image members of WebDataset-style tar shards read at recorded
byte offsets (``data.shards``: a directory of ``*.tar`` or a ``{000..009}`` pattern). Either
way a sample keeps a stable index, so the top-k cache and the per-view seeds work unchanged.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_compile.errors import DataError

from .bundle import stratified_split
from .files import IMAGE_EXTS, TEST_DIRS, VAL_DIRS
from .preprocess import INTERPOLATIONS, scaled_size
from .shards import count_shard_samples, index_shards, is_shard_spec

__all__ = [
    "DATA_MODES",
    "MAX_BAD_FRACTION",
    "STREAM_THRESHOLD_BYTES",
    "StreamAugment",
    "StreamedData",
    "decoded_bytes",
    "is_streamed",
    "open_stream",
    "split_size",
    "stream_spec",
    "view_seed",
    "wants_stream",
]

#: Values of ``--data-mode``.
DATA_MODES = ("auto", "memory", "stream")
#: ``--data-mode auto`` streams a folder whose decoded uint8 images would exceed this.
STREAM_THRESHOLD_BYTES = 1 << 30
#: Share of unreadable images above which a folder is refused (below: skipped and counted).
MAX_BAD_FRACTION = 0.01
#: Images whose statistics give the normalisation when the teacher records none.
STATS_SAMPLES = 512

_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-mixed 64-bit hash of an integer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def view_seed(seed: int, index: int, epoch: int) -> int:
    """The 63-bit seed of the augmented view of train sample ``index`` in ``epoch``.

    Pure arithmetic (no RNG state), so the main process, the loader's workers and the top-k
    cache all derive the same crop for the same (seed, sample, epoch).
    """
    return _mix64(_mix64(_mix64(int(seed)) ^ int(index)) ^ int(epoch)) >> 1


@dataclass(frozen=True)
class StreamAugment:
    """The streamed train recipe: ``RandomResizedCrop(scale, ratio)`` then a horizontal flip.

    Attributes:
        crop: apply the random resized crop (off: the evaluation resize + centre crop).
        scale: area range of the crop. (0.25, 1) rather than ImageNet's (0.08, 1): proxy
            trainings of a few epochs learn little from crops that small.
        ratio: aspect-ratio range of the crop.
        hflip: flip half the views horizontally.
    """

    crop: bool = True
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True

    @classmethod
    def parse(cls, text: str | None) -> StreamAugment:
        """``"crop+flip"`` (default), ``"crop"``, ``"flip"`` or ``"none"``."""
        t = (text or "crop+flip").strip().lower()
        parts = set(filter(None, t.split("+"))) - {"none"}
        if not parts <= {"crop", "flip"}:
            raise DataError(f"stream augmentation must be crop+flip, crop, flip or none, got {text!r}")
        return cls(crop="crop" in parts, hflip="flip" in parts)

    @property
    def active(self) -> bool:
        return self.crop or self.hflip


@dataclass
class StreamedData:
    """An ImageFolder read from disk per sample; offers what the pipeline reads of a ``DataBundle``.

    Attributes:
        name: the spec it was opened from (the folder path or the shard pattern).
        root: the folder (of the shards), resolved.
        files: per split (``train``/``val``/``test``) the image paths relative to ``root`` (for
            shards ``<shard name>/<key>``), as a compact bytes array (no per-path Python object,
            so forked workers share it); the samples' identity.
        labels: per split int64 class indices.
        num_classes, class_names: as in ``DataBundle``.
        mean, std: per-channel normalisation of ``x / 255``.
        input_shape: (C, H, W) the loader yields.
        interpolation, crop_pct: the teacher's resize filter and centre-crop fraction.
        augment: the train recipe.
        seed: base of every view seed.
        workers: ``DataLoader`` worker processes (0: load in the training process).
        skipped: unreadable images left out of the index (path list, for the report).
        meta: free-form (source, split, skipped count); travels in the data hint.
        knowledge: how a run provided the teacher's knowledge (top-k cache or online: size on
            disk, build time, speed-up), recorded for the report; not part of the hint.
        source: the shard reader (``shards.ShardSource``) when the samples are tar members;
            None for image files under ``root``.
    """

    name: str
    root: str
    files: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    augment: StreamAugment = field(default_factory=StreamAugment)
    seed: int = 0
    workers: int = 0
    skipped: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    knowledge: dict[str, Any] = field(default_factory=dict)
    source: Any = None

    streamed = True

    # --- what the rest of the pipeline reads of a DataBundle --------------------------------

    def size(self, split: str) -> int:
        """Number of images in ``split`` (``train``, ``val`` or ``test``; 0 when absent)."""
        return int(len(self.files.get(split, ())))

    @property
    def y_train(self) -> torch.Tensor:
        return torch.from_numpy(self.labels["train"])

    @property
    def y_val(self) -> torch.Tensor:
        return torch.from_numpy(self.labels["val"])

    @property
    def has_test(self) -> bool:
        """Whether there is a non-empty test split."""
        return self.size("test") > 0

    @property
    def y_test(self) -> torch.Tensor:
        return torch.from_numpy(self.labels.get("test", np.zeros(0, np.int64)))

    def hint(self) -> dict[str, Any]:
        """What a checkpoint stores so the same data can be found again without ``--data``."""
        return {"spec": self.name, "meta": dict(self.meta)}

    def replace(self, **kw: Any) -> StreamedData:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **kw)

    def normalize_batch(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on any device -> normalised float32 there."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    # --- loading -----------------------------------------------------------------------------

    def path(self, split: str, index: int) -> Path:
        return Path(self.root) / self.files[split][index].decode("utf-8")

    def image(self, split: str, index: int, mode: str) -> Any:
        """Sample ``index`` of ``split`` decoded as a PIL image in ``mode`` (``L`` or ``RGB``)."""
        if self.source is None:
            return _read(self.path(split, index), mode)
        return _read(io.BytesIO(self.source.read(split, index)), mode)

    def in_memory(self) -> Any:
        """Every split decoded once with the evaluation preparation, as an in-memory ``DataBundle``
        (``--data-mode memory`` or a small shard set under ``auto``)."""
        from .bundle import RawData, finish_bundle

        def stack(split: str) -> np.ndarray:
            ds = self.dataset(split)
            return np.stack([ds[(i, 0)][0].numpy() for i in range(self.size(split))])

        raw = RawData(
            self.name, stack("train"), self.labels["train"], stack("val"), self.labels["val"],
            list(self.class_names), {**self.meta, "mode": "memory"},
            x_test=stack("test") if self.has_test else None, y_test=self.labels.get("test"),
        )  # fmt: skip
        bundle = finish_bundle(raw, image_size=None, channels=None)
        return bundle.replace(mean=self.mean, std=self.std)

    def dataset(self, split: str, *, train: bool = False) -> StreamDataset:
        """The map-style dataset of ``split`` (train=True: augmented views, keyed by (index, seed))."""
        return StreamDataset(self, split, train=train and self.augment.active)

    def loader(
        self,
        split: str,
        *,
        batch_size: int,
        batches: Sequence[Sequence[Any]] | Iterator[Sequence[Any]] | None = None,
        train: bool = False,
        pin_memory: bool = False,
        workers: int | None = None,
    ) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over ``split`` yielding (uint8 images, labels, indices, view seeds).

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: evaluation batch size (in order, last batch kept) when ``batches`` is None.
            batches: an iterable of batches, each a list of ``(index, view_seed)`` (training).
            train: apply the train recipe seeded by each item's view seed.
            pin_memory: page-locked batches, for non-blocking copies to a GPU.
            workers: overrides ``self.workers``; forced to 0 inside a daemon process (which may
                not start children).
        """
        n_workers = self.workers if workers is None else workers
        if multiprocessing.current_process().daemon:
            n_workers = 0
        key = (split, batch_size, pin_memory, n_workers)
        if batches is None and key in self.__dict__.get("_eval_loaders", {}):
            return self.__dict__["_eval_loaders"][key]  # persistent workers: no restart per evaluation
        ds = self.dataset(split, train=train)
        kw: dict[str, Any] = {"num_workers": n_workers, "pin_memory": pin_memory, "collate_fn": _collate}
        if n_workers > 0:
            kw.update(persistent_workers=batches is None, prefetch_factor=4, worker_init_fn=_freeze_inherited)
        if batches is None:
            n = self.size(split)
            order = [[(i, 0) for i in range(s, min(n, s + batch_size))] for s in range(0, n, batch_size)]
            loader = torch.utils.data.DataLoader(ds, batch_sampler=_Batches(order), **kw)
            self.__dict__.setdefault("_eval_loaders", {})[key] = loader
            return loader
        return torch.utils.data.DataLoader(ds, batch_sampler=_Batches(batches), **kw)

    def __getstate__(self) -> dict[str, Any]:
        # live loaders (and their worker processes) stay with the process that started them
        return {k: v for k, v in self.__dict__.items() if k != "_eval_loaders"}


class _Batches:
    """A batch sampler over a prepared (possibly lazy) sequence of batches."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _freeze_inherited(_worker_id: int) -> None:
    """Worker start: move the objects inherited from the parent out of reach of the worker's GC.

    A full collection writes to the header of every tracked object, so each forked worker would
    privately copy every page of the parent's Python heap it shares (measured: about 80 MiB per
    worker, a few epochs in, on 2,000 PNGs); frozen objects are never visited, and their pages
    stay shared. The worker's own garbage is still collected.
    """
    gc.freeze()


def _collate(items: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, ...]:
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([it[1] for it in items], dtype=torch.int64)
    idx = torch.tensor([it[2] for it in items], dtype=torch.int64)
    seeds = torch.tensor([it[3] for it in items], dtype=torch.int64)
    return x, y, idx, seeds


def _pil_filter(interpolation: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[interpolation]


class StreamDataset(torch.utils.data.Dataset):
    """Decodes one image per item with PIL and applies the split's ``transforms.v2`` pipeline.

    Items are ``(index, view_seed)`` pairs; a train item seeds torch's RNG with its view seed
    right before the random transforms, so the same pair always gives the same crop and flip
    (in whichever worker it lands).
    """

    def __init__(self, data: StreamedData, split: str, *, train: bool) -> None:
        from torchvision.transforms import v2

        self.data, self.split, self.train = data, split, train
        c, h, w = data.input_shape
        self.mode = "L" if c == 1 else "RGB"
        filt = _pil_filter(data.interpolation)
        if train:
            aug = data.augment
            steps: list[Any] = []
            if aug.crop:
                steps.append(v2.RandomResizedCrop((h, w), scale=aug.scale, ratio=aug.ratio, interpolation=filt))
            else:
                steps += _eval_steps((h, w), data.crop_pct, filt)
            if aug.hflip:
                steps.append(v2.RandomHorizontalFlip())
            self.tf = v2.Compose([*steps, v2.PILToTensor()])
        else:
            self.tf = v2.Compose([*_eval_steps((h, w), data.crop_pct, filt), v2.PILToTensor()])

    def __len__(self) -> int:
        return self.data.size(self.split)

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, int, int, int]:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        img = self.data.image(self.split, index, self.mode)
        if self.train:
            # the CPU generator alone (torch.manual_seed also seeds CUDA and costs ~0.5 ms a call)
            torch.default_generator.manual_seed(seed)
        x = self.tf(img)
        return x, int(self.data.labels[self.split][index]), index, seed


def _eval_steps(size: tuple[int, int], crop_pct: float, filt: Any) -> list[Any]:
    """Resize (to ``size / crop_pct``, shorter side for a square target) + centre crop ``size``."""
    from torchvision.transforms import v2

    if crop_pct >= 1.0:
        return [v2.Resize(size, interpolation=filt, antialias=True)]
    if size[0] == size[1]:
        resize: Any = v2.Resize(math.floor(size[0] / crop_pct), interpolation=filt, antialias=True)
    else:
        resize = v2.Resize(scaled_size(size, size, crop_pct), interpolation=filt, antialias=True)
    return [resize, v2.CenterCrop(size)]


def _read(path: Path | io.BytesIO, mode: str) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert(mode)


# --------------------------------------------------------------------------------------------
# opening a folder
# --------------------------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(d: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, _, names in os.walk(d):
        out += [Path(dirpath) / n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
    return sorted(out)


def _layout(root: Path) -> tuple[dict[str, Path], list[str], str]:
    """The split folders of ``root`` ({'all': root} when it has none), the class names, the split note."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    val_dir = next((subdirs[v] for v in VAL_DIRS if v in subdirs), None)
    test_dir = next((subdirs[v] for v in TEST_DIRS if v in subdirs), None)
    if "train" in subdirs and val_dir is not None and _class_dirs(subdirs["train"]):
        sets = {"train": subdirs["train"], "val": val_dir}
        if test_dir is not None:
            sets["test"] = test_dir
        names = sorted({p.name for d in sets.values() for p in _class_dirs(d)})
        return sets, names, "folders " + "/".join(d.name for d in sets.values())
    return {"all": root}, [p.name for p in _class_dirs(root)], ""


def _split_all(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The in-memory loader's seeded stratified split, whatever parts it returns (train/val[/test])."""
    parts = stratified_split(labels, seed)
    return dict(zip(("train", "val", "test"), parts, strict=False))


@dataclass
class _Index:
    """A source's samples before the split: per part (``all`` or train/val/test) ids and labels."""

    root: Path
    names: list[str]
    split_note: str
    files: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    skipped: list[str]
    total: int
    source: Any = None


def _index_folder(root: Path, fence: Path | None) -> _Index:
    """List an ImageFolder's images and open each header once (no decoding); unreadable ones are
    listed in ``skipped``."""
    from PIL import Image

    sets, names, split_note = _layout(root)
    rroot = root.resolve()
    files: dict[str, list[bytes]] = {}
    labels: dict[str, list[int]] = {}
    skipped: list[str] = []
    total = 0
    for part, d in sets.items():
        files[part], labels[part] = [], []
        for c in _class_dirs(d):
            k = names.index(c.name)
            for f in _image_files(c):
                total += 1
                if fence is not None and not f.resolve().is_relative_to(fence):
                    raise DataError(f"image {f} resolves outside {fence}; refusing to read it")
                try:
                    with Image.open(f) as im:
                        im.verify()  # header and structure, without decoding the pixels
                except Exception:  # noqa: BLE001  (PIL raises many types for a corrupt file)
                    skipped.append(str(f))
                    continue
                files[part].append(str(f.resolve().relative_to(rroot)).encode("utf-8"))
                labels[part].append(k)
    return _Index(
        rroot, names, split_note,
        {p: np.array(v, dtype=np.bytes_) for p, v in files.items()},
        {p: np.asarray(v, dtype=np.int64) for p, v in labels.items()},
        skipped, total,
    )  # fmt: skip


def _index_shards(spec: str | Path, fence: Path | None) -> _Index:
    """Index tar shards (``shards.index_shards``): keys, labels and byte offsets per part."""
    sx = index_shards(str(spec), confine=fence)
    return _Index(sx.root, sx.class_names, sx.split_note, sx.keys, sx.labels, sx.skipped, sx.total, sx.source)


def decoded_bytes(root: str | Path, shape: tuple[int, int, int]) -> int:
    """What the in-memory loader would hold for ``root`` (a folder or shards) at ``shape``:
    images x C x H x W bytes (counting files or tar headers only, no decoding)."""
    if is_shard_spec(root):
        return count_shard_samples(str(root)) * int(np.prod(shape))
    sets, _, _ = _layout(Path(root))
    n = sum(len(_image_files(c)) for d in sets.values() for c in _class_dirs(d))
    return n * int(np.prod(shape))


def stream_spec(spec: str | None, hint: Any, hint_root: Path | None) -> tuple[str | None, Path | None]:
    """The folder a run would stream: ``--data``, else the path in a teacher's data hint
    (resolved against, and confined to, the checkpoint's folder ``hint_root``).

    Returns:
        (spec or None, the folder images must stay inside or None).
    """
    if spec is not None and str(spec).strip():
        return str(spec).strip(), None
    if not isinstance(hint, dict) or not isinstance(hint.get("spec"), str) or not hint["spec"].strip():
        return None, None
    from .load import DATASETS, _confined

    name = hint["spec"].strip()
    if name.partition(":")[0].strip().lower() in DATASETS:
        return name, None
    if hint_root is None:
        return name, None
    return _confined(name, Path(hint_root)), Path(hint_root)


def wants_stream(spec: str | None, mode: str, shape: tuple[int, int, int]) -> bool:
    """Whether ``--data-mode`` ``mode`` streams ``spec`` at the teacher's input ``shape``.

    ``memory`` never, ``stream`` for a folder or tar shards (anything else is refused), ``auto``
    for those when their decoded images would exceed ``STREAM_THRESHOLD_BYTES``.
    """
    if mode not in DATA_MODES:
        raise DataError(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {mode!r}")
    shards = is_shard_spec(spec)
    is_dir = shards or (bool(spec) and Path(str(spec)).expanduser().is_dir())
    if mode == "memory":
        return False
    if mode == "stream":
        if not is_dir:
            raise DataError(f"--data-mode stream reads ImageFolder directories or tar shards; {spec!r} is neither")
        return True
    target = str(spec) if shards else Path(str(spec)).expanduser()
    return is_dir and decoded_bytes(target, shape) > STREAM_THRESHOLD_BYTES


def open_stream(
    spec: str | Path,
    *,
    image_size: int | tuple[int, int],
    channels: int = 3,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    seed: int = 0,
    augment: StreamAugment | None = None,
    workers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    confine: Path | None = None,
) -> StreamedData:
    """Index an ImageFolder tree or tar shards for streaming (file list or byte offsets, labels,
    header checks; no pixels kept).

    Every image's header is opened once (``PIL.Image.open``, no decoding) to find unreadable
    images: they are skipped and counted, and a ``DataError`` is raised when more than
    ``MAX_BAD_FRACTION`` of the files are unreadable. The normalisation is the given
    ``mean``/``std`` or the statistics of ``STATS_SAMPLES`` evaluation-prepared train images.

    Args:
        spec: the folder (one subfolder per class, or ``train/``, ``val/`` [``test/``] of those),
            or WebDataset-style tar shards (a folder of ``*.tar`` or a brace/glob pattern;
            ``data.shards``).
        image_size: the side (or (H, W)) images are prepared at (the teacher's input).
        channels: 1 (luminance) or 3 (RGB).
        interpolation, crop_pct: the teacher's resize filter and centre-crop fraction.
        seed: seed of the stratified split (a tree without split folders) and of the views.
        augment: the train recipe (default ``StreamAugment()``).
        workers: loader processes (default: up to 8, one core left to the training).
        mean, std: normalisation; None computes the data's own.
        confine: refuse images that resolve outside this folder (a path read from a file).

    Raises:
        DataError: no such folder, no images, fewer than two classes, too many unreadable
            images, an empty split, a file outside ``confine``.
        UsageError: a shard that is not a readable uncompressed tar archive.
    """
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    fence = confine.resolve() if confine is not None else None
    ix = _index_shards(spec, fence) if is_shard_spec(spec) else _index_folder(Path(spec).expanduser(), fence)
    root, names, split_note, skipped, total = ix.root, ix.names, ix.split_note, ix.skipped, ix.total
    if ix.source is None and len(names) < 2:
        raise DataError(f"{Path(spec).expanduser()}: need at least 2 classes (subfolders), found {len(names)}")
    if total == 0:
        raise DataError(f"no images found in {spec} (expected one subfolder per class holding .png/.jpg/... files)")
    if len(names) < 2:
        raise DataError(f"{spec}: need at least 2 classes, found {len(names)}")
    if len(skipped) > MAX_BAD_FRACTION * total:
        raise DataError(
            f"{root}: {len(skipped)} of {total} images are unreadable (more than {MAX_BAD_FRACTION:.0%}), "
            f"e.g. {skipped[0]}"
        )
    arr, lab = ix.files, ix.labels
    loc = ix.source.loc if ix.source is not None else {}

    def carve(parts: dict[str, np.ndarray], src: str) -> None:
        """Replace ``src`` by the given index subsets of it, in every per-split array."""
        for d in (arr, lab, loc) if loc else (arr, lab):
            whole = d.pop(src)
            d.update({p: whole[i] for p, i in parts.items()})

    if "all" in arr:
        carve(_split_all(lab["all"], seed), "all")
        made = "/".join(p for p in ("train", "val", "test") if p in arr)
        split_note = f"stratified {made}, fixed test, val seed {seed}"
    elif "test" not in arr and len(arr["train"]):
        # train and val without test: the test split is carved from train, as in memory
        tr, _, te = stratified_split(lab["train"], seed, val_fraction=0.0)
        carve({"train": tr, "test": te}, "train")
        split_note += "; test: stratified 15% of train, fixed"
    elif "val" not in arr and len(arr["train"]):
        tr, va, _ = stratified_split(lab["train"], seed, test_fraction=0.0)
        carve({"train": tr, "val": va}, "train")
        split_note += f"; val: stratified 15% of train, seed {seed}"
    for part in ("train", "val"):
        if len(arr.get(part, ())) == 0:
            raise DataError(f"{root}: the {part} split is empty")
    if len(np.unique(lab["train"])) < 2:
        raise DataError(f"{root}: need at least 2 classes, found {len(np.unique(lab['train']))} in train")
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    shape = (int(channels), size[0], size[1])
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    data = StreamedData(
        name=str(spec),
        root=str(root),
        files=arr,
        labels=lab,
        num_classes=len(names),
        class_names=list(names),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        input_shape=shape,
        interpolation=interpolation,
        crop_pct=float(crop_pct),
        augment=augment if augment is not None else StreamAugment(),
        seed=int(seed),
        workers=int(workers),
        skipped=skipped,
        source=ix.source,
        meta={
            "source": "shards" if ix.source is not None else "folder",
            "path": str(root),
            "split": split_note,
            "mode": "stream",
            "skipped_images": len(skipped),
            **({"skipped_examples": [str(f) for f in skipped[:3]]} if skipped else {}),
            "input_shape": list(shape),
        },
    )
    if interpolation != "bilinear" or crop_pct < 1.0:
        data.meta["interpolation"], data.meta["crop_pct"] = interpolation, float(crop_pct)
    if mean is None or std is None:
        m, s = _stream_stats(data)
        mean = m if mean is None else mean
        std = s if std is None else std
    data.mean, data.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return data


def _stream_stats(data: StreamedData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of x/255 over up to ``STATS_SAMPLES`` evenly spaced train images."""
    n = data.size("train")
    picks = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLES)).astype(np.int64))
    ds = data.dataset("train", train=False)
    c = data.input_shape[0]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in picks.tolist():
        v = ds[(i, 0)][0].to(torch.float64) / 255.0
        s += v.sum((1, 2))
        s2 += (v * v).sum((1, 2))
        count += v.shape[1] * v.shape[2]
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(v), 6) for v in std)


def is_streamed(data: Any) -> bool:
    """Whether ``data`` is a ``StreamedData`` (else an in-memory ``DataBundle``)."""
    return bool(getattr(data, "streamed", False))


def split_size(data: Any, split: str) -> int:
    """Images in ``split`` of a ``DataBundle`` or a ``StreamedData`` (0 when it has none)."""
    if is_streamed(data):
        return int(data.size(split))
    x = getattr(data, f"x_{split}", None)
    return 0 if x is None else int(x.shape[0])
