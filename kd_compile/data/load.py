"""``load_data``: turn a data spec (or a teacher's data hint) into a finished ``DataBundle``.

Parses the spec (``"glyphs:size=20"``, ``"digits"``, a path), picks the loader, and hands its
output to ``finish_bundle`` for the common checks and the ``image_size``/``channels`` adaptation.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from kd_compile.errors import DataError

from .bundle import DataBundle, finish_bundle
from .digits import DIGITS_DEFAULTS, load_digits
from .files import load_folder, load_npz
from .glyphs import GLYPHS_DEFAULTS, load_glyphs

__all__ = ["DATASETS", "builtin_datasets", "load_data"]

#: Built-in dataset names accepted by ``load_data``.
DATASETS: tuple[str, ...] = ("digits", "glyphs")


def builtin_datasets() -> list[str]:
    """Names of the built-in datasets, for help texts and error messages."""
    return list(DATASETS)


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
            raw = load_glyphs(options, image_size=image_size, seed=seed)
        else:
            raw = load_digits(options, image_size=image_size, seed=seed)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            raw = load_folder(path, image_size=image_size, seed=seed)
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
    return finish_bundle(raw, image_size=image_size, channels=channels)


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
