"""``load_data``: turn a data spec (or a teacher's data hint) into a finished ``DataBundle``.

Parses the spec (``"glyphs:size=20"``, ``"digits"``, a path), picks the loader, and hands its
output to ``finish_bundle`` for the common checks and the ``image_size``/``channels``/crop
adaptation. A hint read from a checkpoint is confined to the checkpoint's folder. ``native_shape``
peeks at the size a spec's images have, without loading them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np

from kd_compile.errors import DataError

from .bundle import DataBundle, finish_bundle
from .digits import DIGITS_DEFAULTS, load_digits
from .files import folder_image_shape, load_folder, load_npz, npz_image_shape
from .glyphs import GLYPHS_DEFAULTS, load_glyphs
from .preprocess import INTERPOLATIONS, scaled_size

__all__ = ["DATASETS", "builtin_datasets", "load_data", "native_shape"]

#: Built-in dataset names accepted by ``load_data``.
DATASETS: tuple[str, ...] = ("digits", "glyphs")


def builtin_datasets() -> list[str]:
    """Names of the built-in datasets, for help texts and error messages."""
    return list(DATASETS)


def load_data(
    spec: str | None,
    *,
    hint: dict[str, Any] | None = None,
    hint_root: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    seed: int = 0,
) -> DataBundle:
    """Load a dataset into memory as a ``DataBundle``.

    Args:
        spec: ``"digits"``, ``"glyphs"``, ``"glyphs:size=24,train=20000,val=4000,test=4000,seed=3"``, a
            path to an ``.npz`` file or an ImageFolder directory. ``None`` uses ``hint``.
        hint: ``DataBundle.hint()`` as stored in a teacher checkpoint
            (``{"spec": ..., "meta": {...}}``); its recorded input shape, interpolation and
            crop are re-applied unless ``image_size``/``channels``/... say otherwise.
        hint_root: the folder of the file the hint was read from. A path in the hint is then
            resolved against it (not the working directory) and refused when it leads outside
            it, links included: a path read from a file never leaves that file's folder.
        image_size: resize images to (image_size, image_size) or (H, W); for ``glyphs``
            (16-32 px) and ``digits`` a square size sets the generated resolution instead when
            the spec gives no size.
        channels: 1 or 3; converts by luminance (3->1) or repetition (1->3).
        interpolation: resize filter, ``bilinear`` (default), ``bicubic`` or ``nearest``.
        crop_pct: centre-crop fraction in (0, 1] (default 1: no crop): images are resized to
            ``image_size / crop_pct`` and the centre ``image_size`` kept, as timm evaluates.
        seed: seed of generated data and of the train/val split where the data has none (the
            test part of a split is fixed whatever the seed); a ``seed=`` option inside the spec wins.

    Returns:
        The bundle: ``x_train`` uint8 (N, C, H, W), ``y_train`` int64 (N,), same for val and
        for the held-out test split (``x_test``/``y_test``).

    Raises:
        DataError: one line naming the problem (missing path, corrupt file, empty data, fewer
            than two classes, non-integer labels, x/y length mismatch, unknown name, a hint
            leading outside its folder, ...).
    """
    image_size = _checked_size(image_size)
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
        raise DataError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    confine: Path | None = None
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if hint is None:
            raise DataError(
                "no data given: pass --data glyphs|digits|path.npz|folder "
                "(data-free distillation comes later)"
            )
        spec, image_size, channels, interpolation, crop_pct = _from_hint(
            hint, image_size, channels, interpolation, crop_pct
        )
        if hint_root is not None and spec.partition(":")[0].strip().lower() not in DATASETS:
            spec, confine = _confined(spec, Path(hint_root)), Path(hint_root)
    spec = str(spec).strip()
    interpolation = interpolation or "bilinear"
    crop_pct = 1.0 if crop_pct is None else float(crop_pct)
    square = image_size if isinstance(image_size, int) else None
    if isinstance(image_size, tuple) and image_size[0] == image_size[1]:
        square = image_size[0]
    # a generator renders at the size it is resized to (rather than resample twice); with a
    # crop that is the size before cropping
    gen_size = square
    if square is not None and crop_pct < 1.0:
        gen_size = scaled_size((square, square), (square, square), crop_pct)[0]

    name, _, opts = spec.partition(":")
    key = name.strip().lower()
    applied = False  # whether the loader already resized and cropped to the target
    if key in DATASETS:
        options = _parse_options(key, opts)
        if key == "glyphs":
            raw = load_glyphs(options, image_size=gen_size, seed=seed)
        else:
            raw = load_digits(options, image_size=gen_size, seed=seed)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            raw = load_folder(
                path, image_size=image_size, seed=seed, interpolation=interpolation, crop_pct=crop_pct, confine=confine
            )
            applied = image_size is not None
        elif path.is_file():
            raw = load_npz(path, seed=seed)
        elif _looks_like_path(spec):
            raise DataError(f"data path not found: {spec}")
        else:
            close = difflib.get_close_matches(key, DATASETS, n=2, cutoff=0.5)
            hint_txt = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise DataError(
                f"unknown dataset {spec!r}{hint_txt} (built-in: {', '.join(DATASETS)}; "
                "or a path to an .npz file or an image folder)"
            )
    bundle = finish_bundle(
        raw,
        image_size=image_size,
        channels=channels,
        interpolation=interpolation,
        crop_pct=1.0 if applied else crop_pct,
    )
    if image_size is not None and (interpolation != "bilinear" or crop_pct < 1.0):
        bundle.meta["interpolation"], bundle.meta["crop_pct"] = interpolation, crop_pct
    return bundle


def _checked_size(image_size: Any) -> int | tuple[int, int] | None:
    """``image_size`` as a positive int or an (H, W) pair of them; ``None`` passes."""
    if image_size is None:
        return None
    values = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size,)
    ok = len(values) in (1, 2) and all(
        not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1 for v in values
    )
    if not ok or (len(values) == 1 and isinstance(image_size, (tuple, list))):
        raise DataError(f"image_size must be a positive integer or (H, W), got {image_size!r}")
    return int(values[0]) if len(values) == 1 else (int(values[0]), int(values[1]))


def native_shape(spec: str | None) -> tuple[int, int, int] | None:
    """(C, H, W) the data of ``spec`` has before any resizing, read cheaply; ``None`` if unknown.

    Built-ins give their default (or spec'd) size, 1 channel; an ``.npz`` its array header; a
    folder its first image's header. Used to run a teacher whose checkpoint does not record its
    input size at the size of the data it is given. Never raises: ``load_data`` reports errors.
    """
    if not spec or not str(spec).strip():
        return None
    spec = str(spec).strip()
    name, _, opts = spec.partition(":")
    key = name.strip().lower()
    try:
        if key in DATASETS:
            defaults = GLYPHS_DEFAULTS if key == "glyphs" else DIGITS_DEFAULTS
            size = {**defaults, **_parse_options(key, opts)}["size"]
            return 1, int(size), int(size)
        path = Path(spec).expanduser()
        if path.is_dir():
            return folder_image_shape(path)
        if path.is_file():
            return npz_image_shape(path)
    except (DataError, OSError, ValueError):
        return None
    return None


def _confined(spec: str, root: Path) -> str:
    """The path a hint names, resolved against ``root``; refused when it leaves ``root``."""
    fence = root.resolve()
    raw = Path(spec).expanduser()
    target = (raw if raw.is_absolute() else fence / raw).resolve()
    if not target.is_relative_to(fence):
        raise DataError(
            f"the teacher's data hint {spec!r} leads outside the checkpoint's folder {fence}; "
            "refusing to read it (pass --data)"
        )
    return str(target)


def _from_hint(
    hint: Any,
    image_size: int | tuple[int, int] | None,
    channels: int | None,
    interpolation: str | None,
    crop_pct: float | None,
) -> tuple[str, int | tuple[int, int] | None, int | None, str | None, float | None]:
    """Turn a teacher's data hint into (spec, image_size, channels, interpolation, crop_pct)."""
    if not isinstance(hint, dict) or not isinstance(hint.get("spec"), str) or not hint["spec"]:
        raise DataError(
            "the teacher's data hint is malformed (expected {'spec': str, 'meta': dict}); "
            "pass --data glyphs|digits|path.npz|folder"
        )
    meta = hint.get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}
    shape = meta.get("input_shape")
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        # The teacher was trained on data adapted to this shape: adapt again, same way.
        if channels is None and int(shape[0]) in (1, 3):
            channels = int(shape[0])
        if image_size is None:
            image_size = int(shape[1]) if int(shape[1]) == int(shape[2]) else (int(shape[1]), int(shape[2]))
    if interpolation is None and meta.get("interpolation") in INTERPOLATIONS:
        interpolation = str(meta["interpolation"])
    if crop_pct is None and isinstance(meta.get("crop_pct"), (int, float)) and 0 < meta["crop_pct"] <= 1:
        crop_pct = float(meta["crop_pct"])
    return hint["spec"], image_size, channels, interpolation, crop_pct


def _looks_like_path(spec: str) -> bool:
    """Whether a spec that names no existing file was meant as a path (not a dataset name)."""
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
