"""Datasets as in-memory tensors: built-in ``digits`` and ``glyphs``, ``.npz`` and ImageFolder.

Every loader returns a ``DataBundle``: uint8 images (N, C, H, W), int64 labels (N,), a fixed
train/val split, class names and the normalisation (mean/std per channel) that models expect.
``bundle.train_tensors()`` / ``val_tensors()`` give normalised float32 tensors.

Entry point: ``load_data(spec, hint=..., image_size=..., channels=..., seed=...)``. Spec forms:

* ``"digits"`` / ``"digits:size=16,seed=0"``: scikit-learn's ``load_digits`` (1797 real 8x8
  scans, 10 classes), scaled to uint8, stratified 80/20 split, resized to 16x16 by default.
  Every small net scores ~99% on it, so it checks plumbing, not students.
* ``"glyphs"`` / ``"glyphs:size=24,train=20000,val=4000,seed=3"``: generated here. The 62
  characters 0-9, A-Z, a-z rendered with the 22 text fonts that ship inside matplotlib
  (DejaVu Sans/Serif/Sans Mono and STIXGeneral, each regular/bold/italic/bold-italic; Computer
  Modern cmr10, cmb10, cmti10, cmss10, cmtt10, cmmi10), with random scale, aspect, rotation,
  shear, offset, stroke weight, a cropped neighbouring character, polarity, background level and
  gradient, blur, noise and occlusion (a line or a blob). Glyphs are pre-rendered once per font
  with PIL at 64x64 (baseline kept, so case still shows in size and position), then every sample
  is a batched ``grid_sample`` at 2x resolution and a 2x average-pool; 24K images at 24 px
  take ~4 s of one CPU core. Results are cached as ``.npz`` under ``$KD_COMPILE_CACHE``
  (default ``~/.cache/kd_compile``), keyed by every option and ``GLYPHS_VERSION``.

  Defaults: 24x24 grayscale, 20,000 train / 4,000 val (balanced over the 62 classes). Why: the
  end-to-end example trains a teacher, ~10 short students and a final student on 2 CPU cores in
  a few minutes; 24 px keeps every character legible, and at 24 px the ~300K-parameter CNN of
  the benchmark costs ~21M multiply-adds per image (~1.3T per training epoch), so 20 px is the
  option to take when the teacher's time matters more. 20K/4K is enough for accuracies to separate students by more than
  their noise (a 4K val set gives about +-0.6 percentage-point standard error at 85%). The
  difficulty is tuned so that capacity matters (``benchmarks/glyphs_difficulty.py`` trains
  ~15K, ~50K and ~300K-parameter CNNs for 6 epochs of AdamW; measured with version 3: 15.7K
  params 76.7%, 50.9K params 87.8%, 295K params 91.5% val accuracy; the bundled example's
  358K teacher reaches 84.9% at 20 px with 12,000 train images). Version 3 halved the
  occlusions and softened rotation, shear and noise of version 2, on which the 358K teacher
  stopped at 75% and a distilled tenth of it stayed 10 points below. Some classes are genuinely
  confusable (0/O/o, 1/l/I, c/C, s/S, v/V, ...), which caps accuracy below 100%.
  ``classes=K`` keeps the first ``K`` characters (10: the digits), balanced over them.
* a path to an ``.npz``: arrays ``x``/``y`` or ``x_train``/``y_train``/``x_val``/``y_val``
  (optional ``class_names``); x as (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in
  [0, 1]. Without a val split a fixed, seeded, stratified 80/20 split is made.
* a directory in ImageFolder layout (one subfolder per class; or ``train/`` and ``val/`` each
  holding class subfolders). Images are read with PIL, resized to ``image_size`` (else to the
  first image's size) and kept grayscale when every image is.

``image_size``/``channels`` adapt any dataset to a teacher's input: bilinear
``torch.nn.functional.interpolate`` (antialiased when downscaling), 1->3 channels by repeat,
3->1 by ITU-R 601 luminance. With ``spec=None`` the ``hint`` a teacher checkpoint carries
(``DataBundle.hint()``) is loaded instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import string
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kd_compile.errors import DataError

__all__ = [
    "DATASETS",
    "GLYPHS_VERSION",
    "GLYPH_CHARS",
    "DataBundle",
    "builtin_datasets",
    "cache_dir",
    "load_data",
    "render_glyphs",
]

#: Built-in dataset names accepted by ``load_data``.
DATASETS: tuple[str, ...] = ("digits", "glyphs")

#: Bump when the glyph generator's output changes, so stale caches are not reused.
GLYPHS_VERSION = 3

#: The 62 glyph classes, in label order.
GLYPH_CHARS = string.digits + string.ascii_uppercase + string.ascii_lowercase

GLYPHS_DEFAULTS: dict[str, int] = {"size": 24, "train": 20000, "val": 4000, "seed": 0, "classes": 62}
DIGITS_DEFAULTS: dict[str, int] = {"size": 16, "seed": 0}

_IMAGE_EXTS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_VAL_DIRS = ("val", "valid", "validation", "test")
_VAL_FRACTION = 0.2


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
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_train), self.y_train

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_val), self.y_val

    def hint(self) -> dict[str, Any]:
        """What a teacher checkpoint stores so the same data can be loaded without --data."""
        return {"spec": self.name, "meta": dict(self.meta)}

    def replace(self, **kw: Any) -> DataBundle:
        return dataclasses.replace(self, **kw)


def builtin_datasets() -> list[str]:
    """Names of the built-in datasets, for help texts and error messages."""
    return list(DATASETS)


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$KD_COMPILE_CACHE`` or ``~/.cache/kd_compile``."""
    env = os.environ.get("KD_COMPILE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kd_compile"


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_data(
    spec: str | None,
    *,
    hint: dict[str, Any] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """Load a dataset into memory as a ``DataBundle``.

    Args:
        spec: ``"digits"``, ``"glyphs"``, ``"glyphs:size=24,train=20000,val=4000,seed=3"``, a
            path to an ``.npz`` file or an ImageFolder directory. ``None`` uses ``hint``.
        hint: ``DataBundle.hint()`` as stored in a teacher checkpoint
            (``{"spec": ..., "meta": {...}}``); its recorded input shape is re-applied unless
            ``image_size``/``channels`` say otherwise.
        image_size: resize images to (image_size, image_size); for ``glyphs`` (16-32 px) and
            ``digits`` it sets the generated resolution instead when the spec gives no size.
        channels: 1 or 3; converts by luminance (3->1) or repetition (1->3).
        seed: seed of generated data and of the train/val split where the data has none; a
            ``seed=`` option inside the spec wins.

    Returns:
        The bundle: ``x_train`` uint8 (N, C, H, W), ``y_train`` int64 (N,), same for val.

    Raises:
        DataError: one line naming the problem (missing path, corrupt file, empty data, fewer
            than two classes, non-integer labels, x/y length mismatch, unknown name, ...).
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if hint is None:
            raise DataError(
                "no data given: pass --data glyphs|digits|path.npz|folder "
                "(data-free distillation comes later)"
            )
        spec, image_size, channels = _from_hint(hint, image_size, channels)
    spec = str(spec).strip()

    name, _, opts = spec.partition(":")
    key = name.strip().lower()
    if key in DATASETS:
        options = _parse_options(key, opts)
        if key == "glyphs":
            raw = _load_glyphs(options, image_size=image_size, seed=seed)
        else:
            raw = _load_digits(options, image_size=image_size, seed=seed)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            raw = _load_folder(path, image_size=image_size, seed=seed)
        elif path.is_file():
            raw = _load_npz(path, seed=seed)
        elif _looks_like_path(spec):
            raise DataError(f"data path not found: {spec}")
        else:
            close = difflib.get_close_matches(key, DATASETS, n=2, cutoff=0.5)
            hint_txt = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise DataError(
                f"unknown dataset {spec!r}{hint_txt} (built-in: {', '.join(DATASETS)}; "
                "or a path to an .npz file or an image folder)"
            )
    return _finish(raw, image_size=image_size, channels=channels)


def _from_hint(
    hint: Any, image_size: int | None, channels: int | None
) -> tuple[str, int | None, int | None]:
    """Turn a teacher's data hint into (spec, image_size, channels)."""
    if not isinstance(hint, dict) or not isinstance(hint.get("spec"), str) or not hint["spec"]:
        raise DataError(
            "the teacher's data hint is malformed (expected {'spec': str, 'meta': dict}); "
            "pass --data glyphs|digits|path.npz|folder"
        )
    meta = hint.get("meta") or {}
    shape = meta.get("input_shape") if isinstance(meta, dict) else None
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        # The teacher was trained on data adapted to this shape: adapt again, same way.
        if channels is None and int(shape[0]) in (1, 3):
            channels = int(shape[0])
        if image_size is None and int(shape[1]) == int(shape[2]):
            image_size = int(shape[1])
    return hint["spec"], image_size, channels


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or "/" in spec
        or spec.startswith((".", "~"))
        or Path(spec).suffix.lower() in {".npz", ".npy"}
    )


def _parse_options(name: str, opts: str) -> dict[str, int]:
    """Parse ``"size=24,train=2000"`` against the defaults of built-in ``name``."""
    allowed = GLYPHS_DEFAULTS if name == "glyphs" else DIGITS_DEFAULTS
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        k, eq, v = part.partition("=")
        k = k.strip().lower()
        if not eq or k not in allowed:
            raise DataError(
                f"bad option {part!r} for {name}; allowed: "
                + ", ".join(f"{a}=<int>" for a in allowed)
            )
        try:
            out[k] = int(v.strip())
        except ValueError:
            raise DataError(f"option {k} of {name} must be an integer, got {v.strip()!r}") from None
    return out


# --------------------------------------------------------------------------------------------
# Common finishing: validation, shape adaptation, statistics
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What each loader returns before the common checks (numpy, uint8 NCHW, int64)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str] | None
    meta: dict[str, Any]


