"""WebDataset-style tar shards as a random-access sample source for ``data.stream``.

A shard set is named by a directory holding ``*.tar`` files (or ``train/``, ``val/``, ``test/``
subdirectories of them) or by a brace/glob pattern such as ``shards/train-{000000..000009}.tar``.
Inside a shard, members are grouped into samples by key (the member path up to the first dot
of its file name, WebDataset's convention): one image member (``.jpg``/``.jpeg``/``.png``/
``.webp``) and one label member (``.cls``: an integer as text, or ``.json`` with a ``"label"``
field). An optional ``classes.txt`` beside the shards names the classes, one a line. Shard
names starting ``train``, ``val`` (``valid``, ``validation``) and ``test`` are those splits;
without val/test the caller's seeded stratified split applies.

Why not the ``webdataset`` library: it reads shards as an iterable stream, so a sample has no
stable index and cannot be fetched on its own. The training pipeline needs a map-style dataset:
the top-k teacher cache (``distill.topk_cache``) is indexed by sample, and each augmented view
is seeded by (sample index, epoch). So each shard is indexed ONCE with the stdlib ``tarfile``
(headers only, plus a header check of each image), keeping per sample only the shard number,
the byte offset and the size of its image member in numpy arrays (20 bytes a sample and its
key, never the image bytes), and a worker reads one image with ``os.pread`` on a file handle it
opens lazily (after the fork). Shards must be uncompressed tars (``.tar``): a compressed stream
has no offsets to seek to.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_compile.errors import DataError, UsageError

from .files import TEST_DIRS, VAL_DIRS

__all__ = [
    "IMAGE_MEMBER_EXTS",
    "ShardIndex",
    "ShardSource",
    "count_shard_samples",
    "index_shards",
    "is_shard_spec",
    "shard_layout",
]

#: Member suffixes (lower case, after the key's dot) read as a sample's image.
IMAGE_MEMBER_EXTS = ("jpg", "jpeg", "png", "webp")
#: Largest label a ``.cls``/``.json`` member may hold without a ``classes.txt``.
MAX_LABEL = 100_000
#: Largest label member read (a ``.cls`` or ``.json`` is a few bytes).
MAX_LABEL_BYTES = 1 << 16
#: One location record per sample: which shard, where its image member's bytes start, how many.
LOC_DTYPE = np.dtype([("shard", np.int32), ("offset", np.int64), ("size", np.int64)])

_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext
_BRACE_RE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> three names (zero padding kept); ``{x,y}`` -> both; nested left to right."""
    m = _BRACE_RE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo or hi - lo > 1_000_000:
            raise UsageError(f"bad shard range {{{body}}} in {pattern!r}")
        width = len(rng.group(1))
        items = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [name for it in items for name in _expand_braces(head + it + tail)]


def _is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "{*?[")


def _tars(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(".tar"))


def is_shard_spec(spec: Any) -> bool:
    """Whether ``spec`` names tar shards: a ``.tar`` pattern, a ``.tar`` file, or a directory with
    ``*.tar`` files (directly or in ``train/``/``val/``/``test/``). Never raises."""
    if not spec or not str(spec).strip():
        return False
    s = str(spec).strip()
    if s.lower().endswith(".tar"):
        return True
    p = Path(s).expanduser()
    try:
        if not p.is_dir():
            return False
        if _tars(p):
            return True
        return any((p / d).is_dir() and _tars(p / d) for d in ("train", *VAL_DIRS, *TEST_DIRS))
    except OSError:
        return False


def _part_of(name: str) -> str:
    """The split a shard's file name names by its prefix (``all`` for none)."""
    low = name.lower()
    for part, prefixes in (("train", ("train",)), ("val", VAL_DIRS), ("test", TEST_DIRS)):
        if any(low.startswith(p) for p in prefixes):
            return part
    return "all"


