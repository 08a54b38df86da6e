"""The built-in ``digits`` dataset: scikit-learn's 1797 real 8x8 scans of handwritten digits.

Scaled to uint8, resampled once to the requested size (16x16 by default) and split 70/15/15 per
class by ``stratified_split``: the test part (~270 scans) is fixed, whatever the seed; the seed
only moves images between train and val. Every small net scores ~99% on it, so it checks plumbing, not students.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kd_compile.errors import DataError

from .bundle import RawData, adapt_images, stratified_split

__all__ = ["DIGITS_DEFAULTS", "load_digits"]

#: Options of the ``digits:`` spec and their defaults.
DIGITS_DEFAULTS: dict[str, int] = {"size": 16, "seed": 0}


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
    from sklearn.datasets import load_digits as sklearn_load_digits

    d = sklearn_load_digits()
    return d.images, d.target


def load_digits(options: dict[str, int], *, image_size: int | None, seed: int) -> RawData:
    """Load the digits as ``RawData``.

    Args:
        options: parsed ``digits:`` options (``size``, ``seed``), overriding the defaults.
        image_size: the requested input size; taken as ``size`` (4..128) when the spec gives
            none, so the 8x8 scans are resampled once rather than twice.
        seed: train/val split seed unless the options give one (the test split is fixed).

    Raises:
        DataError: ``size`` outside 4..128.
    """
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
    tr, va, te = stratified_split(y, opts["seed"])
    xt = adapt_images(torch.from_numpy(x), opts["size"], None).numpy()
    name = f"digits:size={opts['size']},seed={opts['seed']}"
    meta = {
        "source": "sklearn.datasets.load_digits",
        **opts,
        "split": f"stratified 70/15/15, fixed test, val seed {opts['seed']}",
    }
    return RawData(
        name, xt[tr], y[tr], xt[va], y[va], [str(i) for i in range(10)], meta, x_test=xt[te], y_test=y[te]
    )