def _finish(raw: _Raw, *, image_size: int | None, channels: int | None) -> DataBundle:
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
    x_train, x_val = (_adapt(x, image_size, channels) for x in (x_train, x_val))
    mean, std = _channel_stats(x_train)
    meta = dict(raw.meta)
    meta["input_shape"] = [int(s) for s in x_train.shape[1:]]
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


def _adapt(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C', S, S): resize and channel conversion."""
    if channels is not None and x.shape[1] != channels:
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = _chunked(x, lambda c: (c.float() * w).sum(1, keepdim=True))
    if image_size is not None and tuple(x.shape[2:]) != (image_size, image_size):
        down = image_size < x.shape[2] or image_size < x.shape[3]
        x = _chunked(
            x,
            lambda c: F.interpolate(
                c.float(),
                size=(image_size, image_size),
                mode="bilinear",
                align_corners=False,
                antialias=down,
            ),
        )
    return x.contiguous()


def _chunked(x: torch.Tensor, fn: Any, chunk: int = 4096) -> torch.Tensor:
    """Apply a float op to uint8 x in chunks (bounded memory) and round back to uint8."""
    parts = [
        fn(x[i : i + chunk]).round_().clamp_(0, 255).to(torch.uint8)
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of x/255 over uint8 (N, C, H, W), in float64 chunks."""
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


def _stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded 80/20 split per class -> (train_idx, val_idx), each sorted.

    Classes with one sample stay in train; at least one sample goes to val.
    """
    rng = np.random.default_rng([seed, 7919])
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(len(idx) * _VAL_FRACTION) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    tr, va = np.concatenate(train), np.concatenate(val)
    if len(va) == 0 and len(tr) > 1:
        va, tr = tr[:1], tr[1:]
    return np.sort(tr), np.sort(va)


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def _load_npz(path: Path, *, seed: int) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read {path} as .npz: {msg}") from None
    keys = set(arrays)
    src = str(path)
    if {"x_train", "y_train", "x_val", "y_val"} <= keys:
        x_tr = _images_from_array(arrays["x_train"], f"{src} x_train")
        x_va = _images_from_array(arrays["x_val"], f"{src} x_val")
        y_tr = _labels_from_array(arrays["y_train"], len(x_tr), f"{src} x_train/y_train")
        y_va = _labels_from_array(arrays["y_val"], len(x_va), f"{src} x_val/y_val")
        split = "file"
    elif {"x", "y"} <= keys:
        x = _images_from_array(arrays["x"], src)
        y = _labels_from_array(arrays["y"], len(x), src)
        if len(x) == 0:
            raise DataError(f"dataset is empty: {src} has 0 images")
        tr, va = _stratified_split(y, seed)
        x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        split = f"stratified 80/20, seed {seed}"
    else:
        raise DataError(
            f"{src}: expected arrays x,y or x_train,y_train,x_val,y_val; "
            f"found {', '.join(sorted(keys)) or 'none'}"
        )
    if len(x_tr) == 0:
        raise DataError(f"dataset is empty: {src} has 0 training images")
    if x_tr.shape[1:] != x_va.shape[1:]:
        raise DataError(
            f"{src}: train images {x_tr.shape[1:]} and val images {x_va.shape[1:]} differ in shape"
        )
    names = None
    if "class_names" in arrays:
        names = [str(s) for s in np.asarray(arrays["class_names"]).reshape(-1)]
    return _Raw(
        src,
        x_tr,
        y_tr,
        x_va,
        y_va,
        names,
        {"source": "npz", "path": str(path.resolve()), "split": split},
    )


def _images_from_array(x: np.ndarray, where: str) -> np.ndarray:
    """Any supported image array -> uint8 (N, C, H, W)."""
    if x.ndim not in (3, 4):
        raise DataError(
            f"{where}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W); got shape {tuple(x.shape)}"
        )
    if len(x) == 0:
        raise DataError(f"dataset is empty: {where} has 0 images")
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] <= 4 and x.shape[1] > 4:  # channels-last
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] == 4:  # RGBA: drop alpha
        x = x[:, :3]
    elif x.shape[1] == 2:  # gray + alpha
        x = x[:, :1]
    if x.shape[1] not in (1, 3):
        raise DataError(f"{where}: cannot tell the channel axis of shape {tuple(x.shape)}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x.astype(np.uint8) * 255)
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if np.isnan(x).any() or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{where}: float images must be in [0, 1], got range "
                f"[{lo:g}, {hi:g}] (store uint8 0..255 or divide by 255)"
            )
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DataError(
                f"{where}: integer images must be in 0..255, got [{x.min()}, {x.max()}]"
            )
        return np.ascontiguousarray(x.astype(np.uint8))
    raise DataError(f"{where}: images have unsupported dtype {x.dtype}")


