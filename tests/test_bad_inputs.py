"""The bad-input matrix (issue 14): every hostile or careless input, through the real CLI and
the Python API, ends with its documented exit code and one line, never a traceback, never an
``internal error``, and never runs code from a file.

Each case fails during validation, before any training, so the matrix stays fast. The exit
codes are those of the README: 2 option, 3 checkpoint, 4 data, 5 target, 6 constraints,
7 output folder, 11 resume.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import kd_compile
from kd_compile.cli import app
from kd_compile.errors import KdCompileError

runner = CliRunner()


# --------------------------------------------------------------------------------------------
# hostile files
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=2)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy zip ``src`` to ``dst``, replacing members by their name after the root folder."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            rel = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            zo.writestr(info, replace.get(rel, zi.read(info.filename)))
    return dst


def _pickle_pt(d: Path, marker: Path) -> Path:
    p = d / "plain.pt"
    p.write_bytes(_evil(marker))
    return p


def _zip_pth(d: Path, marker: Path) -> Path:
    p = d / "model.pth"
    torch.save({"state_dict": _tiny().state_dict(), "extra": _Payload(marker)}, p)
    return p


def _zip_pickle_renamed(d: Path, marker: Path) -> Path:
    buf = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buf)
    p = d / "weights.ckpt"
    p.write_bytes(buf.getvalue())
    return p


def _legacy_pt(d: Path, marker: Path) -> Path:
    p = d / "legacy.pt"
    torch.save({"model": _Payload(marker)}, p, _use_new_zipfile_serialization=False)
    return p


def _torchscript_extra(d: Path, marker: Path) -> Path:
    clean = d / "clean_ts.pt"
    torch.jit.save(torch.jit.script(_tiny()), str(clean))
    return _rewrite_zip(clean, d / "scripted.pt", {"data.pkl": _evil(marker)})


def _pt2_pickled(d: Path, marker: Path) -> Path:
    clean = d / "clean.pt2"
    torch.export.save(torch.export.export(_tiny(), (torch.zeros(1, 1, 8, 8),)), str(clean))
    name = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(clean) as z:
        root = z.namelist()[0].split("/", 1)[0]
        cfg = json.loads(z.read(f"{root}/{name}"))
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    path = cfg["config"][first]["path_name"]
    replace = {name: json.dumps(cfg).encode(), f"data/weights/{path}": _evil(marker)}
    return _rewrite_zip(clean, d / "exported.pt2", replace)


HOSTILE: dict[str, Callable[[Path, Path], Path]] = {
    "pickle .pt": _pickle_pt,
    "torch.save .pth": _zip_pth,
    "zip pickle renamed .ckpt": _zip_pickle_renamed,
    "legacy torch.save": _legacy_pt,
    "TorchScript pickled data": _torchscript_extra,
    ".pt2 pickled weight": _pt2_pickled,
}


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _images(n: int = 40, side: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side), dtype=np.uint8)


def _npz_bomb(path: Path) -> Path:
    """An .npz a few KB big whose array header claims 8 GiB (a zip bomb would too)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (8192, 1024, 1024)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 4096)
        z.writestr("y.npy", _npy_bytes(np.zeros(8192, np.int64)))
    return path


