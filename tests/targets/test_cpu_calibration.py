"""The ``cpu`` target's calibration: fitted on kd-compile's own ONNX Runtime and eager PyTorch tables
of the development VM (``benchmarks/cpu_table.py``), so a CPU prediction carries a measured band, not
"unvalidated"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_compile.calibrate.fit import CPU_FITTED, RIDGE
from kd_compile.calibrate.tables import BUNDLED_DIR, read_timm_table
from kd_compile.profilers.error_bands import CALIBRATION_DIR, error_band
from kd_compile.targets import get_target

TABLE = BUNDLED_DIR / "cpu-onnxruntime-fp32-b1-devvm.csv"
TORCH_TABLE = BUNDLED_DIR / "cpu-torch-fp32-b1-devvm.csv"
SHIPPED = CALIBRATION_DIR / "cpu.json"


def test_the_shipped_cpu_calibration_is_the_fit_of_the_shipped_table(tmp_path: Path) -> None:
    """Refitting the shipped tables with ``kd-compile calibrate`` 's own function, ONNX Runtime's then
    eager PyTorch's into the same file (as ``benchmarks/cpu_table.py --write-calibration``), gives the
    shipped file's constants, scales and bands: the file is what the tables say, not a hand-edited number."""
    from kd_compile.calibrate.write import calibrate

    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    res = calibrate("cpu", [TABLE], "onnxruntime", "fp32", out=tmp_path / "cpu.json")
    # to 0.1%: a solver on another CPU may end a rounding step away
    same = pytest.approx
    scales = shipped["device_scales"]
    assert res["device_scales"]["roofline"] == same(scales["roofline_by_runtime"]["onnxruntime"], rel=1e-3)
    assert res["device_scales"]["fixed"]["onnxruntime"] == same(scales["fixed"]["onnxruntime"], rel=1e-3)
    assert res["constants"] == same(shipped["constants"], rel=1e-3)
    torch = calibrate("cpu", [TORCH_TABLE], "torch", "fp32", out=tmp_path / "cpu.json")
    assert torch["constants"] == res["constants"]  # kept: the ONNX Runtime band was measured with them
    assert torch["device_scales"]["roofline"] == same(scales["roofline_by_runtime"]["torch"], rel=1e-3)
    assert torch["device_scales"]["fixed"]["torch"] == same(scales["fixed"]["torch"], rel=1e-3)
    assert torch["error_band"]["median_ape"] == same(
        shipped["error_bands"]["torch/fp32/batch1"]["median_ape"], rel=1e-3)
    both = json.loads((tmp_path / "cpu.json").read_text(encoding="utf-8"))
    assert both["error_bands"]["onnxruntime/fp32/batch1"] == res["error_band"]
    assert both["device_scales"]["fixed"] == same(scales["fixed"], rel=1e-3)
    # the CPU's own constants (CPU_FITTED) moved off the all-device fit's; the others are that fit's
    gpu_fit = json.loads((CALIBRATION_DIR / "_all_devices.json").read_text(encoding="utf-8"))["constants"]
    own = {k for k, v in shipped["constants"].items() if v != gpu_fit[k]}
    assert own == set(CPU_FITTED) and shipped["constants"]["e_dw"] > 2 * gpu_fit["e_dw"]
    assert shipped["constants_basis"].endswith("e_dw fitted on this CPU's table")
    assert shipped["device_scales_fitted_on"] == [TABLE.name, TORCH_TABLE.name]
    assert shipped["device_scales_ridge"] == RIDGE
    band = shipped["error_bands"]["onnxruntime/fp32/batch1"]
    assert res["error_band"]["median_ape"] == same(band["median_ape"], rel=1e-3)
    assert band["transfer"] == "fitted on this device"
    # a CPU's own rows are not pulled toward the GPU fit: the compute scale moves well off 1
    assert scales["roofline_by_runtime"]["onnxruntime"] < 0.9
    assert len(read_timm_table(TABLE, "cpu", "onnxruntime", "fp32")) >= 50
    assert len(read_timm_table(TORCH_TABLE, "cpu", "torch", "fp32")) >= 50


