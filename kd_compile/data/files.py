"""Datasets from files: ``.npz`` arrays (with their validation) and ImageFolder trees.

Both loaders return a ``RawData`` for ``finish_bundle``: uint8 (N, C, H, W) images and int64
labels, split into train/val/test as the source says or by ``stratified_split`` (70/15/15; a
source that brings val but no test gets its test carved from train, fixed whatever the seed). A folder's images are
resized (and centre-cropped) with PIL as they are read, with the teacher's filter. The image
shape of either source can also be read from headers alone (``npz_image_shape``,
``folder_image_shape``).
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from kd_compile.errors import DataError

from .bundle import TEST_FRACTION, VAL_FRACTION, RawData, stratified_split
from .preprocess import center_crop_box, scaled_size

__all__ = [
    "IMAGE_EXTS",
    "TEST_DIRS",
    "VAL_DIRS",
    "folder_image_shape",
    "load_folder",
    "load_npz",
    "npz_image_shape",
]

#: File suffixes (lower case) read as images in an ImageFolder tree.
IMAGE_EXTS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
#: Subfolder names (lower case, in order of preference) taken as the val split next to ``train/``.
VAL_DIRS = ("val", "valid", "validation")
#: Subfolder names (lower case, in order of preference) taken as the held-out test split.
TEST_DIRS = ("test", "testing")
#: Most bytes an ``.npz`` may expand to in memory (also capped by the memory available):
#: checked from the zip directory and the array headers before anything is decompressed.
MAX_NPZ_BYTES = 4 << 30
#: Largest class index a label may hold (ImageNet-21k has 21,841 classes): a label of 2**40
#: would otherwise make 10**12 class names.
MAX_CLASSES = 100_000
#: Share of an ImageFolder's images that may be unreadable (skipped and counted); above it the
#: folder is refused. Decompression bombs count as unreadable.
MAX_BAD_FRACTION = 0.01


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def load_npz(path: Path, *, seed: int) -> RawData:
    """Read an ``.npz`` with arrays ``x``/``y`` or ``x_train``/``y_train``/``x_val``/``y_val``.

    Optional ``x_test``/``y_test`` are the held-out test split. Without them the test split is
    carved from the data (``stratified_split``, 15% per class, fixed whatever the seed): from
    ``x``/``y`` (70/15/15) or from ``x_train`` (the file's val kept as it is).

    Args:
        path: the file.
        seed: seed of the train/val part of the split where the file brings no val.

    Returns:
        The arrays as ``RawData`` (``class_names`` from an optional ``class_names`` array).

    Raises:
        DataError: unreadable file, missing arrays, bad image or label arrays, empty data,
            train, val and test images of different shapes.
    """
    try:
        _check_npz(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read {path} as .npz: {msg}") from None
    keys = set(arrays)
    src = str(path)
    x_te = y_te = None
    if {"x_test", "y_test"} <= keys:
        x_te = _images_from_array(arrays["x_test"], f"{src} x_test")
        y_te = _labels_from_array(arrays["y_test"], len(x_te), f"{src} x_test/y_test")
    if {"x_train", "y_train", "x_val", "y_val"} <= keys:
        x_tr = _images_from_array(arrays["x_train"], f"{src} x_train")
        x_va = _images_from_array(arrays["x_val"], f"{src} x_val")
        y_tr = _labels_from_array(arrays["y_train"], len(x_tr), f"{src} x_train/y_train")
        y_va = _labels_from_array(arrays["y_val"], len(x_va), f"{src} x_val/y_val")
        split = "file"
        if x_te is None:
            tr, _, te = stratified_split(y_tr, seed, val_fraction=0.0)
            x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
            split = "file train/val; test: stratified 15% of train, fixed"
    elif {"x", "y"} <= keys:
        x = _images_from_array(arrays["x"], src)
        y = _labels_from_array(arrays["y"], len(x), src)
        if len(x) == 0:
            raise DataError(f"dataset is empty: {src} has 0 images")
        tr, va, te = stratified_split(y, seed, test_fraction=0.0 if x_te is not None else TEST_FRACTION)
        x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        split = f"stratified, val seed {seed}; test: file"
        if x_te is None:
            x_te, y_te = x[te], y[te]
            split = f"stratified 70/15/15, fixed test, val seed {seed}"
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
    if x_te is not None and x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"{src}: train images {x_tr.shape[1:]} and test images {x_te.shape[1:]} differ in shape"
        )
    names = None
    if "class_names" in arrays:
        names = [str(s) for s in np.asarray(arrays["class_names"]).reshape(-1)]
    return RawData(
        src,
        x_tr,
        y_tr,
        x_va,
        y_va,
        names,
        {"source": "npz", "path": str(path.resolve()), "split": split},
        x_test=x_te,
        y_test=y_te,
    )


def _available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return MAX_NPZ_BYTES


def _check_npz(path: Path) -> None:
    """Refuse an ``.npz`` that is not a zip, or whose arrays would not fit in memory, before
    anything is decompressed: the zip directory's declared sizes and each ``.npy`` header's
    shape x itemsize are checked (a few KB read, whatever the file's size).

    Raises:
        DataError: not a zip archive, a member that is not a plain ``.npy`` array, or arrays
            larger than ``MAX_NPZ_BYTES`` or than the memory available.
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"cannot read {path} as .npz: not a zip archive (an .npz is written by numpy.savez)")
    limit = min(MAX_NPZ_BYTES, _available_memory())
    total = 0
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > 64:
            raise DataError(f"{path}: {len(infos)} members; an .npz dataset holds a few arrays")
        for info in infos:
            declared = info.file_size
            if info.filename.endswith(".npy"):
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0), (3, 0)):
                        raise DataError(f"{path}: {info.filename} has an unknown .npy version {version}")
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=1 << 16)
                if dtype.hasobject:
                    raise DataError(f"{path}: {info.filename} holds Python objects (pickled); refusing to read it")
                n = 1
                for d in shape:
                    n *= int(d)
                declared = max(declared, n * dtype.itemsize)
            total += declared
            if total > limit:
                raise DataError(
                    f"{path}: its arrays expand to more than {limit / 2**30:.1f} GiB "
                    f"({info.filename}: {declared / 2**30:.1f} GiB); refusing to load it into memory",
                    hint="use an ImageFolder tree (streamed) or a smaller file",
                )


