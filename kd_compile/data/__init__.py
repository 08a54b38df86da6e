"""Datasets as in-memory tensors: built-in ``digits`` and ``glyphs``, ``.npz`` and ImageFolder.

Every loader returns a ``DataBundle``: uint8 images (N, C, H, W), int64 labels (N,), a fixed
train/val/test split, class names and the normalisation (mean/std per channel) that models expect.
``bundle.train_tensors()`` / ``val_tensors()`` / ``test_tensors()`` give normalised float32
tensors; test is held out from every choice and read once, for the final figures.

Entry point: ``load_data(spec, hint=..., image_size=..., channels=..., seed=...)``. Spec forms:

* ``"digits"`` / ``"digits:size=16,seed=0"``: scikit-learn's ``load_digits`` (1797 real 8x8
  scans, 10 classes), scaled to uint8, stratified 70/15/15 split (fixed test), 16x16 by default
  (``digits.py``).
* ``"glyphs"`` / ``"glyphs:size=24,train=20000,val=4000,seed=3,classes=62"``: the 62 characters
  0-9, A-Z, a-z generated here from matplotlib's fonts with random distortions, cached as
  ``.npz`` under ``cache_dir()`` (``glyphs.py`` tells the generator, its defaults and why).
  ``classes=K`` keeps the first ``K`` characters (10: the digits), balanced over them.
* a path to an ``.npz``: arrays ``x``/``y`` or ``x_train``/``y_train``/``x_val``/``y_val``
  (optional ``class_names``); x as (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in
  [0, 1]; optional ``x_test``/``y_test``. What the file lacks is carved out by the seeded stratified
  70/15/15 split, its test part fixed (``bundle.stratified_split``, ``files.py``).
* a directory in ImageFolder layout (one subfolder per class; or ``train/`` with ``val/`` and/or
  ``test/``, each holding class subfolders; ``test/`` is the test split, never val). Images are
  read with PIL, resized to ``image_size`` (else to the first image's size) and kept grayscale
  when every image is (``files.py``).

``image_size``/``channels``/``interpolation``/``crop_pct`` adapt any dataset to a teacher's
input (``Preprocessing``, ``preprocess.py``): ``torch.nn.functional.interpolate`` or PIL with the
teacher's filter (bilinear by default, antialiased when downscaling), an optional centre crop as
timm evaluates (resize to size / crop_pct, keep the centre), 1->3 channels by repeat, 3->1 by
ITU-R 601 luminance (``bundle.py``). With ``spec=None`` the ``hint`` a teacher checkpoint carries
(``DataBundle.hint()``) is loaded instead, confined to the checkpoint's folder (``load.py``).
``native_shape(spec)`` reads the size a dataset's images have without loading them.
"""

from __future__ import annotations

# Re-exported: callers have always taken the cache root from here (``cache_dir() / "teacher"``).
from kd_compile.paths import cache_dir

from .bundle import DataBundle
from .digits import DIGITS_DEFAULTS
from .glyphs import GLYPH_CHARS, GLYPH_FONTS, GLYPHS_DEFAULTS, GLYPHS_VERSION, render_glyphs
from .load import DATASETS, builtin_datasets, load_data, native_shape
from .preprocess import INTERPOLATIONS, Preprocessing

__all__ = [
    "DATASETS",
    "DIGITS_DEFAULTS",
    "GLYPHS_DEFAULTS",
    "GLYPHS_VERSION",
    "GLYPH_CHARS",
    "GLYPH_FONTS",
    "INTERPOLATIONS",
    "DataBundle",
    "Preprocessing",
    "builtin_datasets",
    "cache_dir",
    "load_data",
    "native_shape",
    "render_glyphs",
]