@pytest.mark.parametrize(("runtime", "table"), [("onnxruntime", TABLE), ("torch", TORCH_TABLE)])
def test_a_cpu_prediction_carries_the_measured_band(runtime: str, table: Path) -> None:
    band = error_band(get_target("cpu"), runtime, "fp32", 1)
    assert band["median_ape"] is not None and 0 < band["median_ape"] < band["p80_ape"] < 1
    assert band["transfer"] == "fitted on this device" and band["files"] == [table.name]
    # what no table measured stays unvalidated, and says so
    assert error_band(get_target("cpu"), runtime, "fp32", 32)["median_ape"] is None
    assert error_band(get_target("cpu"), "inductor", "fp32", 1)["median_ape"] is None


def test_a_second_runtimes_table_keeps_the_constants_the_first_ones_band_was_measured_with(tmp_path: Path) -> None:
    """A CPU fits its own constants (``CPU_FITTED``) on the first runtime's table calibrated into a
    file; a table of another runtime then fits its scales alone, so the band the file already holds
    stays true. Without such a band (a fresh file, or the same runtime again) the constants are fitted."""
    from kd_compile.calibrate.write import calibrate

    n = 24  # models of each table: enough for every fold, and quick
    torch_first = calibrate("cpu", [TORCH_TABLE], "torch", "fp32", models=n, out=tmp_path / "a.json")
    ort_after = calibrate("cpu", [TABLE], "onnxruntime", "fp32", models=n, out=tmp_path / "a.json")
    ort_alone = calibrate("cpu", [TABLE], "onnxruntime", "fp32", models=n, out=tmp_path / "b.json")
    assert ort_after["constants"] == torch_first["constants"] != ort_alone["constants"]
    assert torch_first["constants"]["e_dw"] != ort_alone["constants"]["e_dw"]
    doc = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert doc["error_bands"]["torch/fp32/batch1"] == torch_first["error_band"]
    assert doc["constants"] == torch_first["constants"]
    again = calibrate("cpu", [TABLE], "onnxruntime", "fp32", models=n, out=tmp_path / "b.json")  # its own: refitted
    assert again["constants"] == ort_alone["constants"]


