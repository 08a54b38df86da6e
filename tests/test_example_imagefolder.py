"""examples/imagefolder run as its README says: make the PNG folder, train the timm teacher, compile.

Each step is a fresh process started with the example README's entry points (the scripts and the
``kd-compile`` console script), scaled down through their options; everything is written under
``tmp_path``. The teacher is built with ``pretrained=False``: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "imagefolder"
#: The compile's peak resident memory (its DataLoader workers included) must stay under this.
MAX_RSS_BYTES = 3 * 1024**3


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE / name), *args],
        capture_output=True, text=True, timeout=600, check=False, cwd=cwd, env=_env(),
    )  # fmt: skip


def _run_measured(cmd: list[str], cwd: Path) -> tuple[int, str, int]:
    """Run ``cmd`` to completion; (exit code, its output, its peak RSS in bytes).

    ``os.wait4`` reports that one child's resource use; on Linux its ``ru_maxrss`` (KiB) is the
    largest of the process and the children it reaped (the loader's worker processes).
    """
    log = cwd / f"{Path(cmd[0]).name}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=_env())
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            proc.returncode = 0  # reaped above; keeps Popen from waiting on a gone pid
    return os.waitstatus_to_exitcode(status), log.read_text(), usage.ru_maxrss * 1024


def _make_data(tmp_path: Path, *args: str) -> Path:
    data = tmp_path / "data"
    res = _script("make_data.py", "--out", str(data), "--size", "32", *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "PNG images" in res.stdout
    return data


def _kd_compile() -> str:
    exe = Path(sys.executable).with_name("kd-compile")
    found = str(exe) if exe.is_file() else shutil.which("kd-compile")
    assert found, "the kd-compile console script is not installed (pip install -e .)"
    return found


def test_example_data_and_one_streamed_training_step(tmp_path: Path) -> None:
    """Fast: a tiny folder, and the teacher script's streamed training for a single batch."""
    data = _make_data(tmp_path, "--per-class", "8", "--classes", "2")
    counts = {split: len(list((data / split).glob("*/*.png"))) for split in ("train", "val", "test")}
    assert counts == {"train": 16, "val": 4, "test": 4}  # val and test: a fifth of --per-class each
    assert sorted(d.name for d in (data / "train").iterdir()) == ["00_0", "01_1"]
    teacher = tmp_path / "teacher.pt"
    # 16 training images at batch 16: 1/16 of an epoch is one step
    res = _script(
        "train_teacher.py", "--data", str(data), "--out", str(teacher), "--epochs", str(1 / 16),
        "--size", "32", "--batch-size", "16", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ckpt = torch.load(teacher, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "resnet10t" and ckpt["num_classes"] == 2
    assert ckpt["input_size"] == [3, 32, 32]
    assert ckpt["model"]["fc.weight"].shape == (2, 512)


@pytest.mark.slow
def test_example_readme_steps_end_to_end(tmp_path: Path) -> None:
    """The README's three steps, small: the compile streams the folder and stays under 3 GB."""
    # 3 classes x 300: enough for one epoch from scratch to clear the near-chance teacher check
    data = _make_data(tmp_path, "--per-class", "300", "--classes", "3")
    teacher = tmp_path / "teacher.pt"
    res = _script(
        "train_teacher.py", "--data", str(data), "--out", str(teacher), "--epochs", "1",
        "--size", "32", "--batch-size", "16", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "run"
    code, log, peak_rss = _run_measured(
        [
            _kd_compile(), str(teacher), "--target", "2080ti", "--max-params", "4M", "--data", str(data),
            "--data-mode", "stream", "--stream-augment", "crop", "--budget", "1", "--proxy-epochs", "0.5",
            "--final-epochs", "0.5", "--no-compare-ce", "--device", "cpu", "--out", str(out),
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, log[-3000:]
    report = json.loads((out / "report.json").read_text())
    run_data = report["run"]["data"]
    assert run_data["mode"] == "stream"
    assert (run_data["train"], run_data["val"], run_data["test"]) == (900, 180, 180)
    assert run_data["teacher_knowledge"]["choice"] in {"cache", "online"}
    assert "teacher knowledge:" in log
    for name in ("student.pt", "student.onnx", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert peak_rss < MAX_RSS_BYTES, f"kd-compile peaked at {peak_rss / 1024**3:.2f} GB"


class _FreezeCount(torch.utils.data.Dataset):
    """Each item: how many objects the worker's GC has frozen (0 in a process that froze none)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        import gc

        return torch.tensor([gc.get_freeze_count()]), 0, index, 0


def test_streamed_loader_workers_freeze_what_they_inherit(tmp_path: Path) -> None:
    """The streamed loader's workers keep the parent's heap shared: inherited objects are frozen
    (out of the worker GC's reach), so a full collection in a worker does not copy those pages."""
    from kd_compile.data.stream import open_stream

    data = _make_data(tmp_path, "--per-class", "2", "--classes", "2")
    stream = open_stream(data, image_size=32, channels=3, workers=1)
    stream.dataset = lambda split, train=False: _FreezeCount()  # report from inside the worker
    x, *_ = next(iter(stream.loader("train", batch_size=2, batches=[[(0, 0), (1, 0)]])))
    assert x.min().item() > 1000  # the interpreter's and the index's objects, not a handful
