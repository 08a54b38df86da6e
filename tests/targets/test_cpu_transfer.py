"""A CPU profile without a table of its own: its batch-1 bands are the error on the CPUs with measured
tables that no fit of the all-device constants reads (HELP's four Xeons, this project's VM), each
predicted from its datasheet alone (``kd_compile.calibrate.cpus``), no longer "unvalidated"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kd_compile
from kd_compile.calibrate.cpus import (
    CPU_PROFILES_DIR,
    DEV_VM,
    HELP_CPUS,
    cpu_problem,
    cpu_profiles,
    cpu_transfer_bands,
    datasheet_predictions,
    read_help_cpus,
)
from kd_compile.calibrate.tables import DEFAULT_DATA_DIR, NAS_SAMPLE
from kd_compile.profilers.error_bands import CALIBRATION_DIR, error_band
from kd_compile.profilers.roofline import Constants
from kd_compile.targets import get_target

SHARED = CALIBRATION_DIR / "_all_devices.json"
needs_help = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "help-nb201-latency.csv").is_file(),
                                reason="needs HELP's tables in ../shared/data/latency")


def _shared() -> dict:
    return json.loads(SHARED.read_text(encoding="utf-8"))


def test_each_cpu_measured_has_a_profile_that_cites_its_datasheet() -> None:
    profiles = cpu_profiles()
    assert sorted(profiles) == sorted([*HELP_CPUS.values(), DEV_VM])
    assert sorted(HELP_CPUS.values()) == sorted(p.stem for p in CPU_PROFILES_DIR.glob("*.toml"))
    for name in HELP_CPUS.values():
        prof = profiles[name]
        assert prof.kind == "cpu" and not prof.local
        assert any("ark.intel.com" in s for s in prof.sources), name
        cores, ghz = prof.compute_units, float(prof.sources[0].split("base ")[1].split(" GHz")[0])
        fma = 64 if "gold" in name else 32  # Gold 6xxx: two AVX-512 FMA units; Silver: one
        assert prof.peak_tflops["fp32"] == pytest.approx(cores * ghz * fma / 1000, abs=1e-3), name
    # the VM is the shipped cpu profile's datasheet, not "this machine" and not its calibration
    vm, cpu = profiles[DEV_VM], get_target("cpu")
    assert not vm.local and vm.peak_tflops == cpu.peak_tflops and vm.memory_bandwidth_gbs == cpu.memory_bandwidth_gbs


@needs_help
def test_helps_cpu_columns_are_read_for_the_sampled_architectures() -> None:
    rows = read_help_cpus()
    assert {r.device for r in rows} == set(HELP_CPUS.values())
    assert {(r.runtime, r.precision, r.batch) for r in rows} == {("torch", "fp32", 1)}
    specs = {r.spec for r in rows}
    assert len(specs) == 2 * NAS_SAMPLE and len(rows) == 4 * len(specs)
    first = next(r for r in rows if r.spec.startswith("nb201:"))
    line = next(line for line in (DEFAULT_DATA_DIR / "help-nb201-latency.csv").read_text().splitlines()
                if f",{first.spec.split(':', 1)[1]}," in line)
    header = (DEFAULT_DATA_DIR / "help-nb201-latency.csv").read_text().splitlines()[0].split(",")
    col = next(c for c, d in HELP_CPUS.items() if d == first.device)
    assert first.seconds == pytest.approx(float(line.split(",")[header.index(f"{col}_ms")]) * 1e-3)


@needs_help
def test_the_shipped_cpu_bands_are_the_datasheet_error_on_the_cpus_measured() -> None:
    """Recomputing the bands from the tables and the shipped all-device constants gives the shipped
    ones, and they are each row's error as a profile without a calibration predicts it."""
    shared = _shared()
    constants = Constants.from_dict(shared["constants"])
    problem = cpu_problem()
    got = cpu_transfer_bands(constants, problem)
    assert got == shared["transfer_bands"]["cpu"]
    assert set(got) == {"torch/fp32/batch1", "onnxruntime/fp32/batch1"}
    eager, ort = got["torch/fp32/batch1"], got["onnxruntime/fp32/batch1"]
    assert eager["devices"] == sorted([*HELP_CPUS.values(), DEV_VM]) and ort["devices"] == [DEV_VM]
    assert eager["n"] + ort["n"] == len(problem.rows)
    assert ort["input_px"] == [96, 256] and "input_px" not in eager  # eager mixes 32-px and 96-256-px tables
    # devices weighted equally: the pooled median lies within the per-device medians
    ape = np.abs(datasheet_predictions(problem, constants) / problem.seconds - 1)
    per_dev = [np.median(ape[problem.mask(lambda r, d=d: r.device == d and r.runtime == "torch")])
               for d in eager["devices"]]
    assert min(per_dev) <= eager["median_ape"] <= max(per_dev)
    # the VM's ONNX Runtime band is what benchmarks/cpu_table.py measured "before" any CPU table
    before = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "cpu_table.json")
                        .read_text(encoding="utf-8"))["before"]
    assert ort["median_ape"] == before["median_ape"] and ort["n"] == before["n"]
    # a profile of one of these CPUs predicts exactly what the band was measured with
    i = next(i for i, r in enumerate(problem.rows) if r.device != DEV_VM)
    prof = CPU_PROFILES_DIR / f"{problem.rows[i].device}.toml"
    p = kd_compile.profile(problem.rows[i].spec, target=str(prof), runtime="torch", precision="fp32", batch=1,
                           method="predict")
    assert p["latency_ms"] * 1e-3 == pytest.approx(datasheet_predictions(problem, constants)[i], rel=1e-6)


