"""``kd_compile.profilers.workdir``: the caller's folder, or a private one removed on close."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from kd_compile.profilers import InputSpec
from kd_compile.profilers.onnx_export import OnnxFromModule
from kd_compile.profilers.workdir import WorkDir
from kd_compile.testing.profilers import tiny_cnn


def test_private_folder_removed_on_close() -> None:
    d = WorkDir(None, "kd-test-")
    assert d.owned and d.path.is_dir() and d.path.name.startswith("kd-test-")
    (d.path / "sub").mkdir()
    (d.path / "sub" / "f.bin").write_bytes(b"x")
    d.close()
    assert not d.path.exists() and d.closed
    d.close()  # idempotent


def test_private_folder_removed_when_collected() -> None:
    d = WorkDir(None, "kd-test-")
    path = d.path
    del d
    gc.collect()
    assert not path.exists()


def test_callers_folder_is_kept(tmp_path: Path) -> None:
    d = WorkDir(tmp_path / "cache", "kd-test-")
    assert not d.owned and d.path == tmp_path / "cache"
    d.path.mkdir()
    d.close()
    assert d.path.is_dir() and not d.closed


def test_private_folder_follows_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Private folders come from kd_compile.paths.private_dir (the system temporary folder)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = WorkDir(None, "kd-test-")
    assert d.path.parent == tmp_path
    d.close()


def test_onnx_loader_private_folder_removed_on_close() -> None:
    with OnnxFromModule(tiny_cnn(), InputSpec((3, 16, 16))) as loader:
        path = loader()
        assert path.is_file() and loader.cache_dir.name.startswith("kd-onnx-")
    assert not loader.cache_dir.exists() and loader.info is None