def _labels_from_array(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Labels -> int64 (N,), checking they are non-negative integers and match n images."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels must be a 1-D array of class indices, got shape {tuple(y.shape)}"
        )
    if len(y) != n:
        raise DataError(f"{where}: x has {n} images but y has {len(y)} labels")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.rint(y)):
        y = y.astype(np.int64)  # integral floats are common from numpy pipelines
    else:
        raise DataError(
            f"{where}: labels must be integers (class indices), got dtype {y.dtype}"
            + (" with non-integer values" if y.dtype.kind == "f" else "")
        )
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be integers >= 0, found {int(y.min())}")
    return y


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)


def _load_folder(root: Path, *, image_size: int | None, seed: int) -> _Raw:
    from PIL import Image  # lazy: PIL is only needed for folders

    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    val_dir = next((subdirs[v] for v in _VAL_DIRS if v in subdirs), None)
    pre_split = "train" in subdirs and val_dir is not None and bool(_class_dirs(subdirs["train"]))
    if pre_split:
        sets = {"train": subdirs["train"], "val": val_dir}
        names = sorted({p.name for d in sets.values() for p in _class_dirs(d)})
    else:
        sets = {"all": root}
        names = [p.name for p in _class_dirs(root)]
    files: dict[str, list[tuple[Path, int]]] = {}
    for part, d in sets.items():
        files[part] = [(f, names.index(c.name)) for c in _class_dirs(d) for f in _image_files(c)]
    if not any(files.values()):
        loose = "" if names else " and no class subfolders"
        raise DataError(
            f"no images found in {root}{loose} (expected one subfolder per class "
            "holding .png/.jpg/... files)"
        )
    if len(names) < 2:
        raise DataError(f"{root}: need at least 2 classes (subfolders), found {len(names)}")

    size: tuple[int, int] | None = (image_size, image_size) if image_size else None
    arrays: dict[str, list[np.ndarray]] = {}
    all_gray = True
    for part, items in files.items():
        arrays[part] = []
        for f, _ in items:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DataError(f"cannot read image {f}: {type(e).__name__}") from None
            if size is None:
                size = (im.height, im.width)
            if (im.height, im.width) != size:
                # PIL's resize widens its filter when shrinking, i.e. it antialiases.
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
            all_gray = all_gray and bool((a[0] == a[1]).all() and (a[1] == a[2]).all())
            arrays[part].append(a)
    stack = {
        p: (np.stack(v) if v else np.zeros((0, 3, *size), np.uint8))  # type: ignore[misc]
        for p, v in arrays.items()
    }
    if all_gray:
        stack = {p: np.ascontiguousarray(v[:, :1]) for p, v in stack.items()}
    labels = {p: np.array([c for _, c in items], dtype=np.int64) for p, items in files.items()}
    meta: dict[str, Any] = {"source": "folder", "path": str(root.resolve())}
    if pre_split:
        x_tr, y_tr, x_va, y_va = stack["train"], labels["train"], stack["val"], labels["val"]
        meta["split"] = f"folders train/{val_dir.name}"  # type: ignore[union-attr]
    else:
        tr, va = _stratified_split(labels["all"], seed)
        x, y = stack["all"], labels["all"]
        x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        meta["split"] = f"stratified 80/20, seed {seed}"
    return _Raw(str(root), x_tr, y_tr, x_va, y_va, names, meta)


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images float (1797, 8, 8) in 0..16, target int (1797,).

    Reads the CSV that ``sklearn.datasets.load_digits`` reads, without importing
    ``sklearn.datasets`` (seconds of imports on a busy machine); falls back to it.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            raw = np.loadtxt(csv, delimiter=",")
            return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _load_digits(options: dict[str, int], *, image_size: int | None, seed: int) -> _Raw:
    opts = {**DIGITS_DEFAULTS, "seed": seed}
    if image_size is not None and "size" not in options and 4 <= image_size <= 128:
        opts["size"] = image_size  # resample the 8x8 scans once, not twice
    opts.update(options)
    if not 4 <= opts["size"] <= 128:
        raise DataError(f"digits size must be in 4..128, got {opts['size']}")
    images, target = _digits_arrays()
    # Values are 0..16 ink counts; map to the full uint8 range.
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = target.astype(np.int64)
    tr, va = _stratified_split(y, opts["seed"])
    xt = _adapt(torch.from_numpy(x), opts["size"], None).numpy()
    name = f"digits:size={opts['size']},seed={opts['seed']}"
    meta = {
        "source": "sklearn.datasets.load_digits",
        **opts,
        "split": f"stratified 80/20, seed {opts['seed']}",
    }
    return _Raw(name, xt[tr], y[tr], xt[va], y[va], [str(i) for i in range(10)], meta)


