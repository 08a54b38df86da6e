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


def test_out_of_sample_summarises_per_gpu_regime_and_source_and_pools_the_32px_bands() -> None:
    """Per target/runtime/precision/batch regime and source: median and p80 |error|, median ratio,
    batches and input sides; pooled per regime and source over the rows whose band is HELP's 32-px
    one only; timm's rows only where they are a test of the same model on a device left out of every fit."""
    timm = dict(runtime="torch", precision="fp16", small=False, batch=1024)
    ofa = dict(spec="ofa:160/2-2-2-2-2/x", batch=64)
    doc = ec.out_of_sample({
        "b12": [_row("2080ti", 2.0), _row("2080ti", 1.5), _row("2080ti", 1.0), _row("a100", 0.8, small=False)],
        "dle": [_row("v100", 3.0, transfer="device left out")],
        "ofa": [_row("2080ti", 1.1, **ofa), _row("2080ti", 0.9, spec="ofa:224/2-2-2-2-2/x", batch=32),
                _row("2080ti", 0.5, spec="ofa:224/2-2-2-2-2/x", batch=1), _row("v100", 1.2, **ofa)],
        "timm": [_row("rtx5090", 1.1, spec="timm:a@160", role="test", same_model=True, transfer="device left out",
                      **timm),
                 _row("rtx5090", 9.0, spec="timm:b@160", role="validation", same_model=True,
                      transfer="device left out", **timm),
                 _row("rtx5090", 9.0, spec="timm:c@160", role="test", same_model=False, transfer="device left out",
                      **timm),
                 _row("rtx4090", 9.0, spec="timm:d@160", role="test", same_model=True, **timm)],
    })
    e = doc["entries"]
    assert set(e) == {"2080ti/torch/fp32/large", "2080ti/torch/fp32/batch1", "a100/torch/fp32/large",
                      "v100/torch/fp32/large", "rtx5090/torch/fp16/large"}
    b12, ofa_large = e["2080ti/torch/fp32/large"]  # one summary per source, in section order
    assert b12 == {"source": "ryujaehun/pytorch-gpu-benchmark", "models": "torchvision models", "n": 3,
                   "median_ape": 0.5, "p80_ape": pytest.approx(0.8), "median_ratio": 1.5, "batches": [12],
                   "input_px": [224, 224], "families": ["other"]}
    assert ofa_large["source"] == "HELP" and ofa_large["n"] == 2 and ofa_large["median_ratio"] == pytest.approx(1.0)
    assert ofa_large["batches"] == [32, 64] and ofa_large["input_px"] == [160, 224]
    assert [x["n"] for x in e["2080ti/torch/fp32/batch1"]] == [1]  # batch 1 is a regime of its own
    assert e["rtx5090/torch/fp16/large"] == [{"source": "timm's benchmark tables", "models": "timm models", "n": 1,
                                              "median_ape": pytest.approx(0.1), "p80_ape": pytest.approx(0.1),
                                              "median_ratio": 1.1, "batches": [1024], "input_px": [160, 160],
                                              "families": ["other"]}]
    pooled = doc["small_input_bands"]
    assert set(pooled) == {"torch/fp32/large", "torch/fp32/batch1"}  # the A100's band is not a 32-px one
    by_source = {p["source"]: p for p in pooled["torch/fp32/large"]}
    assert by_source["ryujaehun/pytorch-gpu-benchmark"]["median_ratio_by_device"] == {"2080ti": 1.5}
    assert by_source["HELP"]["median_ratio_by_device"] == {"2080ti": 1.0, "v100": 1.2}
    assert by_source["NVIDIA DeepLearningExamples"]["median_ratio_by_device"] == {"v100": 3.0}
    assert by_source["ryujaehun/pytorch-gpu-benchmark"]["median_ape"] == 0.5


