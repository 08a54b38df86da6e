"""Write a PNG ImageFolder of 64-px glyphs: ``train/``, ``val/`` and ``test/``, one subfolder per class.

The images are kd-compile's glyphs (characters rendered from matplotlib's fonts with random
distortions, ``kd_compile.data.render_glyphs``) rendered at 32 px, upscaled to 64 px and
tinted (a random colour gain per image), so the folder looks like what a
user brings: RGB PNG files in class folders, read from disk.

    python examples/imagefolder/make_data.py [--out examples/imagefolder/data] [--per-class 300] [--classes 10]
        [--size 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from kd_compile.data import GLYPH_CHARS, render_glyphs

HERE = Path(__file__).resolve().parent
#: Images per class of each split, as a multiple of ``--per-class`` (val and test are smaller).
SPLITS = {"train": 1.0, "val": 0.2, "test": 0.2}


def _tints(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) random per-channel gains in [0.55, 1]: coloured images that keep the glyph's contrast
    and polarity (random ink/background colours make the task far harder for a few thousand images)."""
    return rng.uniform(0.55, 1.0, size=(n, 3)).astype(np.float32)


def write_folder(out: Path, per_class: int, classes: int, size: int = 64, seed: int = 0) -> dict[str, int]:
    """Render and write the three splits; returns the number of images per split."""
    counts: dict[str, int] = {}
    for k, (split, share) in enumerate(SPLITS.items()):
        n = max(classes, round(per_class * share) * classes)
        x, y = render_glyphs(n, size=32, seed=seed + 1000 * k, classes=classes)
        rng = np.random.default_rng([seed, k])
        tints = _tints(rng, n)
        for i in range(n):
            g = Image.fromarray(x[i, 0]).resize((size, size), Image.Resampling.BICUBIC)
            rgb = (np.asarray(g, dtype=np.float32)[..., None] * tints[i]).round().clip(0, 255).astype(np.uint8)
            d = out / split / f"{int(y[i]):02d}_{GLYPH_CHARS[int(y[i])]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(d / f"{i:06d}.png")
        counts[split] = n
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--per-class", type=int, default=300, help="training images per class")
    ap.add_argument("--classes", type=int, default=10, help="first K characters (10: the digits)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.per_class < 1 or args.classes < 2 or args.size < 8:
        ap.error("need --per-class >= 1, --classes >= 2 and --size >= 8")
    counts = write_folder(args.out, args.per_class, args.classes, size=args.size, seed=args.seed)
    print(f"wrote {sum(counts.values())} PNG images to {args.out}: {counts}")
    return counts


if __name__ == "__main__":
    main()
