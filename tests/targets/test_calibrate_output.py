"""``kd-compile calibrate`` writes where the user can see it, never into the installed package,
and names read from files never leave their folder; bad tables are usage errors (issue 14)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kd_compile.calibrate import DEFAULT_DATA_DIR
from kd_compile.calibrate.write import calibration_path
from kd_compile.cli import app
from kd_compile.errors import UsageError
from kd_compile.profilers.error_bands import CALIBRATION_DIR

TABLE = DEFAULT_DATA_DIR / "benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(), reason=f"measured table not present: {TABLE}")
runner = CliRunner()


def _package_state() -> dict[str, str]:
    files = sorted(p for p in CALIBRATION_DIR.iterdir() if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _calibrate(*extra: str):
    return runner.invoke(app, ["calibrate", "--target", "rtx3090", "--table", str(TABLE), "--models", "12", *extra])


@needs_table
def test_without_out_it_writes_to_the_user_cache_and_says_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    before = _package_state()
    res = _calibrate()
    assert res.exit_code == 0, res.output
    written = tmp_path / "cache" / "calibration" / "rtx3090.json"
    assert written.is_file() and f"written to {written}" in res.output
    # the sizes the band was measured at, as a prediction outside them will say
    px = json.loads(written.read_text(encoding="utf-8"))["error_bands"]["torch/fp16/large"]["input_px"]
    assert f"12 models at {px[0]}-{px[1]} px" in res.output
    assert _package_state() == before  # the installed package is untouched
    from kd_compile.profilers.error_bands import read_calibration

    shipped = json.loads((CALIBRATION_DIR / "rtx3090.json").read_text(encoding="utf-8"))
    assert read_calibration("rtx3090") == shipped  # and so is its in-memory copy (the fit took a deep copy)


@needs_table
def test_a_device_of_your_own_toml_is_calibrated_and_keeps_its_other_bands(tmp_path: Path, monkeypatch) -> None:
    """``--target my.toml`` (a device no built-in profile describes): the fit runs on the TOML's
    specs, is written under its name, and the regimes it did not measure keep the device-left-out
    bands, which ``profile`` then prints beside the band of the measured regime."""
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    toml = tmp_path / "my-gpu.toml"
    text = (CALIBRATION_DIR.parent / "rtx3090.toml").read_text(encoding="utf-8")
    toml.write_text(text.replace('name = "rtx3090"', 'name = "my-gpu"'), encoding="utf-8")
    res = runner.invoke(app, ["calibrate", "--target", str(toml), "--table", str(TABLE), "--models", "12"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "cache" / "calibration" / "my-gpu.json").read_text(encoding="utf-8"))
    assert doc["target"] == "my-gpu" and doc["device_scales"]
    bands = doc["error_bands"]
    assert bands["torch/fp16/large"]["transfer"] == "fitted on this device"
    assert "device left out (no calibration file for 'my-gpu')" in bands["tensorrt/fp16/batch1"]["transfer"]
    res = runner.invoke(app, ["profile", "timm:resnet18", "--target", str(toml), "--json"])
    assert res.exit_code == 0, res.output
    band = json.loads(res.output)["extra"]["error_band"]
    assert band["regime"] == "tensorrt/fp16/batch1" and band["median_ape"] > 0


def test_a_user_toml_reusing_a_built_in_name_gets_no_shipped_calibration(tmp_path: Path) -> None:
    """The shipped file was fitted for the built-in profile's numbers; a user's TOML of the same
    name may hold others, so neither its predictions nor its calibration start from that file."""
    from kd_compile.profilers.error_bands import shipped_calibration
    from kd_compile.targets import get_target

    assert shipped_calibration(get_target("t4"))["target"] == "t4"
    toml = tmp_path / "t4.toml"
    toml.write_text((CALIBRATION_DIR.parent / "t4.toml").read_text(encoding="utf-8"), encoding="utf-8")
    assert shipped_calibration(get_target(str(toml))) is None


@needs_table
def test_out_folder_gets_the_target_file_and_no_temp_file(tmp_path: Path) -> None:
    res = _calibrate("--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["rtx3090.json"]
    from kd_compile.calibrate.write import shipped_ridge

    doc = json.loads((tmp_path / "rtx3090.json").read_text(encoding="utf-8"))
    assert doc["device_scales_ridge"] == shipped_ridge()  # the pull the shipped calibration chose


@needs_table
def test_an_existing_out_that_is_not_calibration_json_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "mine.json"
    out.write_text("precious notes, not JSON")
    res = _calibrate("--out", str(out))
    assert res.exit_code == UsageError.exit_code and "not a calibration JSON" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert out.read_text() == "precious notes, not JSON"


@pytest.mark.parametrize("name", ["..", "../evil", "a/b", "", ".", "a\\b"])
def test_a_name_never_becomes_a_path(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        calibration_path(name, None)
    with pytest.raises(UsageError):
        calibration_path(name, tmp_path)


def test_calibration_path_defaults_outside_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))
    assert calibration_path("t4", None) == tmp_path / "calibration" / "t4.json"
    assert CALIBRATION_DIR not in calibration_path("t4", None).parents
    assert calibration_path("t4", tmp_path / "x.json") == tmp_path / "x.json"


BAD_TABLES = {
    "not UTF-8": b"model,infer_img_size\n\xff\xfe\xfa,224\n",
    "no rows": b"model,infer_img_size,infer_batch_size,infer_step_time\n",
    "NaN and negative times": (
        b"model,infer_img_size,infer_batch_size,infer_step_time\n"
        + b"".join(f"resnet{i},224,256,{t}\n".encode() for i, t in enumerate(["nan", "-3.0", "inf", "0"] * 5))
    ),
    "path-like model names": (
        b"model,infer_img_size,infer_batch_size,infer_step_time\n"
        + b"".join(f"../../m{i},224,256,12.5\n".encode() for i in range(20))
    ),
    "absurd sizes": (
        b"model,infer_img_size,infer_batch_size,infer_step_time\n"
        + b"".join(f"resnet18,{10**12},{-i},12.5\n".encode() for i in range(20))
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES), ids=list(BAD_TABLES))
def test_a_bad_table_is_a_usage_error(tmp_path: Path, monkeypatch, case: str) -> None:
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "table.csv"
    table.write_bytes(BAD_TABLES[case])
    res = runner.invoke(app, ["calibrate", "--target", "rtx3090", "--table", str(table)])
    assert res.exit_code == UsageError.exit_code, res.output
    out = res.output.strip()
    assert len(out.splitlines()) == 1 and out.startswith("kd-compile: error:") and "internal error" not in out
    assert not (tmp_path / "cache" / "calibration").exists()


def test_a_huge_table_is_not_read(tmp_path: Path) -> None:
    table = tmp_path / "huge.csv"
    with open(table, "wb") as f:
        f.truncate(1 << 30)  # sparse
    res = runner.invoke(app, ["calibrate", "--target", "rtx3090", "--table", str(table)])
    assert res.exit_code == UsageError.exit_code and "too large" in res.output
    assert os.path.getsize(table) == 1 << 30


@needs_table
def test_the_users_calibration_is_what_later_predictions_use(tmp_path: Path, monkeypatch) -> None:
    """A fit written to the user cache (no --out) is read back: later predictions for that target
    use its device scales and say where the calibration came from; a damaged file is ignored."""
    from kd_compile.profilers.roofline import load_calibration
    from kd_compile.targets import get_target

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    _, shipped_scales, shipped = load_calibration(get_target("rtx3090"))
    res = _calibrate()
    assert res.exit_code == 0, res.output
    written = tmp_path / "cache" / "calibration" / "rtx3090.json"
    _, scales, where = load_calibration(get_target("rtx3090"))
    assert str(written) in where["calibration"] and str(written) not in shipped["calibration"]
    import json

    assert scales.to_dict() == json.loads(written.read_text())["device_scales"]
    written.write_text("{ not json")
    _, scales2, where2 = load_calibration(get_target("rtx3090"))
    assert where2 == shipped and scales2 == shipped_scales


def test_a_users_table_may_name_its_columns_plainly(tmp_path: Path) -> None:
    """A table of one's own device: ``model, img_size, batch, latency_ms`` reads as timm's
    ``infer_img_size, infer_batch_size, infer_step_time``; timm's ``infer_samples_per_sec`` alone
    gives the time per batch; rows with no usable time are left out; none at all is a usage error
    naming the columns."""
    from kd_compile.calibrate.tables import read_timm_table

    plain = tmp_path / "plain.csv"
    plain.write_text("model,img_size,batch,latency_ms\nresnet18,224,8,4.0\nresnet50,160,1,0\n", encoding="utf-8")
    timm_like = tmp_path / "timm.csv"
    timm_like.write_text("model,infer_img_size,infer_batch_size,infer_samples_per_sec\nresnet18,224,8,2000\n",
                         encoding="utf-8")
    [a] = read_timm_table(plain, "t4", "torch", "fp16")
    [b] = read_timm_table(timm_like, "t4", "torch", "fp16")
    assert (a.spec, a.batch) == (b.spec, b.batch) == ("timm:resnet18@224", 8)
    assert a.seconds == pytest.approx(4e-3) and b.seconds == pytest.approx(8 / 2000)
    empty = tmp_path / "empty.csv"
    empty.write_text("model,size,time\nresnet18,224,4.0\n", encoding="utf-8")
    with pytest.raises(UsageError, match="latency_ms"):
        read_timm_table(empty)


@needs_table
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "cpu", "--runtime", "tensorrt", "--precision", "fp32"], "runtime 'tensorrt' runs on NVIDIA GPUs"),
        (["--target", "cpu", "--runtime", "onnxruntime"], "'cpu' has no native fp16"),  # the default fp16
        (["--target", "jetson-nano", "--precision", "bf16"], "'jetson-nano' has no bf16 tensor cores"),
        (["--target", "t4", "--runtime", "torch", "--precision", "int8"], "runs no int8 network on a GPU"),
        (["--target", "rtx3090", "--models", "0"], "--models must be a whole number >= 1, got 0"),
    ],
)
def test_a_regime_the_target_cannot_run_calibrates_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    """A table said to be TensorRT on the CPU, or bf16 on a GPU without bf16, would write a band no
    prediction can use: refused before the table is read, as profile and compile refuse the pair."""
    out = tmp_path / "cal.json"
    res = runner.invoke(app, ["calibrate", "--table", str(TABLE), "--out", str(out), *args])
    assert res.exit_code == UsageError.exit_code and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_a_table_that_is_not_a_regular_file_says_so(tmp_path: Path) -> None:
    res = runner.invoke(app, ["calibrate", "--target", "rtx3090", "--table", str(tmp_path)])
    assert res.exit_code == UsageError.exit_code and f"table is not a regular file: {tmp_path}" in res.output


def test_kd_compile_calibrate_stays_callable_once_its_package_is_imported(tmp_path: Path) -> None:
    """``kd_compile.calibrate`` is the public function and the name of a subpackage; importing the
    subpackage (as any calibration does) put the package in the function's place."""
    import kd_compile
    import kd_compile.calibrate  # noqa: F401  (Python sets the loaded package on kd_compile)

    assert callable(kd_compile.calibrate)
    with pytest.raises(UsageError, match=r"tables must be a list of CSV paths, got \[123\]"):
        kd_compile.calibrate(target="rtx3090", tables=[123])
    with pytest.raises(UsageError, match="target must be a string, got 3"):
        kd_compile.calibrate(target=3, tables=["t.csv"])
    with pytest.raises(UsageError, match=r"runtime must be a string, got \['torch'\]"):  # not a TypeError
        kd_compile.calibrate("rtx3090", ["t.csv"], runtime=["torch"])
    if TABLE.is_file():  # one table given as itself, and the CLI's defaults (eager fp16)
        res = kd_compile.calibrate("rtx3090", TABLE, models=12, out=str(tmp_path / "c.json"))
        assert (res["runtime"], res["precision"], res["quality"]["n"]) == ("torch", "fp16", 12)
        assert Path(res["written"]) == tmp_path / "c.json"
