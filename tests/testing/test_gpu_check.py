"""benchmarks/gpu_check.py, the one script a session with a lent GPU runs, checked here on the CPU
with --quick: every row it writes is a measurement (or a recorded error), never a placeholder."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_support import load_benchmark


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    return load_benchmark("gpu_check.py", "gpu_check_bench")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the --quick CPU check; on a GPU run the script itself")
def test_quick_run_measures_every_row_on_the_cpu(gc: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gc.main(["--quick", "--results", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["environment"]["gpu"] is None and "cpu" in doc["environment"]["onnxruntime_providers"]
    assert doc["predicted_target"] is None  # no GPU here, so no profile to predict for
    assert {r["model"] for r in doc["latency"]} == set(gc.QUICK_MODELS)
    for row in doc["latency"]:
        for part, runtime in (("eager", "torch"), ("deploy", "onnxruntime")):
            m = row[part]
            assert "error" not in m, m
            assert m["method"] == "measured" and m["runtime"] == runtime and m["latency_ms"] > 0
        assert "predicted" not in row and "predicted_deploy" not in row
    rows = doc["training"]
    assert rows and all(r["device"] == "cpu" for r in rows)
    want = {(m, v) for m in ("trade", "resnet10t") for v in ("fp32", "bf16+cl")}
    assert {(r["model"], r["variant"]) for r in rows} == want
    for r in rows:
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["images_per_epoch"] == 128


def test_no_gpu_profile_matches_without_a_gpu(gc: ModuleType) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gc.matching_target() is None