# --------------------------------------------------------------------------------------------
# glyphs
# --------------------------------------------------------------------------------------------

#: Font files (under matplotlib's mpl-data/fonts/ttf) used for glyphs, in a fixed order.
GLYPH_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
)

_ATLAS = 64  # glyph canvas (px); a capital is _CAP px tall, baseline at _BASELINE
_CAP = 22
_BASELINE = 40

# Difficulty knobs (changing any of them changes the data: bump GLYPHS_VERSION).
_AUG: dict[str, float] = {
    "cap_frac": 0.50,  # capital height as a fraction of the output image, before scaling
    "scale": 0.10,  # +- relative size jitter (log)
    "aspect": 0.12,  # +- log aspect-ratio jitter
    "rotate_deg": 8.0,  # +- rotation
    "shear": 0.12,  # +- horizontal shear
    "offset": 0.1,  # +- translation, fraction of half the image
    "p_weight": 0.3,  # probability of a dilated (half) or eroded (half) stroke
    "p_neighbor": 0.2,  # probability of a cropped neighbouring character at the side
    "contrast_min": 0.5,  # minimum |foreground - background|
    "gradient": 0.3,  # max background gradient across the image
    "p_blur": 0.25,
    "noise_max": 0.06,  # max Gaussian noise std
    "p_line": 0.1,
    "p_blob": 0.08,
}