def test_the_ofa_section_predicts_what_profile_gives() -> None:
    """``check_ofa`` traces each subnet once and predicts every column by profile's own steps: its
    figure for a subnet is ``kd_compile.profile``'s, and the table is well formed."""
    import json

    import kd_compile

    rows = ec.read_rows(ec.DATA_OFA)
    assert len(rows) == 500 and len({r["arch_index"] for r in rows}) == 500
    cols = [c for c in rows[0] if c.endswith("_ms")]
    assert {c.rsplit("_b", 1)[0] for c in cols} == {"2080ti", "titan-rtx", "titan-xp", "v100"}
    assert all(float(r[c]) > 0 for r in rows for c in cols)
    res = ec.check_ofa(rows[:1])
    assert len(res) == len(cols)
    got = next(r for r in res if r["device"] == "v100" and r["batch"] == 32)
    p = kd_compile.profile(rows[0]["spec"], target="v100", runtime="torch", precision="fp32", batch=32,
                           method="predict")
    assert got["predicted_ms"] == pytest.approx(p["latency_ms"], rel=1e-3)
    assert got["measured_ms"] == pytest.approx(float(rows[0]["v100_b32_ms"]))
    # the results keep the section by column, and give its rows back as they were
    two = ec.check_ofa(rows[:2])
    stored = json.loads(json.dumps(ec.ofa_columns(two)))
    assert len(stored["columns"]) == len(cols) and stored["models"] == [rows[0]["arch_index"], rows[1]["arch_index"]]
    assert ec.ofa_rows(stored) == two


def test_the_ofa_section_checks_the_subnets_no_fit_reads() -> None:
    """The fits read 200 of the table's subnets (three GPUs' columns); the check predicts the other 300,
    and the committed results hold those, on all four GPUs."""
    import json

    from kd_compile.calibrate.tables import ofa_fit_specs

    rows = ec.read_rows(ec.DATA_OFA)
    test = ec.ofa_test_rows(rows)
    fitted = set(ofa_fit_specs(ec.DATA_OFA))
    assert len(fitted) == 200 and len(test) == 300 and not fitted & {r["spec"] for r in test}
    committed = json.loads(ec.OUT.read_text())["help_ofa"]
    assert committed["specs"] == [r["spec"] for r in test]
    assert {k.split("/")[0] for k in committed["columns"]} == {"2080ti", "titan-rtx", "titan-xp", "v100"}


def test_the_shipped_out_of_sample_summary_is_that_of_the_committed_results() -> None:
    """``kd_compile/targets/calibration/_out_of_sample.json`` is written from the same rows as
    ``benchmarks/results/external_check.json``, by the same run; one without the other is stale."""
    import json

    committed = json.loads(ec.OUT.read_text())
    want = ec.out_of_sample({"dle": committed["rows"], "b12": committed["batch12"]["rows"],
                             "timm": committed["timm_unfitted"]["rows"], "ofa": ec.ofa_rows(committed["help_ofa"]),
                             "ppl": committed["openppl_t4"]["rows"]})
    assert json.loads(ec.PACKAGE_OUT.read_text()) == want == ec.package_summary(committed)


def test_the_openppl_table_holds_the_t4s_tensorrt_columns_of_buildable_specs() -> None:
    rows = ec.read_rows(ec.DATA_PPL)
    assert len(rows) == 70  # 35 torchvision models x (fp16, int8)
    for r in rows:
        assert (r["device"], r["runtime"], r["batch"]) == ("t4", "tensorrt", "1") and is_spec(r["spec"]), r
        assert r["precision"] in ("fp16", "int8") and float(r["ms_per_batch"]) > 0
        size = "@224" if "inception" in r["model"] else ""  # the table ran every model at 224 px
        assert r["spec"] == "torchvision:" + r["model"].removesuffix("_opt") + size
    assert len({(r["model"], r["precision"]) for r in rows}) == 70


def test_the_committed_openppl_rows_are_what_profile_gives_now(tmp_path, monkeypatch) -> None:
    """Three of the section's rows predicted again (one per kind: a plain CNN in fp16, a DenseNet in
    int8, Inception v3 at the table's 224 px): the committed figures are the shipped predictor's."""
    import json

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))
    committed = {(r["model"], r["precision"]): r for r in json.loads(ec.OUT.read_text())["openppl_t4"]["rows"]}
    rows = [r for r in ec.read_rows(ec.DATA_PPL)
            if (r["model"], r["precision"]) in {("resnet18", "fp16"), ("densenet121_opt", "int8"),
                                                ("inception_v3_opt", "fp16")}]
    assert len(rows) == 3
    for got in ec.check_ms(rows):
        want = committed[(got["model"], got["precision"])]
        assert got["predicted_ms"] == pytest.approx(want["predicted_ms"], rel=1e-3), got
        assert (got["band_median"], got["inside_p80"]) == (want["band_median"], want["inside_p80"])