@pytest.mark.parametrize(("spec", "runtime"), [
    ("timm:resnet18", "onnxruntime"), ("timm:resnet18", "torch"),
    ("nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     "onnxruntime")])
def test_profile_predict_on_cpu_prints_the_band(spec: str, runtime: str) -> None:
    from typer.testing import CliRunner

    from kd_compile.cli import app

    res = CliRunner().invoke(app, ["profile", spec, "--target", "cpu", "--runtime", runtime, "--method", "predict",
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    band = doc["extra"]["error_band"]
    assert doc["method"] == "predicted" and doc["runtime"] == runtime
    assert band["median_ape"] == error_band(get_target("cpu"), runtime, "fp32", 1)["median_ape"] is not None
    assert doc["extra"]["calibration"] == "cpu.json"


def test_each_fold_is_fitted_without_the_rows_it_predicts() -> None:
    """The band is held out: every fold's fit (a CPU's own constants and scales) sees none of the
    models it predicts, and every row is predicted once."""
    import numpy as np

    from kd_compile.calibrate.fit import fit_cpu
    from kd_compile.calibrate.holdout import kfold_on_device
    from kd_compile.calibrate.problem import build_problem
    from kd_compile.profilers.constants import Constants
    from kd_compile.profilers.error_bands import SHARED_FIT, read_calibration

    cpu = get_target("cpu")
    problem = build_problem(read_timm_table(TABLE, "cpu", "onnxruntime", "fp32")[:20], profiles={"cpu": cpu})
    base = Constants.from_dict(read_calibration(SHARED_FIT.stem)["constants"])
    seen: list[np.ndarray] = []

    def fit(train: np.ndarray):  # noqa: ANN202 - the hook's own signature
        seen.append(train.copy())
        return fit_cpu(problem, train, base, "cpu", ridge=RIDGE, rounds=1)

    pred = kfold_on_device(problem, "cpu", base, fit=fit)
    assert len(seen) == 5 and np.isfinite(pred).all()
    trained = np.sum(seen, axis=0)
    assert (trained == 4).all()  # every row trains four folds and is predicted by the fifth
    assert pred.tolist() != kfold_on_device(problem, "cpu", base).tolist()  # the CPU's constants moved it


def test_a_row_measured_folded_is_counted_folded(tmp_path: Path) -> None:
    """``profile`` measures a MobileOne folded (as it deploys); a table row that says so is counted
    folded, so the fit compares like with like, while timm's own rows (no ``deploy_form``: its
    benchmark measures the model as built) stay unfolded."""
    from kd_compile.calibrate.counts import layer_costs
    from kd_compile.calibrate.tables import FOLDED, select_timm, timm_spec_parts

    table = tmp_path / "t.csv"
    table.write_text("model,infer_img_size,infer_batch_size,infer_step_time,deploy_form\n"
                     "mobileone_s0,96,1,1.0,folded\nresnet18,96,1,2.0,\nrepvgg_a0,96,1,3.0,as built\n",
                     encoding="utf-8")
    rows = read_timm_table(table, "cpu", "onnxruntime", "fp32")
    assert [r.spec for r in rows] == [f"timm:mobileone_s0@96{FOLDED}", "timm:resnet18@96", "timm:repvgg_a0@96"]
    rows = rows[:2]
    assert [r.spec for r in select_timm(rows, tables=1)] == [r.spec for r in rows]
    assert timm_spec_parts(rows[0].spec) == ("mobileone_s0", 96, True)
    costs = layer_costs(["timm:mobileone_s0@96", rows[0].spec], cache=None)
    (unfolded, p_unfolded), (folded, p_folded) = costs["timm:mobileone_s0@96"], costs[rows[0].spec]
    flops = [sum(o.flops for o in ops) for ops in (unfolded, folded)]
    assert flops[1] < 0.5 * flops[0] and len(folded) < len(unfolded) and p_folded < p_unfolded


def test_a_users_calibration_writes_no_file_of_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kd-compile calibrate`` counts a model the shipped op-count cache lacks into the user's cache
    (seeded from the shipped one), never into the package's file; a damaged user cache is counted
    again, not a traceback."""
    from kd_compile.calibrate.counts import LAYER_COSTS, layer_costs
    from kd_compile.calibrate.write import calibrate
    from kd_compile.paths import cache_dir

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "cache"))
    lines = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    header, rows = lines[0], lines[1:12]
    assert rows[0].startswith("resnet10t,96,")
    rows[0] = rows[0].replace("resnet10t,96,", "resnet10t,72,", 1)  # a size the shipped cache lacks
    table = tmp_path / "mine.csv"
    table.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    shipped = LAYER_COSTS.read_bytes()
    res = calibrate("cpu", [table], "onnxruntime", "fp32", out=tmp_path / "cpu.json")
    assert "timm:resnet10t@72" in res["models"] and LAYER_COSTS.read_bytes() == shipped
    user = cache_dir("calibration") / "layer_costs.json"
    counted = layer_costs(["timm:resnet10t@72", "timm:resnet18@160"], cache=user, seed=LAYER_COSTS)
    direct = layer_costs(["timm:resnet10t@72"], cache=None)
    assert counted["timm:resnet10t@72"] == direct["timm:resnet10t@72"] and "timm:resnet18@160" in counted
    user.write_text("{not json", encoding="utf-8")
    assert layer_costs(["timm:resnet10t@72"], cache=user, seed=LAYER_COSTS) == direct
    assert LAYER_COSTS.read_bytes() == shipped


def test_a_table_of_one_runtime_keeps_the_scales_another_runtime_set(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's table of eager PyTorch on a T4 (here: any timm-format table) adds the ``torch`` scales to
    the T4's calibration and keeps the TensorRT scales its shipped table set, so its TensorRT
    predictions (and their band) stay what they were."""
    from kd_compile.calibrate.write import calibrate
    from kd_compile.profilers.error_bands import shipped_calibration, user_calibration

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))  # this test's user calibration stays its own
    t4 = get_target("t4")
    shipped = shipped_calibration(t4)["device_scales"]
    assert "tensorrt" in shipped["fixed"] and "torch" not in shipped["fixed"]
    before = error_band(t4, "tensorrt", "fp16", 1)
    calibrate("t4", [TABLE], "torch", "fp16")  # into the user's cache
    mine = user_calibration("t4")
    assert mine is not None
    scales = mine["device_scales"]
    assert scales["fixed"]["tensorrt"] == shipped["fixed"]["tensorrt"]
    assert scales["roofline_by_runtime"]["tensorrt"] == shipped["roofline_by_runtime"]["tensorrt"]
    assert "torch" in scales["fixed"] and "torch" in scales["roofline_by_runtime"]
    assert error_band(t4, "tensorrt", "fp16", 1) == before
    assert mine["device_scales_fitted_on"][-1] == TABLE.name


def test_a_cpu_of_the_users_without_a_table_says_how_to_fit_one(tmp_path: Path) -> None:
    toml = tmp_path / "mycpu.toml"
    text = (CALIBRATION_DIR.parent / "cpu.toml").read_text(encoding="utf-8")
    toml.write_text(text.replace('name = "cpu"', 'name = "mycpu"').replace("local = true", "local = false"),
                    encoding="utf-8")
    # batch 1 carries the bands measured on other CPUs (tests/targets/test_cpu_transfer.py); batch 64 none
    band = error_band(get_target(str(toml)), "onnxruntime", "fp32", 64)
    assert band["median_ape"] is None and band["basis"].endswith(": unvalidated")
    assert f"kd-compile calibrate --target {toml} --table T.csv --runtime onnxruntime --precision fp32" in band["basis"]


def test_a_prediction_outside_the_sizes_the_band_was_measured_at_says_so() -> None:
    """The ``cpu`` bands were measured on models at 96-256 px; a model below them (a 32-px student) is
    predicted with a caveat that quotes the check measured there (``benchmarks/cpu_table.py
    --small-check``, no fit reads it), and a model inside them gets none."""
    import kd_compile
    from kd_compile.profilers.error_bands import size_range_caveat

    cpu = get_target("cpu")
    for runtime in ("onnxruntime", "torch"):
        band = error_band(cpu, runtime, "fp32", 1)
        lo, hi = band["input_px"]
        assert (lo, hi) == (96, 256)
        check = band["small_input_check"]
        assert check["n"] >= 40 and check["input_px"] == [32, 64] and check["min_ratio"] < 1 < check["max_ratio"]
        small = size_range_caveat(band, 32)
        assert small is not None and "outside the 96-256 px" in small and f"on {check['n']} models at 32-64 px" in small
        assert f"±{100 * check['median_ape']:.0f}% median" in small
        assert size_range_caveat(band, 160) is None
        above = size_range_caveat(band, 384)
        assert above is not None and "384 px, outside" in above and "models at 32-64" not in above
    assert size_range_caveat({"median_ape": 0.1}, 20) is None  # a band that does not say its sizes
    at = {px: kd_compile.profile("timm:resnet18", target="cpu", image_size=px, method="predict")
          for px in (32, 160)}
    assert "outside the 96-256 px" in at[32]["extra"]["error_band"]["caveat"]
    assert "caveat" not in at[160]["extra"]["error_band"]
