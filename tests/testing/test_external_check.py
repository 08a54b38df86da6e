"""benchmarks/external_check.py: its transcribed table is well formed (every device a shipped target,
every model a spec kd-compile builds), and its summary counts what it says."""

from __future__ import annotations

import pytest
from bench_support import load_benchmark

from kd_compile.api import list_targets
from kd_compile.students.specs import is_spec

ec = load_benchmark("external_check.py", "external_check_bench")


def test_the_table_names_shipped_targets_and_buildable_specs() -> None:
    rows = ec.read_rows()
    assert len(rows) == 11  # the provenance lines (#) are not rows
    targets = set(list_targets())
    for r in rows:
        assert r["device"] in targets, r
        assert is_spec(r["spec"]), r
        assert r["precision"] in ("fp32", "fp16") and int(r["batch"]) == 256 and float(r["images_per_s"]) > 0
    # one row per (device, model, precision)
    assert len({(r["device"], r["model"], r["precision"]) for r in rows}) == len(rows)


def test_summary_counts_errors_and_band_hits() -> None:
    res = [{"ratio": 1.10, "inside_p80": True}, {"ratio": 2.0, "inside_p80": False},
           {"ratio": 0.70, "inside_p80": False}, {"ratio": 1.36, "inside_p80": True}]
    s = ec.summary(res)
    assert s["n"] == 4
    assert s["median_ape"] == pytest.approx(0.33)  # |ratio - 1|: .10, .30, .36, 1.0
    assert s["within_35"] == 0.5 and s["inside_p80_band"] == 0.5


def test_the_committed_results_are_what_the_shipped_predictor_gives_now(tmp_path, monkeypatch) -> None:
    """The README quotes ``benchmarks/results/external_check.json``; a predictor or calibration change
    that moves any of its rows must regenerate it (``python benchmarks/external_check.py``)."""
    import json

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))  # the shipped calibrations, not a test's own fit

    committed = json.loads(ec.OUT.read_text())
    now = ec.check(ec.read_rows())
    key = ("device", "model", "precision")
    want = {tuple(r[k] for k in key): r for r in committed["rows"]}
    got = {tuple(r[k] for k in key): r for r in now}
    assert got.keys() == want.keys()
    stale = [k for k in got if got[k]["predicted_ms"] != pytest.approx(want[k]["predicted_ms"], rel=1e-3)
             or (got[k]["band_median"], got[k]["inside_p80"]) != (want[k]["band_median"], want[k]["inside_p80"])]
    assert not stale, f"benchmarks/results/external_check.json is stale for {stale}: run benchmarks/external_check.py"
    assert ec.summary(now) == committed["summary"]


def _row(device: str, ratio: float, *, runtime: str = "torch", precision: str = "fp32", spec: str = "torchvision:x",
         small: bool = True, transfer: str = "fitted on this device", **extra) -> dict:
    return {"device": device, "runtime": runtime, "precision": precision, "batch": 12, "spec": spec, "ratio": ratio,
            "band_32px_only": small, "transfer": transfer, **extra}


def test_out_of_sample_summarises_per_gpu_and_pools_the_32px_bands() -> None:
    """Per target/runtime/precision: median and p80 |error|, median ratio, batches, input sizes and
    sources; pooled per runtime/precision over the rows whose band is HELP's 32-px one only; timm's
    rows only where they are a test of the same model on a device left out of every fit."""
    timm = dict(runtime="torch", precision="fp16", small=False, batch=1024)
    doc = ec.out_of_sample({
        "b12": [_row("2080ti", 2.0), _row("2080ti", 1.5), _row("2080ti", 1.0), _row("a100", 0.8, small=False)],
        "dle": [_row("v100", 3.0, transfer="device left out")],
        "timm": [_row("rtx5090", 1.1, spec="timm:a@160", role="test", same_model=True, transfer="device left out",
                      **timm),
                 _row("rtx5090", 9.0, spec="timm:b@160", role="validation", same_model=True,
                      transfer="device left out", **timm),
                 _row("rtx5090", 9.0, spec="timm:c@160", role="test", same_model=False, transfer="device left out",
                      **timm),
                 _row("rtx4090", 9.0, spec="timm:d@160", role="test", same_model=True, **timm)],
    })
    e = doc["entries"]
    assert set(e) == {"2080ti/torch/fp32", "a100/torch/fp32", "v100/torch/fp32", "rtx5090/torch/fp16"}
    assert e["2080ti/torch/fp32"]["n"] == 3 and e["2080ti/torch/fp32"]["median_ratio"] == 1.5
    assert e["2080ti/torch/fp32"]["median_ape"] == 0.5 and e["2080ti/torch/fp32"]["p80_ape"] == pytest.approx(0.8)
    assert e["2080ti/torch/fp32"]["sources"] == ["ryujaehun/pytorch-gpu-benchmark"]
    assert e["2080ti/torch/fp32"]["input_px"] == [224] and e["2080ti/torch/fp32"]["batches"] == [12]
    assert e["rtx5090/torch/fp16"] == {"n": 1, "median_ape": pytest.approx(0.1), "p80_ape": pytest.approx(0.1),
                                       "median_ratio": 1.1, "batches": [1024], "input_px": [160],
                                       "sources": ["timm's benchmark tables"]}
    pooled = doc["small_input_bands"]
    assert set(pooled) == {"torch/fp32"}  # the A100's band is not a 32-px one, nor rtx5090's
    assert pooled["torch/fp32"]["median_ratio_by_device"] == {"2080ti": 1.5, "v100": 3.0}
    assert pooled["torch/fp32"]["n"] == 4 and pooled["torch/fp32"]["median_ape"] == pytest.approx(0.75)


def test_the_shipped_out_of_sample_summary_is_that_of_the_committed_results() -> None:
    """``kd_compile/targets/calibration/_out_of_sample.json`` is written from the same rows as
    ``benchmarks/results/external_check.json``, by the same run; one without the other is stale."""
    import json

    committed = json.loads(ec.OUT.read_text())
    want = ec.out_of_sample({"dle": committed["rows"], "b12": committed["batch12"]["rows"],
                             "timm": committed["timm_unfitted"]["rows"]})
    assert json.loads(ec.PACKAGE_OUT.read_text()) == want
