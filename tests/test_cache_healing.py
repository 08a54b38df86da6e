"""The teacher cache heals itself: a damaged entry is rebuilt with a warning, and a cache folder
that cannot be written (full disk, a file in its place, a file-size limit) leaves the run going
with the outputs in memory and no temporary file behind (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache
from kd_compile.distill.cache import CacheWarning

torch.set_num_threads(1)


def _bundle() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (120, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (120,), generator=g)
    return DataBundle(
        name="healing",
        x_train=x[:90],
        y_train=y[:90],
        x_val=x[90:],
        y_val=y[90:],
        num_classes=4,
        class_names=[str(i) for i in range(4)],
        mean=(0.5,),
        std=(0.25,),
    )


class _Counted(nn.Module):
    """A tiny teacher that counts its forward calls (to tell a reuse from a rebuild)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(torch.relu(self.conv(x)).flatten(1))


DATA = _bundle()


def _entry(root: Path) -> Path:
    (entry,) = root.glob("teacher-*")
    return entry


def _no_temp_files(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp")] if root.is_dir() else []
    assert left == []


def _truncate(e: Path) -> None:
    f = e / "train_logits.npy"
    f.write_bytes(f.read_bytes()[:200])


def _garbage(e: Path) -> None:
    f = e / "train_logits.npy"
    raw = bytearray(f.read_bytes())
    raw[-64:] = os.urandom(64)
    f.write_bytes(bytes(raw))


def _all_garbage(e: Path) -> None:
    (e / "val_logits.npy").write_bytes(os.urandom(2000))


def _bad_json(e: Path) -> None:
    (e / "meta.json").write_text('{"version": 2, "key": ')


def _not_utf8(e: Path) -> None:
    (e / "meta.json").write_bytes(b"\xff\xfe\x00garbage")


def _json_not_object(e: Path) -> None:
    (e / "meta.json").write_text("[1, 2, 3]")


def _meta_fields_missing(e: Path) -> None:
    meta = json.loads((e / "meta.json").read_text())
    del meta["files"]
    (e / "meta.json").write_text(json.dumps(meta))


def _wrong_shape(e: Path) -> None:
    np.save(e / "train_logits.npy", np.zeros((90, 7), dtype=np.float32))


def _wrong_dtype(e: Path) -> None:
    np.save(e / "val_logits.npy", np.zeros((30, 4), dtype=np.float64))


def _pickled_object(e: Path) -> None:
    np.save(e / "val_logits.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _missing_file(e: Path) -> None:
    (e / "val_logits.npy").unlink()


def _lying_meta(e: Path) -> None:
    # a consistent-looking record of a file with other numbers in it
    np.save(e / "train_logits.npy", np.ones((90, 4), dtype=np.float32))
    meta = json.loads((e / "meta.json").read_text())
    meta["files"]["train_logits.npy"]["bytes"] = (e / "train_logits.npy").stat().st_size
    (e / "meta.json").write_text(json.dumps(meta))


def _directory_for_file(e: Path) -> None:
    (e / "train_logits.npy").unlink()
    (e / "train_logits.npy").mkdir()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated logits": _truncate,
    "garbage bytes in logits": _garbage,
    "logits file all garbage": _all_garbage,
    "meta.json not JSON": _bad_json,
    "meta.json not UTF-8": _not_utf8,
    "meta.json not an object": _json_not_object,
    "meta.json fields missing": _meta_fields_missing,
    "wrong shape": _wrong_shape,
    "wrong dtype": _wrong_dtype,
    "pickled object array": _pickled_object,
    "missing file": _missing_file,
    "meta lies about content": _lying_meta,
    "directory in place of a file": _directory_for_file,
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    teacher = _Counted()
    first = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=tmp_path)
    expected = first.train_logits.clone(), first.val_logits.clone()
    runs = teacher.calls
    DAMAGE[damage](_entry(tmp_path))

    with pytest.warns(CacheWarning, match="teacher cache entry") as record:
        healed = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=tmp_path)
    assert all("\n" not in str(w.message) for w in record)
    assert teacher.calls == 2 * runs  # the teacher ran again
    assert torch.equal(healed.train_logits, expected[0]) and torch.equal(healed.val_logits, expected[1])
    assert healed.meta["reused"] is False and healed.path == _entry(tmp_path)

    # the rebuilt entry is whole again: the next run reuses it silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=tmp_path)
    assert again.meta["reused"] is True and teacher.calls == 2 * runs
    assert torch.equal(again.train_logits, expected[0])
    _no_temp_files(tmp_path)


