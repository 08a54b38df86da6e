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
