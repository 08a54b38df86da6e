"""The device scales' pull toward 1 is chosen by how well scales fitted on some architecture
families predict another (``calibrate.family_ridge``), and the shipped calibration uses the value
it chose.

The behaviour tests run on the torch2trt Jetson Nano table the package ships (18 torchvision
models in four families, TensorRT and eager), so they run in CI, with latencies made to follow
the predictor: one device scale shared by every family (the scales transfer, so the weakest pull
should win), or a factor of each family's own (nothing transfers, so a strong pull should win).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kd_compile.calibrate import RIDGES, build_problem, family_ridge, kfold_on_device, predict
from kd_compile.calibrate.fit import RIDGE
from kd_compile.calibrate.tables import load_measurements
from kd_compile.profilers.roofline import CALIBRATION_DIR, SHARED_FIT, DeviceScales, load_calibration
from kd_compile.targets import get_target


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory):
    bundled = load_measurements(tmp_path_factory.mktemp("empty"))  # the bundled tables alone
    problem = build_problem([r for r in bundled if r.device == "jetson-nano"])  # the Jetson Nano's
    constants, _, _ = load_calibration(get_target("jetson-nano"))
    return problem, constants


def _with_seconds(problem, seconds: np.ndarray):
    return dataclasses.replace(problem, seconds=seconds)


def _nano_scaled(problem, constants, compute: dict, fixed: dict, memory: dict):
    """The problem with latencies that follow the predictor with these Jetson Nano scales."""
    true = DeviceScales(1.0, fixed, compute, 1.0, memory)
    everything = np.ones(len(problem.rows), bool)
    return _with_seconds(problem, predict(problem, everything, constants, {"jetson-nano": true}))


def test_the_table_spans_several_families(nano) -> None:
    problem, _ = nano
    assert len({r.family for r in problem.rows}) >= 3


def test_scales_that_transfer_across_families_get_the_weakest_pull(nano) -> None:
    problem, constants = nano
    p = _nano_scaled(problem, constants, compute={"tensorrt": 0.5, "torch": 1.8},
                     fixed={"tensorrt": 2.5, "torch": 0.6}, memory={"tensorrt": 2.0, "torch": 0.7})
    ridge, scores = family_ridge(p, np.ones(len(p.rows), bool), constants)
    assert set(scores) == set(RIDGES)
    assert ridge == min(RIDGES)
    assert scores[min(RIDGES)] < scores[max(RIDGES)]


def test_scales_that_do_not_transfer_get_a_strong_pull(nano) -> None:
    problem, constants = nano
    everything = np.ones(len(problem.rows), bool)
    fams = sorted({r.family for r in problem.rows})
    rng = np.random.default_rng(0)
    factor = dict(zip(fams, np.exp(rng.normal(0.0, 0.5, len(fams))), strict=True))  # each family its own
    base = predict(problem, everything, constants)
    p = _with_seconds(problem, base * np.array([factor[r.family] for r in problem.rows]))
    ridge, scores = family_ridge(p, everything, constants)
    assert ridge >= 3.0
    assert scores[ridge] < scores[min(RIDGES)]


def test_a_stronger_pull_keeps_the_kfold_scales_nearer_1(nano) -> None:
    problem, constants = nano
    three = {"tensorrt": 3.0, "torch": 3.0}
    p = _nano_scaled(problem, constants, compute=three, fixed=three, memory=three)
    err = {r: np.median(np.abs(np.log(kfold_on_device(p, "jetson-nano", constants, ridge=r) / p.seconds)))
           for r in (0.1, 30.0)}
    assert err[0.1] < 0.05 < err[30.0]  # the weak pull recovers the scales; the strong one holds them near 1


def test_shipped_calibration_uses_the_ridge_it_chose() -> None:
    shared = json.loads((CALIBRATION_DIR / SHARED_FIT.name).read_text(encoding="utf-8"))
    chosen = shared["device_scales_ridge"]
    scores = {float(k): v for k, v in chosen["scores"].items()}
    assert set(scores) == set(RIDGES)
    assert chosen["value"] == min(scores, key=lambda k: (scores[k], k))
    measured = [json.loads(p.read_text(encoding="utf-8")) for p in CALIBRATION_DIR.glob("*.json")
                if not p.name.startswith("_") and p.name != "layer_costs.json"]
    measured = [d for d in measured if d.get("device_scales_fitted_on")]
    gpus = [d for d in measured if get_target(d["target"]).kind != "cpu"]
    assert len(gpus) >= 10
    assert all(d["device_scales_ridge"] == chosen["value"] for d in gpus)
    # a CPU's scales are not pulled toward a GPU fit's (``write.scales_ridge``)
    assert all(d["device_scales_ridge"] == RIDGE for d in measured if d not in gpus)


def test_user_calibration_takes_the_shipped_ridge(monkeypatch: pytest.MonkeyPatch) -> None:
    from kd_compile.calibrate import fit, write

    shared = json.loads((CALIBRATION_DIR / SHARED_FIT.name).read_text(encoding="utf-8"))
    assert write.shipped_ridge() == shared["device_scales_ridge"]["value"]
    assert write.scales_ridge(get_target("t4")) == write.shipped_ridge() != fit.RIDGE
    # no GPU fit holds a CPU: its own rows take only the default pull
    assert write.scales_ridge(get_target("cpu")) == fit.RIDGE
    monkeypatch.setattr(write, "read_calibration", lambda name: None)  # no shipped fit: the default
    assert write.shipped_ridge() == fit.RIDGE