_atlas_cache: dict[int, tuple[torch.Tensor, np.ndarray]] = {}


def _font_dir() -> Path:
    import matplotlib  # lazy: only the glyph generator needs its fonts

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph_atlas() -> tuple[torch.Tensor, np.ndarray]:
    """Pre-render every (font, char) once, in three stroke weights.

    Returns:
        atlas: float32 (3, F, 62, A, A) coverage in [0, 1], capitals _CAP px tall, baseline at
            row _BASELINE, horizontally centred; index 0 as drawn, 1 dilated, 2 eroded by a
            3x3 max/min filter (varies stroke weight at no per-sample cost).
        ok: bool (F, 62), False where a font lacks the character.
    """
    if 0 in _atlas_cache:
        return _atlas_cache[0]
    from PIL import Image, ImageDraw, ImageFont

    fdir = _font_dir()
    missing = [f for f in GLYPH_FONTS if not (fdir / f).is_file()]
    if missing:
        raise DataError(
            f"matplotlib's fonts are missing ({', '.join(missing)} in {fdir}); "
            "cannot generate glyphs"
        )
    atlas = np.zeros((len(GLYPH_FONTS), len(GLYPH_CHARS), _ATLAS, _ATLAS), np.float32)
    ok = np.zeros((len(GLYPH_FONTS), len(GLYPH_CHARS)), bool)
    for i, fname in enumerate(GLYPH_FONTS):
        probe = ImageFont.truetype(str(fdir / fname), 40)
        cap = -probe.getbbox("H", anchor="ls")[1]
        font = ImageFont.truetype(str(fdir / fname), 40.0 * _CAP / cap)
        notdef = np.asarray(font.getmask("\uffff"))
        for j, ch in enumerate(GLYPH_CHARS):
            m = font.getmask(ch)
            a = np.asarray(m)
            if m.getbbox() is None or (a.shape == notdef.shape and (a == notdef).all()):
                continue
            im = Image.new("L", (_ATLAS, _ATLAS), 0)
            ImageDraw.Draw(im).text((_ATLAS / 2, _BASELINE), ch, font=font, fill=255, anchor="ms")
            atlas[i, j] = np.asarray(im, np.float32) / 255.0
            ok[i, j] = True
    a = torch.from_numpy(atlas).view(-1, 1, _ATLAS, _ATLAS)
    weights = torch.stack([a, _max3x3(a), -_max3x3(-a)]).view(3, *atlas.shape)
    _atlas_cache[0] = (weights.contiguous(), ok)
    return _atlas_cache[0]