def test_damaged_feature_map_is_rebuilt(tmp_path: Path) -> None:
    teacher = _Counted()
    first = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=tmp_path, feature_layers=["conv"])
    want = first.train_features["conv"].clone()
    (feat,) = _entry(tmp_path).glob("feat-*.npy")
    feat.write_bytes(feat.read_bytes()[:-16])
    with pytest.warns(CacheWarning, match="damaged"):
        healed = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=tmp_path, feature_layers=["conv"])
    assert torch.equal(healed.train_features["conv"], want)


def _in_memory_run(cache_dir: Path) -> TeacherCache:
    teacher = _Counted()
    with pytest.warns(CacheWarning, match="keeping the teacher's outputs in memory") as record:
        cache = TeacherCache.build(teacher, DATA, batch_size=64, cache_dir=cache_dir)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    ref = TeacherCache.build(_Counted(), DATA, batch_size=64)
    assert cache.path is None and cache.meta["reused"] is False
    assert torch.equal(cache.train_logits, ref.train_logits) and torch.equal(cache.val_logits, ref.val_logits)
    return cache


def test_file_in_place_of_the_cache_folder_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    _in_memory_run(blocker)
    assert blocker.read_text() == "not a folder"


def test_full_disk_on_a_small_tmpfs_falls_back_to_memory(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    # 16 KiB: room for the folder and meta.json, not for the logits (90 x 4 floats + header is
    # 1.6 KB, so fill most of it first)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip() or 'not root'}")
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * (16 << 10))
            except OSError:
                pass
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        assert free < 1024  # the disk is full
        _in_memory_run(mnt / "teacher")
        _no_temp_files(mnt)
        assert not any(p.suffix == ".npy" for p in mnt.rglob("*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_write_error_from_a_file_size_limit_falls_back_to_memory(tmp_path: Path) -> None:
    """Portable disk-full: RLIMIT_FSIZE (in a child process) makes every large write fail with
    EFBIG, as ENOSPC would; the build goes on in memory and leaves no temporary file."""
    pytest.importorskip("resource")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, warnings
        import torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cache_healing import DATA, _Counted
        from kd_compile.distill import TeacherCache
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cache = TeacherCache.build(_Counted(), DATA, batch_size=64, cache_dir={str(tmp_path / "c")!r})
        ref = TeacherCache.build(_Counted(), DATA, batch_size=64)
        assert cache.path is None, cache.path
        assert torch.equal(cache.train_logits, ref.train_logits)
        print("|".join(str(x.message) for x in w))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "keeping the teacher's outputs in memory" in done.stdout
    _no_temp_files(tmp_path)
    assert not any(p.suffix == ".npy" for p in tmp_path.rglob("*"))


@pytest.mark.slow
def test_a_run_over_a_damaged_cache_rebuilds_it_and_succeeds(digits_teacher: Path, tmp_path: Path, monkeypatch):
    """End to end: a compile after its cache entry was truncated warns, rebuilds and finishes."""
    import kd_compile

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    small = dict(target="2080ti", max_params="12K", budget=1, proxy_epochs=0.5, proxy_fraction=0.5, final_epochs=1)
    small.update(strategy="random", seed=0, compare_ce=False)
    first = kd_compile.compile(str(digits_teacher), out=tmp_path / "a", **small)
    (entry,) = (tmp_path / "cache" / "teacher").glob("teacher-*")
    _truncate(entry)
    with pytest.warns(CacheWarning, match="damaged"):
        second = kd_compile.compile(str(digits_teacher), out=tmp_path / "b", **small)
    assert second.config == first.config
    assert second.report["teacher"]["val_accuracy"] == first.report["teacher"]["val_accuracy"]
    _no_temp_files(tmp_path / "cache")
