"""A CPU profile without a table of its own: its eager batch-1 band is the error on HELP's four Xeons,
each predicted from its datasheet alone (``kd_compile.calibrate.cpus``), no longer "unvalidated"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kd_compile
from kd_compile.calibrate.cpus import (
    CPU_PROFILES_DIR,
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


def test_each_of_helps_cpus_has_a_profile_that_cites_its_datasheet() -> None:
    profiles = cpu_profiles()
    assert sorted(profiles) == sorted(HELP_CPUS.values()) == sorted(p.stem for p in CPU_PROFILES_DIR.glob("*.toml"))
    for name, prof in profiles.items():
        assert prof.kind == "cpu" and not prof.local
        assert any("ark.intel.com" in s for s in prof.sources), name
        cores, ghz = prof.compute_units, float(prof.sources[0].split("base ")[1].split(" GHz")[0])
        fma = 64 if "gold" in name else 32  # Gold 6xxx: two AVX-512 FMA units; Silver: one
        assert prof.peak_tflops["fp32"] == pytest.approx(cores * ghz * fma / 1000, abs=1e-3), name


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
def test_the_shipped_cpu_band_is_the_datasheet_error_on_helps_xeons() -> None:
    """Recomputing the band from the tables and the shipped all-device constants gives the shipped one,
    and it is each row's error as a profile without a calibration predicts it."""
    shared = _shared()
    constants = Constants.from_dict(shared["constants"])
    problem = cpu_problem()
    got = cpu_transfer_bands(constants, problem)
    shipped = shared["transfer_bands"]["cpu"]
    assert set(got) == set(shipped) == {"torch/fp32/batch1"}
    band = got["torch/fp32/batch1"]
    assert band == shipped["torch/fp32/batch1"]
    assert band["devices"] == sorted(HELP_CPUS.values()) and band["n"] == len(problem.rows)
    # devices weighted equally: the pooled median lies within the per-device medians
    ape = np.abs(datasheet_predictions(problem, constants) / problem.seconds - 1)
    per_dev = [np.median(ape[problem.mask(lambda r, d=d: r.device == d)]) for d in HELP_CPUS.values()]
    assert min(per_dev) <= band["median_ape"] <= max(per_dev)
    # a profile of one of these CPUs predicts exactly what the band was measured with
    spec = problem.rows[0].spec
    prof = CPU_PROFILES_DIR / f"{problem.rows[0].device}.toml"
    p = kd_compile.profile(spec, target=str(prof), runtime="torch", precision="fp32", batch=1, method="predict")
    assert p["latency_ms"] * 1e-3 == pytest.approx(datasheet_predictions(problem, constants)[0], rel=1e-6)


def test_a_cpu_of_the_users_carries_the_band_in_eager_and_says_unvalidated_in_onnxruntime(tmp_path: Path) -> None:
    toml = tmp_path / "mycpu.toml"
    toml.write_text((CPU_PROFILES_DIR / "xeon-gold-6240.toml").read_text(encoding="utf-8")
                    .replace('name = "xeon-gold-6240"', 'name = "mycpu"'), encoding="utf-8")
    mine = get_target(str(toml))
    shipped = _shared()["transfer_bands"]["cpu"]["torch/fp32/batch1"]
    band = error_band(mine, "torch", "fp32", 1)
    assert band["median_ape"] == shipped["median_ape"] and band["p80_ape"] == shipped["p80_ape"]
    assert band["transfer"].startswith("device left out (no calibration file for 'mycpu')")
    assert "Xeon CPUs predicted from their datasheets alone" in band["basis"]
    assert error_band(mine, "onnxruntime", "fp32", 1)["median_ape"] is None  # no other CPU measured in ORT
    # the built-in cpu target keeps its own table's band
    assert error_band(get_target("cpu"), "torch", "fp32", 1)["transfer"] == "fitted on this device"
    # a 224-px model: the band was measured on 32-px networks, and the caveat says no CPU table covers it
    big = kd_compile.profile("timm:resnet18", target=str(toml), runtime="torch", method="predict")
    big = big["extra"]["error_band"]
    assert "measured on 32-px networks only" in big["caveat"] and "another CPU" in big["caveat"]
    assert "GPU" not in big["caveat"]
    small = kd_compile.profile("timm:resnet18", target=str(toml), runtime="torch", method="predict", image_size=32)
    assert "caveat" not in small["extra"]["error_band"]


def test_targets_show_says_which_runtime_of_a_cpu_of_yours_has_a_band() -> None:
    from typer.testing import CliRunner

    from kd_compile.cli import app

    band = _shared()["transfer_bands"]["cpu"]["torch/fp32/batch1"]["median_ape"]
    res = CliRunner().invoke(app, ["targets", "show", str(CPU_PROFILES_DIR / "xeon-gold-6226.toml")])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("latency"))
    assert line.split(None, 1)[1] == f"predicted, uncalibrated in onnxruntime (torch ±{100 * band:.0f}%)"
    res = CliRunner().invoke(app, ["targets", "show", "t4"])
    assert "uncalibrated" not in res.output
