"""The built-in ``glyphs`` dataset: a generator of character images and its on-disk cache.

The 62 characters 0-9, A-Z, a-z rendered with the 22 text fonts that ship inside matplotlib
(DejaVu Sans/Serif/Sans Mono and STIXGeneral, each regular/bold/italic/bold-italic; Computer
Modern cmr10, cmb10, cmti10, cmss10, cmtt10, cmmi10), with random scale, aspect, rotation,
shear, offset, stroke weight, a cropped neighbouring character, polarity, background level and
gradient, blur, noise and occlusion (a line or a blob). Glyphs are pre-rendered once per font
with PIL at 64x64 (baseline kept, so case still shows in size and position), then every sample
is a batched ``grid_sample`` at 2x resolution and a 2x average-pool; 24K images at 24 px
take ~4 s of one CPU core. Results are cached as ``.npz`` under ``$KD_COMPILE_CACHE``
(default ``~/.cache/kd_compile``), keyed by every option and ``GLYPHS_VERSION``.

Train, val and test are three independent streams of one seed (``SeedSequence(seed).spawn``):
changing one count never changes the other sets. The test set (``test=N``; by default as many
images as val) is its own cache file, so train/val caches made before it existed still hit; it
is held out from every choice and read once, for the final figures.

Defaults: 24x24 grayscale, 20,000 train / 4,000 val / 4,000 test (balanced over the 62 classes). Why: the
end-to-end example trains a teacher, ~10 short students and a final student on 2 CPU cores in
a few minutes; 24 px keeps every character legible, and at 24 px the ~300K-parameter CNN of
the benchmark costs ~21M multiply-adds per image (~1.3T per training epoch), so 20 px is the
option to take when the teacher's time matters more. 20K/4K is enough for accuracies to separate
students by more than their noise (a 4K val set gives about +-0.6 percentage-point standard
error at 85%). The difficulty is tuned so that capacity matters
(``benchmarks/glyphs_difficulty.py`` trains ~15K, ~50K and ~300K-parameter CNNs for 6 epochs
of AdamW; measured with version 3, ``benchmarks/results/glyphs_difficulty.json``: about 76%, 88%
and 92% val accuracy; the bundled example's 358K teacher reaches 84.9% at 20 px with 12,000 train
images). Version 3 halved the occlusions and softened rotation, shear and noise of version 2, on
which the 358K teacher stopped at 75% and a distilled tenth of it stayed 10 points below. Some
classes are genuinely confusable (0/O/o, 1/l/I, c/C, s/S, v/V, ...), which caps accuracy below
100%. ``classes=K`` keeps the first ``K`` characters (10: the digits), balanced over them.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kd_compile.errors import DataError
from kd_compile.paths import cache_dir

from .bundle import RawData

__all__ = [
    "GLYPHS_DEFAULTS",
    "GLYPHS_VERSION",
    "GLYPH_CHARS",
    "GLYPH_FONTS",
    "glyph_atlas",
    "glyph_cache_path",
    "glyph_test_cache_path",
    "load_glyphs",
    "render_glyphs",
]

#: Bump when the glyph generator's output changes, so stale caches are not reused.
GLYPHS_VERSION = 3

#: The 62 glyph classes, in label order.
GLYPH_CHARS = string.digits + string.ascii_uppercase + string.ascii_lowercase

#: Options of the ``glyphs:`` spec and their defaults.
#: ``test=0`` (the default) means as many test images as val images.
GLYPHS_DEFAULTS: dict[str, int] = {"size": 24, "train": 20000, "val": 4000, "test": 0, "seed": 0, "classes": 62}

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
    """matplotlib's bundled TrueType folder (mpl-data/fonts/ttf)."""
    import matplotlib  # lazy: only the glyph generator needs its fonts

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def glyph_atlas() -> tuple[torch.Tensor, np.ndarray]:
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
    atlas, ok = glyph_atlas()
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