def _npz_deflate_bomb(path: Path, mib: int) -> Path:
    """A real deflate bomb: ``mib`` MiB of zeros compressed about 1000:1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (mib, 1024, 1024)}
            )
            zeros = b"\0" * (1 << 20)
            for _ in range(mib):
                f.write(zeros)
        z.writestr("y.npy", _npy_bytes(np.zeros(mib, np.int64)))
    return path


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _huge_not_zip(path: Path) -> Path:
    with open(path, "wb") as f:
        f.write(b"NOTAZIP!")
        f.truncate(3 << 30)  # sparse: 3 GB that would take seconds to read
    return path


def _object_npz(path: Path) -> Path:
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64))
    return path


def _bomb_folder(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (12, 12), i * 40).save(root / c / f"{i}.png")
    # a PNG header claiming 200000 x 200000 pixels: PIL's DecompressionBombError
    Image.new("L", (1, 1)).save(root / "a" / "bomb.png")
    raw = bytearray((root / "a" / "bomb.png").read_bytes())
    raw[16:24] = (200000).to_bytes(4, "big") * 2
    (root / "a" / "bomb.png").write_bytes(bytes(raw))
    return root


def _broken_target(path: Path, field: str, value: str) -> Path:
    src = (Path(kd_compile.__file__).parent / "targets" / "t4.toml").read_text(encoding="utf-8")
    lines = [f"{field} = {value}" if ln.split("=")[0].strip() == field else ln for ln in src.splitlines()]
    if f"{field} = {value}" not in lines:  # an optional field the profile leaves out
        lines.insert(0, f"{field} = {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    teacher: Path
    tmp: Path

    @property
    def out(self) -> str:
        return str(self.tmp / "out")


def _opt(*args: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [str(c.teacher), "--out", c.out, *args]


def _teacher(make: Callable[[Path], Path]) -> Callable[[Ctx], list[str]]:
    return lambda c: [str(make(c.tmp)), "--out", c.out]


def _data(make: Callable[[Path], Path | str]) -> Callable[[Ctx], list[str]]:
    return lambda c: [str(c.teacher), "--out", c.out, "--data", str(make(c.tmp))]


def _text_file(d: Path) -> Path:
    (d / "notes.pt").write_text("this is not a checkpoint\n")
    return d / "notes.pt"


def _empty_file(d: Path) -> Path:
    (d / "empty.pt").write_bytes(b"")
    return d / "empty.pt"


def _folder_teacher(d: Path) -> Path:
    (d / "teacher.pt").mkdir()
    return d / "teacher.pt"


def _zip_not_checkpoint(d: Path) -> Path:
    with zipfile.ZipFile(d / "archive.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    return d / "archive.pt"


def _empty_folder(d: Path) -> Path:
    (d / "nothing").mkdir()
    return d / "nothing"


def _file_under_file(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("x")
    return [str(c.teacher), "--out", str(c.tmp / "afile" / "out")]


def _out_is_file(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("x")
    return [str(c.teacher), "--out", str(c.tmp / "afile")]


def _resume_nothing(c: Ctx) -> list[str]:
    return [str(c.teacher), "--out", c.out, "--resume"]


def _target_file(field: str, value: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [str(c.teacher), "--out", c.out, "--target", str(_broken_target(c.tmp / "dev.toml", field, value))]


# id -> (argv builder, exit code)
CLI: dict[str, tuple[Callable[[Ctx], list[str]], int]] = {
    # options: wrong type, negative, NaN, inf, oversized
    "--budget text": (_opt("--budget", "many"), 2),
    "--budget 0": (_opt("--budget", "0"), 2),
    "--budget -3": (_opt("--budget", "-3"), 2),
    "--budget 10**30": (_opt("--budget", str(10**30)), 2),
    "--strategy-options no '='": (_opt("--strategy-options", "n_init"), 2),
    "--strategy-options unknown key": (_opt("--strategy-options", "no_such=1"), 2),
    "--strategy-options run-set key": (_opt("--strategy-options", "budget=3"), 2),
    "--strategy-options n_init=-3": (_opt("--strategy", "turbo", "--strategy-options", "n_init=-3"), 2),
    "--strategy-options n_candidates=1e12": (_opt("--strategy", "turbo", "--strategy-options", "n_candidates=1e12"), 2),
    "--strategy-options eta=1": (_opt("--strategy", "bohb", "--strategy-options", "eta=1"), 2),
    "--strategy-options length_max below length_init": (
        _opt("--strategy", "turbo-m", "--strategy-options", "length_max=0.5"), 2),
    "--strategy-options n_init=abc": (_opt("--strategy", "mobo", "--strategy-options", "n_init=abc"), 2),
    "--max-params 1e400": (_opt("--max-params", "1e400"), 2),
    "--max-params -4M": (_opt("--max-params", "-4M"), 2),
    "--max-params nan": (_opt("--max-params", "nan"), 2),
    "--max-params inf": (_opt("--max-params", "inf"), 2),
    "--max-params 10": (_opt("--max-params", "10"), 6),
    "--max-flops -1": (_opt("--max-flops", "-1"), 2),
    "--max-flops 1e400": (_opt("--max-flops", "1e400"), 2),
    "--max-latency nan": (_opt("--max-latency", "nan"), 2),
    "--max-latency -2ms": (_opt("--max-latency", "-2ms"), 2),
    "--max-latency infms": (_opt("--max-latency", "infms"), 2),
    "--max-latency fast": (_opt("--max-latency", "fast"), 2),
    "--max-memory -1MB": (_opt("--max-memory", "-1MB"), 2),
    "--max-memory lots": (_opt("--max-memory", "lots"), 2),
    "--proxy-epochs nan": (_opt("--proxy-epochs", "nan"), 2),
    "--proxy-epochs -1": (_opt("--proxy-epochs", "-1"), 2),
    "--proxy-epochs inf": (_opt("--proxy-epochs", "inf"), 2),
    "--proxy-fraction 1.5": (_opt("--proxy-fraction", "1.5"), 2),
    "--proxy-fraction nan": (_opt("--proxy-fraction", "nan"), 2),
    "--final-epochs -2": (_opt("--final-epochs", "-2"), 2),
    "--final-epochs 1e30": (_opt("--final-epochs", "1e30"), 2),
    "--time-limit nan": (_opt("--time-limit", "nan"), 2),
    "--time-limit -5": (_opt("--time-limit", "-5"), 2),
    "--lr nan": (_opt("--lr", "nan"), 2),
    "--lr -0.1": (_opt("--lr", "-0.1"), 2),
    "--lr inf": (_opt("--lr", "inf"), 2),
    "--lr 1e400": (_opt("--lr", "1e400"), 2),
    "--proxy-sparsity 1.0": (_opt("--proxy-sparsity", "1.0"), 2),
    "--proxy-patience -1": (_opt("--proxy-patience", "-1"), 2),
    "--seed -1": (_opt("--seed", "-1"), 2),
    "--seed 2**70": (_opt("--seed", str(2**70)), 2),
    "--seed text": (_opt("--seed", "x"), 2),
    "--batch-size 0": (_opt("--batch-size", "0"), 2),
    "--batch-size 10**12": (_opt("--batch-size", str(10**12)), 2),
    "--workers -3": (_opt("--workers", "-3"), 2),
    "--distiller-iterations -1": (_opt("--distiller-iterations", "-1"), 2),
    "--synthetic-images 0": (_opt("--synthetic-images", "0"), 2),
    "--synthetic-steps -1": (_opt("--synthetic-steps", "-1"), 2),
    "--min-accuracy 1.5": (_opt("--min-accuracy", "1.5"), 2),
    "--min-accuracy nan": (_opt("--min-accuracy", "nan"), 2),
    "--max-accuracy-drop -0.1": (_opt("--max-accuracy-drop", "-0.1"), 2),
    "--min-speedup -2": (_opt("--min-speedup", "-2"), 2),
    "--augment -1": (_opt("--augment", "-1"), 2),
    "--target-acc nan": (_opt("--target-acc", "nan"), 2),
    "--target-acc 2": (_opt("--target-acc", "2"), 2),
    "--crop-pct 0": (_opt("--crop-pct", "0"), 2),
    "--crop-pct nan": (_opt("--crop-pct", "nan"), 2),
    "--num-classes 0": (_opt("--num-classes", "0"), 2),
    "--input-shape 1x0x8": (_opt("--input-shape", "1x0x8"), 2),
    "--input-size -8": (_opt("--input-size", "-8"), 2),
    "--mean nan": (_opt("--mean", "nan"), 2),
    "--std 0": (_opt("--std", "0"), 2),
    "--interpolation lanczos9": (_opt("--interpolation", "lanczos9"), 2),
    "--strategy nope": (_opt("--strategy", "nope"), 2),
    "--space nope": (_opt("--space", "nope"), 2),
    "--distiller nope": (_opt("--distiller", "nope"), 2),
    "--device tpu": (_opt("--device", "tpu"), 2),
    "--latency nope": (_opt("--latency", "nope"), 2),
    # Typer usage errors: one line, exit 2
    "unknown option": (_opt("--no-such-option", "1"), 2),
    "missing option value": (lambda c: [str(c.teacher), "--out", c.out, "--budget"], 2),
    "no teacher": (lambda c: ["compile"], 2),
    "conflicting --force --resume": (_opt("--force", "--resume"), 2),
    # teachers
    "nonexistent teacher": (_teacher(lambda d: d / "missing.pt"), 3),
    "empty teacher file": (_teacher(_empty_file), 3),
    "directory as teacher": (_teacher(_folder_teacher), 3),
    "text file as teacher": (_teacher(_text_file), 3),
    "zip that is not a checkpoint": (_teacher(_zip_not_checkpoint), 3),
    "unknown timm name": (lambda c: ["timm:no_such_model_xyz", "--out", c.out], 3),
    # data
    "missing --data": (_data(lambda d: d / "missing.npz"), 4),
    "empty folder --data": (_data(_empty_folder), 4),
    "npz label 2**40": (_data(lambda d: _npz(d / "l.npz", x=_images(), y=np.full(40, 2**40))), 4),
    "npz negative label": (_data(lambda d: _npz(d / "n.npz", x=_images(), y=-np.ones(40, np.int64))), 4),
    "npz float label 1e300": (_data(lambda d: _npz(d / "f.npz", x=_images(), y=np.full(40, 1e300))), 4),
    "npz uint64 label 2**63": (_data(lambda d: _npz(d / "u.npz", x=_images(), y=np.full(40, 2**63, np.uint64))), 4),
    "npz labels short": (_data(lambda d: _npz(d / "s.npz", x=_images(), y=np.zeros(3, np.int64))), 4),
    "npz images 2-D": (_data(lambda d: _npz(d / "i.npz", x=np.zeros((40, 12), np.uint8), y=np.zeros(40))), 4),
    "npz without arrays": (_data(lambda d: _npz(d / "e.npz", z=np.zeros(3))), 4),
    "npz header bomb 8 GiB": (_data(lambda d: _npz_bomb(d / "bomb.npz")), 4),
    "npz object array": (_data(lambda d: _object_npz(d / "obj.npz")), 4),
    "npz 3 GB not a zip": (_data(lambda d: _huge_not_zip(d / "huge.npz")), 4),
    "unknown data name": (_data(lambda d: "no-such-dataset"), 4),
    # targets
    "unknown target": (_opt("--target", "rtx2080"), 5),
    "target file missing": (_opt("--target", "/nonexistent/dev.toml"), 5),
    "target negative launch overhead": (_target_file("launch_overhead_us", "-5.0"), 5),
    "target NaN bandwidth": (_target_file("memory_bandwidth_gbs", "nan"), 5),
    "target inf memory": (_target_file("memory_gb", "inf"), 5),
    "target name is a path": (_target_file("name", '"../../etc"'), 5),
    "target kind wrong type": (_target_file("kind", "3"), 5),
    # output folder
    "--out under a regular file": (_file_under_file, 7),
    "--out is a regular file": (_out_is_file, 7),
    "--resume without a journal": (_resume_nothing, 11),
}


# the reporter's stage lines ("[12:00:00] loading teacher"; without a terminal, no time)
_PROGRESS = re.compile(r"^(\[\d\d:\d\d:\d\d\])? +\S")


def _assert_one_line(output: str, case: str) -> str:
    """The one error line of ``output``: no traceback, no internal error, nothing else but
    progress lines."""
    out = output.strip()
    assert "Traceback" not in out, f"{case}: {out}"
    assert "internal error" not in out, f"{case}: {out}"
    assert "Usage:" not in out and "\u256d" not in out, f"{case}: a usage panel:\n{out}"
    lines = [ln for ln in out.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    assert len(lines) == 1, f"{case}: not one line:\n{out}"
    assert lines[0].startswith("kd-compile: error:"), f"{case}: {out}"
    return lines[0]


@pytest.fixture()
def ctx(digits_teacher: Path, tmp_path: Path) -> Ctx:
    return Ctx(digits_teacher, tmp_path)


@pytest.mark.parametrize("case", list(CLI), ids=list(CLI))
def test_cli_bad_input(ctx: Ctx, case: str) -> None:
    build, code = CLI[case]
    argv = build(ctx)
    res = runner.invoke(app, argv)
    out = _assert_one_line(res.output, case)
    assert res.exit_code == code, f"{case}: exit {res.exit_code}, want {code}: {out}"
    if case not in ("--out is a regular file",):
        assert not (ctx.tmp / "out" / "student.pt").exists()


@pytest.mark.parametrize("kind", list(HOSTILE), ids=list(HOSTILE))
@pytest.mark.parametrize("command", ["compile", "profile"])
def test_malicious_checkpoint_runs_nothing(tmp_path: Path, kind: str, command: str) -> None:
    marker = tmp_path / "MARKER"
    path = HOSTILE[kind](tmp_path, marker)
    argv = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "compile" else [])
    res = runner.invoke(app, argv)
    out = _assert_one_line(res.output, kind)
    assert res.exit_code == 3, out
    assert not marker.exists(), f"{kind}: the payload ran"
    assert not (tmp_path / "out").exists()


# API: wrong Python types and values -> the same exceptions and codes
API: dict[str, tuple[dict[str, Any], int]] = {
    "out=123": ({"out": 123}, 2),
    "seed='x'": ({"seed": "x"}, 2),
    "seed=1.5": ({"seed": 1.5}, 2),
    "seed=True": ({"seed": True}, 2),
    "budget=True": ({"budget": True}, 2),
    "budget=-1": ({"budget": -1}, 2),
    "budget=nan": ({"budget": float("nan")}, 2),
    "workers=-3": ({"workers": -3}, 2),
    "lr=nan": ({"lr": float("nan")}, 2),
    "lr=inf": ({"lr": float("inf")}, 2),
    "lr='fast'": ({"lr": "fast"}, 2),
    "proxy_epochs=-1": ({"proxy_epochs": -1}, 2),
    "max_params=1e400": ({"max_params": "1e400"}, 2),
    "max_params=[1]": ({"max_params": [1]}, 2),
    "batch_size=2.5": ({"batch_size": 2.5}, 2),
    "batch_size='big'": ({"batch_size": "big"}, 2),
    "target=42": ({"target": 42}, 2),
    "unknown option": ({"no_such_option": 1}, 2),
    "strategy_options unknown": ({"strategy": "sobol", "strategy_options": {"n_init": 3}}, 2),
    "strategy_options wrong type": ({"strategy": "turbo", "strategy_options": "learn_constraints=maybe"}, 2),
    "data missing": ({"data": "/nonexistent/data.npz"}, 4),
    "target unknown": ({"target": "rtx2080"}, 5),
}


@pytest.mark.parametrize("case", list(API), ids=list(API))
def test_api_bad_input(ctx: Ctx, case: str) -> None:
    kwargs, code = API[case]
    kwargs = {"out": ctx.out, **kwargs}
    with pytest.raises(KdCompileError) as e:
        kd_compile.compile(str(ctx.teacher), **kwargs)
    assert e.value.exit_code == code, f"{case}: {type(e.value).__name__}: {e.value}"
    assert "\n" not in e.value.line()
    assert not (ctx.tmp / "out" / "student.pt").exists()


def test_api_bad_teacher_type(tmp_path: Path) -> None:
    with pytest.raises(KdCompileError) as e:
        kd_compile.compile(12345, out=tmp_path / "o")  # type: ignore[arg-type]
    assert e.value.exit_code in (2, 3)


def test_read_only_out(ctx: Ctx) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    ro = ctx.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = runner.invoke(app, [str(ctx.teacher), "--out", str(ro / "out")])
        out = _assert_one_line(res.output, "read-only")
        assert res.exit_code == 7, out
    finally:
        ro.chmod(0o700)


def test_imagefolder_bomb_is_skipped_and_counted(tmp_path: Path) -> None:
    from kd_compile.data.files import load_folder

    root = _bomb_folder(tmp_path / "imgs")
    # 1 of 7 is more than the 1% allowed: refused, naming the file and the count
    with pytest.raises(KdCompileError, match=r"bomb\.png.*1 of 7 images are unreadable") as e:
        load_folder(root, image_size=12, seed=0)
    assert e.value.exit_code == 4
    # among enough good images the bomb is skipped and counted
    from PIL import Image

    for c in ("a", "b"):
        for i in range(3, 60):
            Image.new("L", (12, 12), i).save(root / c / f"{i}.png")
    raw = load_folder(root, image_size=12, seed=0)
    assert raw.meta["skipped_images"] == 1
    n = sum(len(a) for a in (raw.x_train, raw.x_val, raw.x_test) if a is not None)
    assert n == 120


def test_a_run_names_the_unreadable_images_it_left_out(tmp_path: Path) -> None:
    """One corrupt file among 120 good ones is left out (under the 1% refusal), and the run says
    so: a line in the log and a warning in report.json naming the file, and the count in run.data."""
    from PIL import Image

    from kd_compile.data import load_data
    from kd_compile.distill import TrainConfig, train_student
    from kd_compile.export import space_kwargs
    from kd_compile.students import create_space
    from kd_compile.teacher import save_checkpoint

    root = tmp_path / "imgs"
    for c, shade in (("dark", 40), ("light", 200)):
        (root / c).mkdir(parents=True)
        for i in range(60):
            Image.new("L", (12, 12), shade + i % 20).save(root / c / f"{i}.png")
    (root / "dark" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a PNG")
    data = load_data(str(root), image_size=12)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=2, max_depth=2)
    config = space.validate({**space.default(), "depth": 2})
    torch.manual_seed(0)
    model = space.build(config)
    train_student(model, data, TrainConfig(epochs=2, use_kd=False, seed=0))
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, space="cnn", space_kwargs=space_kwargs(space), config=config,
                    state_dict=model.state_dict(), meta={"normalize": {"mean": list(data.mean), "std": list(data.std)}})
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [str(teacher), "--data", str(root), "--target", "2080ti", "--budget", "1",
                                   "--proxy-epochs", "0.2", "--final-epochs", "0.2", "--max-latency", "none",
                                   "--no-compare-ce", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 unreadable image(s) left out" in " ".join(res.output.split())
    r = json.loads((out / "report.json").read_text())
    assert r["run"]["data"]["skipped_images"] == 1
    assert any("corrupt.png" in w and "unreadable" in w for w in r["warnings"])


def test_deflate_bomb_is_refused_before_decompressing(tmp_path: Path, monkeypatch) -> None:
    """The limit is checked on the declared sizes: a 256 MiB bomb (256 KB on disk) against a
    64 MiB limit is refused before any of it is inflated."""
    import time

    from kd_compile.data import files

    path = _npz_deflate_bomb(tmp_path / "bomb.npz", 256)
    assert path.stat().st_size < 2 << 20
    monkeypatch.setattr(files, "MAX_NPZ_BYTES", 64 << 20)
    t0 = time.perf_counter()
    with pytest.raises(KdCompileError, match="expand to more than") as e:
        files.load_npz(path, seed=0)
    assert e.value.exit_code == 4 and time.perf_counter() - t0 < 0.5


def test_npz_checks_read_little(tmp_path: Path) -> None:
    """A 3 GB non-zip and an 8 GiB header bomb are refused in well under a second."""
    import time

    from kd_compile.data.files import load_npz

    for path in (_huge_not_zip(tmp_path / "a.npz"), _npz_bomb(tmp_path / "b.npz")):
        t0 = time.perf_counter()
        with pytest.raises(KdCompileError) as e:
            load_npz(path, seed=0)
        assert e.value.exit_code == 4 and time.perf_counter() - t0 < 1.0


def test_subprocess_cli_is_clean(tmp_path: Path) -> None:
    """The installed entry point (not only the test runner): a bad option and a missing
    teacher give one line on stderr and the exit code."""
    exe = [sys.executable, "-m", "kd_compile"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv, code in (
        (["compile", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")], 3),
        (["compile", str(tmp_path / "missing.pt"), "--budget", "nan"], 2),
        (["--no-such-flag"], 2),
    ):
        done = subprocess.run(exe + argv, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == code, (argv, done.stderr)
        _assert_one_line(done.stderr + done.stdout, " ".join(argv))