def shard_layout(spec: str) -> tuple[dict[str, list[Path]], Path, str]:
    """The shards of ``spec`` per split, the folder ``classes.txt`` is looked for in, the split note.

    Splits come from ``train/``/``val/``/``test/`` subdirectories or from shard name prefixes;
    without val or test everything is one ``all`` part (the caller splits it).

    Raises:
        DataError: no shard matches, or shards with and without a split prefix are mixed.
    """
    s = str(spec).strip()
    p = Path(s).expanduser()
    sets: dict[str, list[Path]] = {}
    if not _is_pattern(s) and p.is_dir():
        base = p
        found: dict[str, list[Path]] = {}
        for part, names in (("train", ("train",)), ("val", VAL_DIRS), ("test", TEST_DIRS)):
            d = next((p / n for n in names if (p / n).is_dir() and _tars(p / n)), None)
            if d is not None:
                found[part] = _tars(d)
        if "train" in found and len(found) > 1:
            return found, base, "shard folders " + "/".join(found)
        paths = _tars(p)
    else:
        names = [
            n
            for pat in _expand_braces(s)
            for n in (sorted(glob.glob(os.path.expanduser(pat))) if _is_pattern(pat) else [os.path.expanduser(pat)])
        ]
        paths = sorted({Path(n) for n in names}, key=str)
        missing = [q for q in paths if not q.is_file()]
        if missing:
            raise DataError(f"shard not found: {missing[0]} ({len(missing)} of {len(paths)} named by {s!r} missing)")
        base = paths[0].parent if paths else p.parent
    if not paths:
        raise DataError(f"no .tar shards found for {s!r}")
    for q in paths:
        sets.setdefault(_part_of(q.name), []).append(q)
    if set(sets) <= {"all", "train"}:
        return {"all": paths}, base, ""
    if "all" in sets:
        raise DataError(
            f"{s}: shard {sets['all'][0].name} has no train-/val-/test- prefix while others do; "
            "name every shard by its split or none"
        )
    if "train" not in sets:
        raise DataError(f"{s}: val/test shards but no train-*.tar shards")
    sets = {k: sets[k] for k in ("train", "val", "test") if k in sets}
    return sets, base, "shards " + "/".join(f"{k}-*" for k in sets)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")  # uncompressed only: offsets must be seekable
    except (tarfile.TarError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(
            f"cannot read shard {path}: not an uncompressed tar archive ({msg})",
            hint="shards are plain .tar files (WebDataset layout), not .tar.gz",
        ) from None


def _members(path: Path) -> list[tarfile.TarInfo]:
    """Every regular member of the shard (headers only), or a ``UsageError`` for a corrupt one."""
    size = path.stat().st_size
    tf = _open_tar(path)
    try:
        with tf:
            every = list(tf)
    except (tarfile.TarError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot read shard {path}: corrupt tar archive ({msg})") from None
    out = [m for m in every if m.isfile()]
    for m in out:
        if m.offset_data + m.size > size:
            raise UsageError(f"cannot read shard {path}: truncated tar archive (member {m.name} runs past the end)")
    # tarfile stops quietly at a header cut short: a whole archive ends with two zero blocks
    end = max((m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for m in every), default=0)
    with open(path, "rb") as fh:
        tail = os.pread(fh.fileno(), 2 * tarfile.BLOCKSIZE, end)
    if tail != bytes(2 * tarfile.BLOCKSIZE):
        raise UsageError(f"cannot read shard {path}: truncated tar archive (no end-of-archive marker)")
    return out


def count_shard_samples(spec: str) -> int:
    """Samples (keys with an image member) in the shards of ``spec``, from tar headers only."""
    sets, _, _ = shard_layout(spec)
    n = 0
    for paths in sets.values():
        for q in paths:
            keys = set()
            for m in _members(q):
                km = _KEY_RE.match(m.name)
                if km and km.group(2).lower() in IMAGE_MEMBER_EXTS:
                    keys.add(km.group(1))
            n += len(keys)
    return n


@dataclass
class ShardSource:
    """Reads a sample's image bytes from its shard: a (shard, offset, size) record per sample.

    Attributes:
        paths: the shard files (resolved), numbered by the records' ``shard`` field.
        loc: per split, one ``LOC_DTYPE`` record per sample, in the split's sample order.

    File handles are opened lazily in the process that reads (a ``DataLoader`` worker after
    its fork) and are not pickled.
    """

    paths: tuple[str, ...]
    loc: dict[str, np.ndarray]
    _fds: dict[int, int] = field(default_factory=dict, repr=False)
    _pid: int = field(default=-1, repr=False)

    def read(self, split: str, index: int) -> bytes:
        """The image member's bytes of sample ``index`` of ``split``."""
        rec = self.loc[split][index]
        shard, offset, size = int(rec["shard"]), int(rec["offset"]), int(rec["size"])
        if self._pid != os.getpid():  # a fork: the parent's handles are not ours to share
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        buf = os.pread(fd, size, offset)
        while len(buf) < size:  # pread may return short on some filesystems
            more = os.pread(fd, size - len(buf), offset + len(buf))
            if not more:
                raise OSError(f"{self.paths[shard]}: short read at offset {offset}")
            buf += more
        return buf

    def take(self, split: str, ix: np.ndarray, into: str) -> None:
        """Set ``loc[into]`` to the records ``ix`` of ``loc[split]`` (a split carved from another)."""
        self.loc[into] = self.loc[split][ix]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "loc": self.loc, "_fds": {}, "_pid": -1}

    def __del__(self) -> None:
        if self._pid == os.getpid():
            try:
                self.close()
            except OSError:
                pass


@dataclass
class ShardIndex:
    """What ``index_shards`` found: per split the sample keys, labels and locations.

    Attributes:
        root: the folder of the shards (``classes.txt`` is read there).
        keys: per split, ``b"<shard file name>/<key>"`` per sample (the samples' identity).
        labels: per split int64 class indices.
        source: the byte locations, ready for reading.
        class_names: from ``classes.txt``, else ``"0"`` .. ``str(max label)``.
        split_note: how the splits were found ("" when the caller must split).
        skipped: ``shard/key: why`` of each sample left out (unreadable image, bad label).
        total: samples seen, skipped ones included.
    """

    root: Path
    keys: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: ShardSource
    class_names: list[str]
    split_note: str
    skipped: list[str]
    total: int


def _label(data: bytes, ext: str) -> int:
    """The class index a ``.cls`` (integer text) or ``.json`` (``{"label": int}``) member holds."""
    text = data.decode("utf-8").strip()
    value: Any = json.loads(text).get("label") if ext == "json" else int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_LABEL:
        raise ValueError(f"label {value!r} is not a class index")
    return value


def _check_image(data: bytes) -> None:
    """Open and verify the image's structure without decoding its pixels; raise if unreadable."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is an unreadable image
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def index_shards(spec: str, *, confine: Path | None = None) -> ShardIndex:
    """Index the shards of ``spec`` once: tar headers, label members, a header check per image.

    A sample whose image cannot be opened, or that lacks an image or a readable label, is left
    out and listed in ``skipped`` (the caller applies the unreadable-image threshold).

    Args:
        spec: a folder of ``*.tar`` shards or a brace/glob pattern of them.
        confine: refuse shards that resolve outside this folder (a spec read from a file).

    Raises:
        UsageError: a shard that is not a readable uncompressed tar.
        DataError: no shards, a shard outside ``confine``, bad ``classes.txt``.
    """
    sets, root, note = shard_layout(spec)
    fence = confine.resolve() if confine is not None else None
    paths: list[str] = []
    keys: dict[str, list[bytes]] = {}
    labels: dict[str, list[int]] = {}
    locs: dict[str, list[tuple[int, int, int]]] = {}
    skipped: list[str] = []
    total = 0
    for part, shards in sets.items():
        keys[part], labels[part], locs[part] = [], [], []
        for q in shards:
            rq = q.resolve()
            if fence is not None and not rq.is_relative_to(fence):
                raise DataError(f"shard {q} resolves outside {fence}; refusing to read it")
            sid = len(paths)
            paths.append(str(rq))
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in _members(q):
                km = _KEY_RE.match(m.name)
                if km:
                    samples.setdefault(km.group(1), {})[km.group(2).lower()] = m
            with open(rq, "rb") as fh:
                for key, mem in samples.items():
                    img = next((mem[e] for e in IMAGE_MEMBER_EXTS if e in mem), None)
                    lab = next(((mem[e], e) for e in ("cls", "json") if e in mem), None)
                    if img is None and lab is None:
                        continue  # not a sample (e.g. a stray metadata member)
                    total += 1
                    where = f"{q.name}/{key}"
                    try:
                        if img is None:
                            raise ValueError("no image member")
                        if lab is None:
                            raise ValueError("no .cls or .json label member")
                        if lab[0].size > MAX_LABEL_BYTES:
                            raise ValueError("label member too large")
                        y = _label(os.pread(fh.fileno(), lab[0].size, lab[0].offset_data), lab[1])
                        _check_image(os.pread(fh.fileno(), img.size, img.offset_data))
                    except Exception as e:  # noqa: BLE001  (PIL and json raise many types for bad bytes)
                        skipped.append(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                        continue
                    keys[part].append(where.encode("utf-8"))
                    labels[part].append(y)
                    locs[part].append((sid, img.offset_data, img.size))
    lab_arr = {p: np.asarray(v, dtype=np.int64) for p, v in labels.items()}
    top = max((int(v.max()) for v in lab_arr.values() if len(v)), default=-1)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if top >= len(names):
            raise DataError(f"{names_file} names {len(names)} classes but a shard holds label {top}")
    else:
        names = [str(k) for k in range(top + 1)]
    return ShardIndex(
        root=root.resolve(),
        keys={p: np.array(v, dtype=np.bytes_) for p, v in keys.items()},
        labels=lab_arr,
        source=ShardSource(tuple(paths), {p: np.array(v, dtype=LOC_DTYPE) for p, v in locs.items()}),
        class_names=names,
        split_note=note,
        skipped=skipped,
        total=total,
    )