def test_a_cpu_of_the_users_carries_the_bands_measured_on_other_cpus(tmp_path: Path) -> None:
    toml = tmp_path / "mycpu.toml"
    toml.write_text((CPU_PROFILES_DIR / "xeon-gold-6240.toml").read_text(encoding="utf-8")
                    .replace('name = "xeon-gold-6240"', 'name = "mycpu"'), encoding="utf-8")
    mine = get_target(str(toml))
    shipped = _shared()["transfer_bands"]["cpu"]
    for runtime in ("torch", "onnxruntime"):
        band = error_band(mine, runtime, "fp32", 1)
        assert band["median_ape"] == shipped[f"{runtime}/fp32/batch1"]["median_ape"], runtime
        assert band["transfer"].startswith("device left out (no calibration file for 'mycpu')")
        assert "predicted from" in band["basis"] and "alone (all-device constants, unit scales):" in band["basis"]
    assert error_band(mine, "torch", "fp32", 64)["median_ape"] is None  # nothing measured a CPU at batch 64
    # the built-in cpu target keeps its own tables' bands
    assert error_band(get_target("cpu"), "torch", "fp32", 1)["transfer"] == "fitted on this device"
    # a model below the 96-256 px the ONNX Runtime band was measured at says so; eager covers 32 px too
    kw = {"target": str(toml), "method": "predict", "image_size": 32}
    small = kd_compile.profile("timm:resnet18", runtime="onnxruntime", **kw)["extra"]["error_band"]
    assert "outside the 96-256 px" in small["caveat"]
    assert "caveat" not in kd_compile.profile("timm:resnet18", runtime="torch", **kw)["extra"]["error_band"]
    big = kd_compile.profile("timm:resnet18", target=str(toml), runtime="torch", method="predict")
    assert "caveat" not in big["extra"]["error_band"]


def test_targets_show_gives_a_cpu_of_yours_its_band(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kd_compile.cli import app

    band = _shared()["transfer_bands"]["cpu"]["onnxruntime/fp32/batch1"]["median_ape"]
    res = CliRunner().invoke(app, ["targets", "show", str(CPU_PROFILES_DIR / "xeon-gold-6226.toml")])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("latency"))
    assert line.split(None, 1)[1] == f"predicted ±{100 * band:.0f}%"
    # a profile whose default runtime has no band says so, and which runtimes have one
    gpu = tmp_path / "myt4.toml"
    text = (CALIBRATION_DIR.parent / "t4.toml").read_text(encoding="utf-8")
    gpu.write_text(text.replace('name = "t4"', 'name = "myt4"')
                   .replace('default_runtime = "tensorrt"', 'default_runtime = "onnxruntime"'), encoding="utf-8")
    res = CliRunner().invoke(app, ["targets", "show", str(gpu)])
    line = next(x for x in res.output.splitlines() if x.startswith("latency"))
    trt = error_band(get_target(str(gpu)), "tensorrt", "fp16", 1)["median_ape"]
    assert line.split(None, 1)[1].startswith(f"predicted, uncalibrated in onnxruntime (tensorrt ±{100 * trt:.0f}%, ")