def render_glyphs(
    n: int, *, size: int = 24, seed: int = 0, classes: int = 62
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` random glyph images (no cache; ``load_data("glyphs")`` caches).

    Labels are balanced (each of the ``classes`` classes ``n // classes`` or
    ``n // classes + 1`` times) and shuffled. Deterministic for a given (n, size, seed,
    classes, GLYPHS_VERSION).

    Args:
        n: number of images.
        size: output resolution, 16..32 px.
        seed: random seed.
        classes: use the first ``classes`` characters of ``GLYPH_CHARS`` (10: the digits);
            occluding neighbour characters still come from all 62.

    Returns:
        x: uint8 (n, 1, size, size); y: int64 (n,) indices into ``GLYPH_CHARS``.
    """
    if not 16 <= size <= 32:
        raise DataError(f"glyphs size must be in 16..32 px, got {size}")
    if n < 1:
        raise DataError(f"glyphs needs at least 1 image, got {n}")
    if not 2 <= classes <= len(GLYPH_CHARS):
        raise DataError(f"glyphs classes must be in 2..{len(GLYPH_CHARS)}, got {classes}")
    atlas, ok = _glyph_atlas()
    rng = np.random.default_rng(seed)
    a = _AUG
    k = int(classes)
    y = rng.permutation(np.arange(n) % k).astype(np.int64)
    # A font for each sample among those that have its character.
    font = np.empty(n, np.int64)
    for c in range(k):
        sel = np.flatnonzero(y == c)
        font[sel] = rng.choice(np.flatnonzero(ok[:, c]), size=len(sel))

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    scale = np.exp(u(-a["scale"], a["scale"]))
    aspect = np.exp(u(-a["aspect"], a["aspect"]))
    rot = np.deg2rad(u(-a["rotate_deg"], a["rotate_deg"]))
    shear = u(-a["shear"], a["shear"])
    off = rng.uniform(-a["offset"], a["offset"], (n, 2))
    weight = rng.choice(3, n, p=[1 - a["p_weight"], a["p_weight"] / 2, a["p_weight"] / 2])
    has_nb = rng.random(n) < a["p_neighbor"]
    nb_char = rng.integers(0, len(GLYPH_CHARS), n)
    nb_side = rng.choice([-1.0, 1.0], n)
    nb_dist = u(1.15, 1.5)
    contrast = u(a["contrast_min"], 1.0)
    polarity = rng.choice([-1.0, 1.0], n)
    base = rng.random(n) * (1.0 - contrast)  # the darker of the two levels
    grad = u(0.0, a["gradient"])
    grad_dir = u(0.0, 2 * np.pi)
    blur = np.where(rng.random(n) < a["p_blur"], u(0.3, 1.0), 0.0)
    noise = u(0.0, a["noise_max"])
    has_line = rng.random(n) < a["p_line"]
    line = np.stack(
        [u(-0.6, 0.6), u(-0.6, 0.6), u(0, np.pi), u(0.04, 0.09), u(0.6, 2.0), rng.random(n)], 1
    )
    has_blob = rng.random(n) < a["p_blob"]
    blob = np.stack([u(-0.9, 0.9), u(-0.9, 0.9), u(0.1, 0.22), u(0.1, 0.22), rng.random(n)], 1)
    noise_seed = int(rng.integers(0, 2**31 - 1))

    # Output->atlas affine (normalised coords): the inverse of the glyph's placement.
    zoom = (_CAP / _ATLAS) / (a["cap_frac"] * scale)  # atlas units per output unit
    c, s = np.cos(rot), np.sin(rot)
    m = np.zeros((n, 2, 2))
    m[:, 0, 0] = c * aspect
    m[:, 0, 1] = (c * shear - s) / aspect
    m[:, 1, 0] = s * aspect
    m[:, 1, 1] = (s * shear + c) / aspect
    m *= zoom[:, None, None]
    theta = np.concatenate([m, -(m @ off[:, :, None])], 2)  # (n, 2, 3)
    theta_nb = theta.copy()
    theta_nb[:, :, 2] += m[:, :, 0] * (nb_side * nb_dist)[:, None]

    out = np.empty((n, 1, size, size), np.uint8)
    hi = 2 * size  # render at 2x, then average-pool: antialiasing for free
    gen = torch.Generator().manual_seed(noise_seed)
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")  # (S, S) output pixel centres in [-1, 1]
    lin2 = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi * 2 - 1
    hy, hx = torch.meshgrid(lin2, lin2, indexing="ij")  # (2S, 2S)
    homog = torch.stack([hx, hy, torch.ones_like(hx)], -1).view(1, hi * hi, 3)
    px = 2.0 / size  # one output pixel in normalised units
    for lo in range(0, n, 2048):
        sl = slice(lo, min(n, lo + 2048))
        b = sl.stop - sl.start

        def t(v: np.ndarray, sl: slice = sl) -> torch.Tensor:
            return torch.as_tensor(v[sl], dtype=torch.float32)

        src = atlas[weight[sl], font[sl], y[sl]].unsqueeze(1)  # (b, 1, A, A)
        mask = F.grid_sample(src, _grid(t(theta), homog, hi), align_corners=False)
        nb = np.flatnonzero(has_nb[sl])  # only samples with a neighbour pay for it
        if len(nb):
            nb_src = atlas[weight[sl][nb], font[sl][nb], nb_char[sl][nb]].unsqueeze(1)
            nb_mask = F.grid_sample(nb_src, _grid(t(theta_nb)[nb], homog, hi), align_corners=False)
            mask[nb] = torch.maximum(mask[nb], nb_mask)
        mask = F.avg_pool2d(mask, 2).clamp_(0, 1)  # (b, 1, S, S)

        lo_lv, amp = t(base).view(b, 1, 1), t(contrast).view(b, 1, 1)
        pol = t(polarity).view(b, 1, 1)
        bg = torch.where(pol > 0, lo_lv, lo_lv + amp)
        g = (
            t(grad).view(b, 1, 1)
            * (
                torch.cos(t(grad_dir)).view(b, 1, 1) * gx
                + torch.sin(t(grad_dir)).view(b, 1, 1) * gy
            )
            / 2
        )
        img = bg + g + pol * amp * mask[:, 0]

        # Occluding line segment: soft distance to the segment, about one pixel of edge.
        ln = t(line)
        dx, dy = gx - ln[:, 0, None, None], gy - ln[:, 1, None, None]
        ca, sa = torch.cos(ln[:, 2]).view(b, 1, 1), torch.sin(ln[:, 2]).view(b, 1, 1)
        along, across = dx * ca + dy * sa, -dx * sa + dy * ca
        dist = torch.maximum(
            across.abs() - ln[:, 3, None, None], along.abs() - ln[:, 4, None, None] / 2
        )
        cover = (0.5 - dist / px).clamp(0, 1) * t(has_line).view(b, 1, 1)
        img = img * (1 - cover) + ln[:, 5, None, None] * cover
        bl = t(blob)
        r = ((gx - bl[:, 0, None, None]) / bl[:, 2, None, None]) ** 2 + (
            (gy - bl[:, 1, None, None]) / bl[:, 3, None, None]
        ) ** 2
        cover = (0.5 - (r.sqrt() - 1) * bl[:, 2, None, None] / px).clamp(0, 1)
        cover = cover * t(has_blob).view(b, 1, 1)
        img = img * (1 - cover) + bl[:, 4, None, None] * cover

        sel = np.flatnonzero(blur[sl] > 0)
        if len(sel):
            bw = t(blur)[sel].view(-1, 1, 1)
            img[sel] = img[sel] * (1 - bw) + _blur121(img[sel]) * bw
        img = img + t(noise).view(b, 1, 1) * torch.randn(img.shape, generator=gen)
        out[sl, 0] = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out, y


def _grid(theta: torch.Tensor, base: torch.Tensor, hi: int) -> torch.Tensor:
    """Sampling grid (b, hi, hi, 2) for ``grid_sample`` from affine theta (b, 2, 3).

    ``base`` is (1, hi*hi, 3) homogeneous pixel centres. Equals
    ``F.affine_grid(theta, [b, 1, hi, hi], align_corners=False)`` but one broadcast matmul is
    about twice as fast on CPU.
    """
    return torch.matmul(base, theta.transpose(1, 2)).view(-1, hi, hi, 2)


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (b, 1, H, W) with edge replication, as two separable passes.

    ``F.max_pool2d(x, 3, 1, 1)`` is an order of magnitude slower on CPU for this shape.
    """
    p = F.pad(x, (1, 1, 0, 0), mode="replicate")
    x = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    p = F.pad(x, (0, 0, 1, 1), mode="replicate")
    return torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])


def _blur121(x: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1]/4 blur of (b, H, W) with edge replication."""
    p = F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate")[:, 0]
    h = (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4
    return (h[:, :-2] + 2 * h[:, 1:-1] + h[:, 2:]) / 4


def _glyph_cache_path(opts: dict[str, int]) -> Path:
    # the default class count stays out of the key, so caches made before the option still hit
    kopts = {k: v for k, v in opts.items() if not (k == "classes" and v == len(GLYPH_CHARS))}
    key = json.dumps({"v": GLYPHS_VERSION, "fonts": GLYPH_FONTS, **kopts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / (
        f"glyphs-v{GLYPHS_VERSION}-s{opts['size']}-n{opts['train']}-{opts['val']}"
        f"-seed{opts['seed']}-{digest}.npz"
    )


def _load_glyphs(options: dict[str, int], *, image_size: int | None, seed: int) -> _Raw:
    opts = {**GLYPHS_DEFAULTS, "seed": seed}
    if image_size is not None and "size" not in options and 16 <= image_size <= 32:
        opts["size"] = image_size  # render natively rather than resample afterwards
    opts.update(options)
    if not 16 <= opts["size"] <= 32:
        raise DataError(f"glyphs size must be in 16..32 px, got {opts['size']}")
    for k in ("train", "val"):
        if opts[k] < 1:
            raise DataError(f"glyphs {k} must be >= 1, got {opts[k]}")
    path = _glyph_cache_path(opts)
    hit = False
    arrays: dict[str, np.ndarray] | None = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_val", "y_val")}
            hit = True
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
            arrays = None  # a corrupt cache entry is regenerated and overwritten
    if arrays is None:
        # Independent streams: the val set does not change with the train count.
        ss = np.random.SeedSequence(opts["seed"])
        s_tr, s_va = (int(c.generate_state(1)[0]) for c in ss.spawn(2))
        kw = {"size": opts["size"], "classes": opts["classes"]}
        x_tr, y_tr = render_glyphs(opts["train"], seed=s_tr, **kw)
        x_va, y_va = render_glyphs(opts["val"], seed=s_va, **kw)
        arrays = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
        _write_cache(path, arrays)
    name = "glyphs:" + ",".join(f"{k}={opts[k]}" for k in ("size", "train", "val", "seed"))
    if opts["classes"] != len(GLYPH_CHARS):
        name += f",classes={opts['classes']}"
    meta = {
        "source": "kd_compile glyphs generator",
        "version": GLYPHS_VERSION,
        **opts,
        "cache": str(path),
        "cache_hit": hit,
    }
    return _Raw(
        name,
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_val"],
        arrays["y_val"],
        list(GLYPH_CHARS[: opts["classes"]]),
        meta,
    )


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename); an unwritable cache only costs regeneration."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