def _images_from_array(x: np.ndarray, where: str) -> np.ndarray:
    """Any supported image array -> uint8 (N, C, H, W).

    Args:
        x: (N, H, W), (N, H, W, C) or (N, C, H, W); uint8, bool, integers in 0..255 or floats
            in [0, 1]. An alpha channel is dropped.
        where: what to name in error messages.

    Raises:
        DataError: a shape, channel count, dtype or value range it cannot read.
    """
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
        nan = int(np.isnan(x).sum())
        if nan:
            raise DataError(f"{where}: {nan} pixel value{'s are' if nan > 1 else ' is'} NaN (float images must be "
                            "finite, in [0, 1])")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
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
    """Labels -> int64 (N,), checking they are non-negative integers and match n images.

    Args:
        y: (N,) or (N, 1) class indices; integral floats are accepted.
        n: number of images they label.
        where: what to name in error messages.

    Raises:
        DataError: wrong shape or length, non-integer or negative labels.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels must be a 1-D array of class indices, got shape {tuple(y.shape)}"
        )
    if len(y) != n:
        raise DataError(f"{where}: x has {n} images but y has {len(y)} labels")
    if len(y) and (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        # checked before the cast: 2**63 or 1e300 would wrap or saturate in int64
        top = y.max() if np.issubdtype(y.dtype, np.integer) else np.nanmax(y)
        if top >= MAX_CLASSES:
            raise DataError(f"{where}: label {top} is out of range (class indices are 0..{MAX_CLASSES - 1})")
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
    """Visible subfolders of ``root``, sorted by name (the class order)."""
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(d: Path) -> list[Path]:
    """Image files anywhere under ``d``, sorted by path."""
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def load_folder(
    root: Path,
    *,
    image_size: int | tuple[int, int] | None,
    seed: int,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    confine: Path | None = None,
) -> RawData:
    """Read an ImageFolder tree: one subfolder per class, or ``train/`` with ``val/`` and/or ``test/``.

    ``val/`` (also ``valid``, ``validation``) and ``test/`` (also ``testing``) are separate splits:
    test is held out from every choice. A missing one is carved from ``train/`` (or, with
    neither, from the whole tree) by ``stratified_split``: 70/15/15 per class, the test part
    fixed whatever the seed.

    Images are converted to RGB, resized to ``image_size`` (else to the first image's size) and
    kept single-channel when every one of them is gray.

    Args:
        root: the folder.
        image_size: side (or (H, W)) to resize to while reading; ``None`` takes the first
            image's size.
        seed: seed of the train/val part of the split when the tree has no ``val`` folder.
        interpolation: PIL resize filter: ``bilinear``, ``bicubic`` or ``nearest``.
        crop_pct: below 1, resize to ``image_size / crop_pct`` and centre-crop ``image_size``
            (``preprocess.scaled_size``); needs ``image_size``.
        confine: refuse image files that resolve outside this folder (a tree named by a path
            read from a file must not reach elsewhere through links).

    Raises:
        DataError: no images, fewer than two classes, an unreadable image, a file outside
            ``confine``.
    """
    from PIL import Image  # lazy: PIL is only needed for folders

    filters = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }
    if interpolation not in filters:
        raise DataError(f"interpolation must be one of {', '.join(filters)}, got {interpolation!r}")
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    val_dir = next((subdirs[v] for v in VAL_DIRS if v in subdirs), None)
    test_dir = next((subdirs[v] for v in TEST_DIRS if v in subdirs), None)
    pre_split = (
        "train" in subdirs and (val_dir or test_dir) is not None and bool(_class_dirs(subdirs["train"]))
    )
    if pre_split:
        sets = {"train": subdirs["train"], "val": val_dir, "test": test_dir}
        sets = {k: d for k, d in sets.items() if d is not None}
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

    size: tuple[int, int] | None = None
    if image_size:
        size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if confine is not None:
        fence = confine.resolve()
        for items in files.values():
            for f, _ in items:
                if not f.resolve().is_relative_to(fence):
                    raise DataError(f"image {f} resolves outside {fence}; refusing to read it")
    arrays: dict[str, list[np.ndarray]] = {}
    all_gray = True
    skipped: list[tuple[Path, str]] = []
    unreadable = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)
    kept: dict[str, list[tuple[Path, int]]] = {}
    for part, items in files.items():
        arrays[part] = []
        kept[part] = []
        for f, c in items:
            try:
                with warnings.catch_warnings():
                    # a decompression bomb (more pixels than PIL allows) is an unreadable file
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        im = im.convert("RGB")
            except unreadable as e:
                skipped.append((f, type(e).__name__))
                continue
            kept[part].append((f, c))
            if size is None:
                size = (im.height, im.width)
            scaled = scaled_size((im.height, im.width), size, crop_pct)
            if (im.height, im.width) != scaled:
                # PIL's resize widens its filter when shrinking, i.e. it antialiases.
                im = im.resize((scaled[1], scaled[0]), filters[interpolation])
            if scaled != size:
                top, left = center_crop_box(scaled, size)
                im = im.crop((left, top, left + size[1], top + size[0]))
            a = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
            all_gray = all_gray and bool((a[0] == a[1]).all() and (a[1] == a[2]).all())
            arrays[part].append(a)
    total = sum(len(v) for v in files.values())
    if skipped and (len(skipped) > MAX_BAD_FRACTION * total or size is None):
        f, why = skipped[0]
        raise DataError(
            f"cannot read image {f}: {why}; {len(skipped)} of {total} images are unreadable "
            f"(more than {MAX_BAD_FRACTION:.0%} are refused)"
        )
    files = kept
    stack = {
        p: (np.stack(v) if v else np.zeros((0, 3, *size), np.uint8))  # type: ignore[misc]
        for p, v in arrays.items()
    }
    if all_gray:
        stack = {p: np.ascontiguousarray(v[:, :1]) for p, v in stack.items()}
    labels = {p: np.array([c for _, c in items], dtype=np.int64) for p, items in files.items()}
    meta: dict[str, Any] = {"source": "folder", "path": str(root.resolve()), "skipped_images": len(skipped)}
    if skipped:  # named in the run's log and report: a user fixes or removes them
        meta["skipped_examples"] = [f"{f} ({why})" for f, why in skipped[:3]]
    x, y = (stack["train"], labels["train"]) if pre_split else (stack["all"], labels["all"])
    # the parts the tree lacks are carved from train (or from the whole tree)
    fractions = {k: 0.0 if k in files else f for k, f in (("val", VAL_FRACTION), ("test", TEST_FRACTION))}
    tr, va, te = stratified_split(y, seed, val_fraction=fractions["val"], test_fraction=fractions["test"])
    x_tr, y_tr = x[tr], y[tr]
    x_va, y_va = (stack["val"], labels["val"]) if "val" in files else (x[va], y[va])
    x_te, y_te = (stack["test"], labels["test"]) if "test" in files else (x[te], y[te])
    given = [f"{sets[k].name}/" for k in ("train", "val", "test") if pre_split and k in sets]
    meta["split"] = (
        (f"folders {', '.join(given)}" if given else "stratified 70/15/15")
        + ("" if "test" in files else "; test fixed")
        + ("" if "val" in files else f"; val seed {seed}")
    )
    return RawData(str(root), x_tr, y_tr, x_va, y_va, names, meta, x_test=x_te, y_test=y_te)


# --------------------------------------------------------------------------------------------
# native shape, without loading
# --------------------------------------------------------------------------------------------


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) of one image of an array of ``shape``, read as ``_images_from_array`` reads it."""
    if len(shape) == 3:
        return 1, int(shape[1]), int(shape[2])
    if len(shape) != 4:
        return None
    c, h, w = (shape[3], shape[1], shape[2]) if shape[-1] <= 4 and shape[1] > 4 else shape[1:]
    c = {4: 3, 2: 1}.get(int(c), int(c))
    return (c, int(h), int(w)) if c in (1, 3) else None


def npz_image_shape(path: Path) -> tuple[int, int, int] | None:
    """(C, H, W) of the images of an ``.npz``, from the array header only; ``None`` if unknown."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            member = next((m for m in ("x_train.npy", "x.npy") if m in names), None)
            if member is None:
                return None
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read(f)
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error):
        return None
    return _chw(tuple(shape))


def folder_image_shape(root: Path) -> tuple[int, int, int] | None:
    """(C, H, W) of the first image of an ImageFolder tree (its header only); ``None`` if unknown.

    C is 1 for a gray (``L``/``1``/``I``) first image, else 3.
    """
    from PIL import Image

    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    base = subdirs["train"] if "train" in subdirs and _class_dirs(subdirs["train"]) else root
    for c in _class_dirs(base):
        for f in _image_files(c):
            try:
                with Image.open(f) as im:
                    return (1 if im.mode in ("L", "1", "I", "I;16", "F") else 3), im.height, im.width
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
    return None