def glyph_cache_path(opts: dict[str, int]) -> Path:
    """The cache file of one glyphs data set, keyed by every option, the fonts and the version.

    Args:
        opts: the complete options (``GLYPHS_DEFAULTS`` keys).

    Returns:
        ``cache_dir() / "glyphs-v{version}-s{size}-n{train}-{val}-seed{seed}-{digest}.npz"``.
    """
    # the default class count stays out of the key, so caches made before the option still hit;
    # the test set has a cache file of its own (glyph_test_cache_path)
    kopts = {k: v for k, v in opts.items() if k != "test" and not (k == "classes" and v == len(GLYPH_CHARS))}
    key = json.dumps({"v": GLYPHS_VERSION, "fonts": GLYPH_FONTS, **kopts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / (
        f"glyphs-v{GLYPHS_VERSION}-s{opts['size']}-n{opts['train']}-{opts['val']}"
        f"-seed{opts['seed']}-{digest}.npz"
    )


def glyph_test_cache_path(opts: dict[str, int]) -> Path:
    """The cache file of one glyphs test set: keyed by size, seed, classes, test count, fonts and version.

    Args:
        opts: the complete options, ``test`` resolved to a count.
    """
    kopts = {k: opts[k] for k in ("size", "seed", "classes", "test")}
    key = json.dumps({"v": GLYPHS_VERSION, "fonts": GLYPH_FONTS, "part": "test", **kopts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"glyphs-v{GLYPHS_VERSION}-s{opts['size']}-test{opts['test']}-seed{opts['seed']}-{digest}.npz"


def _cached(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or ``None`` when it is missing or unreadable (then regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None  # a corrupt cache entry is regenerated and overwritten


def load_glyphs(options: dict[str, int], *, image_size: int | None, seed: int) -> RawData:
    """Load glyphs as ``RawData``, from the cache or freshly rendered (then cached).

    Args:
        options: parsed ``glyphs:`` options, overriding ``GLYPHS_DEFAULTS``.
        image_size: the requested input size; taken as ``size`` (16..32) when the spec gives
            none, so images are rendered at it rather than resampled afterwards.
        seed: generator seed unless the options give one.

    Returns:
        The arrays; ``meta`` records every option, the cache file and whether it was a hit.

    Raises:
        DataError: ``size`` outside 16..32, ``train``/``val`` below 1, ``test`` below 0,
            ``classes`` outside 2..62, matplotlib's fonts missing.
    """
    opts = {**GLYPHS_DEFAULTS, "seed": seed}
    if image_size is not None and "size" not in options and 16 <= image_size <= 32:
        opts["size"] = image_size  # render natively rather than resample afterwards
    opts.update(options)
    if not 16 <= opts["size"] <= 32:
        raise DataError(f"glyphs size must be in 16..32 px, got {opts['size']}")
    for k in ("train", "val"):
        if opts[k] < 1:
            raise DataError(f"glyphs {k} must be >= 1, got {opts[k]}")
    if opts["test"] < 0:
        raise DataError(f"glyphs test must be >= 0 (0: as many as val), got {opts['test']}")
    explicit_test = opts["test"] > 0
    if not explicit_test:
        opts["test"] = opts["val"]
    # Independent streams of one seed: no set changes with another's count (spawn(3)'s first
    # two children are spawn(2)'s, so train/val are those of caches made before test existed).
    s_tr, s_va, s_te = (int(c.generate_state(1)[0]) for c in np.random.SeedSequence(opts["seed"]).spawn(3))
    kw = {"size": opts["size"], "classes": opts["classes"]}
    path = glyph_cache_path(opts)
    arrays = _cached(path, ("x_train", "y_train", "x_val", "y_val"))
    hit = arrays is not None
    if arrays is None:
        x_tr, y_tr = render_glyphs(opts["train"], seed=s_tr, **kw)
        x_va, y_va = render_glyphs(opts["val"], seed=s_va, **kw)
        arrays = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
        _write_cache(path, arrays)
    test_path = glyph_test_cache_path(opts)
    test = _cached(test_path, ("x_test", "y_test"))
    hit = hit and test is not None
    if test is None:
        x_te, y_te = render_glyphs(opts["test"], seed=s_te, **kw)
        test = {"x_test": x_te, "y_test": y_te}
        _write_cache(test_path, test)
    name = "glyphs:" + ",".join(f"{k}={opts[k]}" for k in ("size", "train", "val", "seed"))
    if explicit_test:
        name += f",test={opts['test']}"
    if opts["classes"] != len(GLYPH_CHARS):
        name += f",classes={opts['classes']}"
    meta = {
        "source": "kd_compile glyphs generator",
        "version": GLYPHS_VERSION,
        **opts,
        "cache": str(path),
        "test_cache": str(test_path),
        "cache_hit": hit,
        "split": "generated: independent train/val/test streams",
    }
    return RawData(
        name,
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_val"],
        arrays["y_val"],
        list(GLYPH_CHARS[: opts["classes"]]),
        meta,
        x_test=test["x_test"],
        y_test=test["y_test"],
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
